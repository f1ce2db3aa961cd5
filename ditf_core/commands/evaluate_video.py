"""``eval davis ROOT`` and ``eval tapvid FILE`` (model options as the other benchmarks: ``--model PATH`` or
``--demo``; extraction defaults: the family's video settings).

* davis: DAVIS-2017 label propagation (:mod:`ditf_core.eval.davis`); prints the J&F table and writes into the
  ``--output`` folder ``results.json``, ``<sequence>.json`` per sequence and, with ``--save-masks``, the predicted
  masks ``<sequence>/<frame>.png``. Finished sequences are kept under ``--cache`` (keyed by the model and every
  setting), so an interrupted run resumes where it stopped.
* tapvid: TAP-Vid-DAVIS point tracking (:mod:`ditf_core.eval.tapvid`); ``tapvid_davis.pkl`` is read with an
  allow-listed unpickler, or give its ``.npz`` conversion (``--save-npz`` writes one and exits). Writes
  ``results.json`` into ``--output``.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..cli_args import add_model_arguments, model_banner
from ..cli_checks import check_folder_option, check_output_file
from ..errors import DiTFInputError
from ..outputs import OutputFolder, write_json
from ..wording import plural
from .video_options import (
    add_propagation_arguments,
    add_track_arguments,
    add_video_extract_arguments,
    plan_video,
    propagation_settings,
    track_settings,
)


def add_video_benchmarks(benchmarks) -> None:
    """Add ``davis`` and ``tapvid`` to the ``eval`` command's benchmarks."""
    davis = benchmarks.add_parser("davis", help="DAVIS-2017 label propagation: J&F",
                                  description="DAVIS-2017 semi-supervised label propagation with DiTF features: J&F "
                                              "(see ditf_core.eval.davis)")
    davis.add_argument("root", type=Path, help="DAVIS folder (ImageSets/, JPEGImages/480p, Annotations/480p)")
    davis.add_argument("--split", default="val", help="ImageSets/2017/<split>.txt (default val)")
    davis.add_argument("--sequence", action="append", help="evaluate only this sequence (repeatable)")
    davis.add_argument("--save-masks", action="store_true", help="also write the predicted masks")
    _add_common(davis, "ditf_davis")
    davis.add_argument("--cache", type=Path, default=Path(".ditf_cache/eval"),
                       help="finished sequences are kept here, so a rerun resumes (default .ditf_cache/eval)")
    davis.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    add_propagation_arguments(davis)
    davis.set_defaults(run=run_davis, dataset="davis")

    tapvid = benchmarks.add_parser("tapvid", help="TAP-Vid-DAVIS point tracking: AJ, <delta_avg, OA",
                                   description="TAP-Vid-DAVIS point tracking with DiTF features (see "
                                               "ditf_core.eval.tapvid)")
    tapvid.add_argument("file", type=Path, help="tapvid_davis.pkl (read with an allow-listed unpickler) or .npz")
    tapvid.add_argument("--query-mode", choices=["first", "strided"], default="first", help="default first")
    tapvid.add_argument("--video", action="append", help="evaluate only this video (repeatable)")
    tapvid.add_argument("--save-npz", type=Path, help="convert FILE to this .npz (no pickle inside) and exit")
    _add_common(tapvid, "ditf_tapvid")
    add_track_arguments(tapvid)
    tapvid.set_defaults(run=run_tapvid, dataset="tapvid")


def run_davis(args, progress) -> int:
    from ..dataset import single_process_only
    from ..eval import davis

    single_process_only("eval davis")
    if not args.no_cache:
        check_folder_option(args.cache, "--cache", "or --no-cache")
    sequences = _chosen(davis.read_davis(args.root, args.split), args.sequence, "--sequence",
                        f"{args.root}/ImageSets/2017/{args.split}.txt", lambda sequence: sequence.name)
    sizes = [davis.first_annotation_size(sequence) for sequence in sequences]
    settings = propagation_settings(args)
    plan = plan_video(args, sizes)
    with OutputFolder(args.output, "eval davis", option="--output", note=progress.note) as folder:
        pipeline = plan.load()
        print(model_banner(pipeline), file=sys.stderr)
        record = {**plan.record(pipeline), "propagation": asdict(settings), "root": str(args.root.resolve()),
                  "split": args.split}
        work = folder.path if args.no_cache else args.cache / f"davis-{_digest(record)}"
        started = time.perf_counter()
        result = davis.evaluate_davis(sequences, plan.source(pipeline), settings=settings, output=work,
                                      save_masks=args.save_masks, micro_batch=args.micro_batch,
                                      progress=None if args.quiet else _per_clip(progress))
        if work != folder.path:  # the cache holds every run with these settings: copy this run's part
            for sequence in sequences:
                shutil.copy2(work / f"{sequence.name}.json", folder.path / f"{sequence.name}.json")
                if args.save_masks:
                    shutil.copytree(work / sequence.name, folder.path / sequence.name)
        write_json(folder.path / "results.json", {"benchmark": "davis", "settings": record,
                                                  "seconds": time.perf_counter() - started, **result}, default=str)
    print(davis.format_table(result))
    print(f"{plural(len(sequences), 'sequence')}: wrote {args.output / 'results.json'}", file=sys.stderr)
    return 0


def run_tapvid(args, progress) -> int:
    from ..dataset import single_process_only
    from ..eval import tapvid

    single_process_only("eval tapvid")
    if args.save_npz is not None:
        check_output_file(args.save_npz, "--save-npz", "tapvid_davis.npz")
        if args.save_npz.suffix != ".npz":
            raise DiTFInputError(f"--save-npz {args.save_npz}: give a file name ending in .npz")
    data = tapvid.load_tapvid(args.file)
    if args.save_npz is not None:
        print(f"wrote {tapvid.save_npz(data, args.save_npz)}")
        return 0
    names = _chosen(list(data), args.video, "--video", str(args.file), lambda name: name)
    data = {name: data[name] for name in names}
    settings = track_settings(args)
    plan = plan_video(args, [(entry["video"].shape[2], entry["video"].shape[1]) for entry in data.values()])
    with OutputFolder(args.output, "eval tapvid", option="--output", note=progress.note) as folder:
        pipeline = plan.load()
        print(model_banner(pipeline), file=sys.stderr)
        started = time.perf_counter()
        result = tapvid.evaluate_tapvid(data, plan.source(pipeline), mode=args.query_mode, settings=settings,
                                        progress=None if args.quiet else _per_clip(progress))
        record = {**plan.record(pipeline), "tracking": asdict(settings)}
        write_json(folder.path / "results.json", {"benchmark": "tapvid", "settings": record,
                                                  "seconds": time.perf_counter() - started, **result}, default=str)
    print(tapvid.format_table(result))
    print(f"{plural(len(data), 'video')}: wrote {args.output / 'results.json'}", file=sys.stderr)
    return 0


def _add_common(parser, output: str) -> None:
    parser.add_argument("--output", type=Path, default=Path(output), help=f"results folder (default {output})")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_model_arguments(parser)
    add_video_extract_arguments(parser)


def _chosen(items: list, wanted: list[str] | None, option: str, where: str, name_of) -> list:
    """The items ``option`` names (all without it); a name that is not there is an error."""
    if not wanted:
        return items
    unknown = sorted(set(wanted) - {name_of(item) for item in items})
    if unknown:
        raise DiTFInputError(f"{option} {', '.join(unknown)}: not in {where}")
    return [item for item in items if name_of(item) in set(wanted)]


def _digest(record: dict) -> str:
    from ..eval.harness import settings_digest

    return settings_digest(record)[:16]


def _per_clip(progress):
    """A ``progress(clip name, frames done, frames)`` callback: one progress line per clip."""
    return lambda name, done, total: progress.bar(name, "frame")(done, total)
