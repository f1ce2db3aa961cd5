"""``python -m ditf_core.eval davis ROOT`` and ``python -m ditf_core.eval tapvid FILE`` (model options as the other
benchmarks: ``--model PATH`` or ``--demo``).

* davis: DAVIS-2017 label propagation (see :mod:`ditf_core.eval.davis`); prints the J&F table, writes
  ``<output>/<sequence>.json`` per sequence (a rerun skips finished ones), ``<output>/results.json`` and with
  ``--save-masks`` the predicted masks.
* tapvid: TAP-Vid-DAVIS point tracking (see :mod:`ditf_core.eval.tapvid`); ``tapvid_davis.pkl`` is read with an
  allow-listed unpickler, or give its ``.npz`` conversion (``--save-npz`` writes one and exits).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..cli import add_model_arguments, check_model_choice, load_from_args, model_banner
from ..errors import DiTFInputError
from ..video.cli import (
    add_propagation_arguments,
    add_track_arguments,
    add_video_extract_arguments,
    extraction_settings,
    propagation_settings,
    video_source,
)
from ..video.settings import TrackSettings
from . import davis, tapvid

BENCHMARKS = ("davis", "tapvid")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (DiTFInputError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ditf_core.eval", description="DiTF on video benchmarks")
    commands = parser.add_subparsers(required=True, metavar="BENCHMARK")
    propagation = commands.add_parser("davis", help="DAVIS-2017 label propagation: J&F")
    propagation.add_argument("root", type=Path, help="DAVIS folder (ImageSets/, JPEGImages/480p, Annotations/480p)")
    propagation.add_argument("--split", default="val", help="ImageSets/2017/<split>.txt (default val)")
    propagation.add_argument("--sequence", action="append", help="evaluate only this sequence (repeatable)")
    propagation.add_argument("--save-masks", action="store_true", help="also write the predicted masks")
    add_common(propagation, "ditf_davis")
    add_propagation_arguments(propagation)
    propagation.set_defaults(run=run_davis)

    tracking = commands.add_parser("tapvid", help="TAP-Vid-DAVIS point tracking: AJ, <delta_avg, OA")
    tracking.add_argument("file", type=Path, help="tapvid_davis.pkl (read with an allow-listed unpickler) or .npz")
    tracking.add_argument("--query-mode", choices=["first", "strided"], default="first", help="default first")
    tracking.add_argument("--video", action="append", help="evaluate only this video (repeatable)")
    tracking.add_argument("--save-npz", type=Path, help="convert FILE to this .npz (no pickle inside) and exit")
    add_common(tracking, "ditf_tapvid")
    add_track_arguments(tracking)
    tracking.set_defaults(run=run_tapvid)
    return parser


def add_common(parser, output: str) -> None:
    parser.add_argument("--output", type=Path, default=Path(output), help=f"results folder (default {output})")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_model_arguments(parser)
    add_video_extract_arguments(parser)


def run_davis(args) -> int:
    check_model_choice(args)
    sequences = davis.read_davis(args.root, args.split)
    if args.sequence:
        sequences = [s for s in sequences if s.name in set(args.sequence)]
        if not sequences:
            raise DiTFInputError(f"none of {args.sequence} is listed in {args.split}.txt")
    pipeline = load_from_args(args)
    print(model_banner(pipeline), file=sys.stderr)
    started = time.perf_counter()
    result = davis.evaluate_davis(sequences, video_source(args, pipeline), settings=propagation_settings(args),
                                  output=args.output, save_masks=args.save_masks, micro_batch=args.micro_batch,
                                  progress=None if args.quiet else _progress)
    print(davis.format_table(result))
    _save(args, pipeline, result, started, "davis")
    return 0


def run_tapvid(args) -> int:
    data = tapvid.load_tapvid(args.file)
    if args.save_npz is not None:
        print(f"wrote {tapvid.save_npz(data, args.save_npz)}")
        return 0
    check_model_choice(args)
    if args.video:
        data = {name: entry for name, entry in data.items() if name in set(args.video)}
        if not data:
            raise DiTFInputError(f"none of {args.video} is in {args.file}")
    pipeline = load_from_args(args)
    print(model_banner(pipeline), file=sys.stderr)
    started = time.perf_counter()
    settings = TrackSettings(threshold=args.threshold, search_radius=args.search_radius)
    result = tapvid.evaluate_tapvid(data, video_source(args, pipeline), mode=args.query_mode, settings=settings,
                                    progress=None if args.quiet else _progress)
    print(tapvid.format_table(result))
    _save(args, pipeline, result, started, "tapvid")
    return 0


def _save(args, pipeline, result: dict, started: float, benchmark: str) -> None:
    args.output.mkdir(parents=True, exist_ok=True)
    settings = {"model": pipeline.describe(), "extract": extraction_settings(args, pipeline), "discard": args.discard}
    path = args.output / "results.json"
    path.write_text(json.dumps({"benchmark": benchmark, "settings": settings, "seconds": time.perf_counter() - started,
                                **result}, indent=2, default=str) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def _progress(name: str, done: int, total: int) -> None:
    print(f"\r  {name}: frame {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
