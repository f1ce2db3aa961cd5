"""``python -m ditf_core cosegment FEATURES.safetensors... [--clusters K] [--out ditf_cosegment]``: co-segment
feature files written by ``extract`` (with or without ``--dino``), jointly: cluster j is the same kind of part in
every image.

Writes, per image ``<name>`` (the feature file's name; ``<name>_<i>`` for image i of a batch file):
``<name>_clusters.png`` (the clusters in colour, over the image when ``--images`` gives it) and
``<name>_cluster<j>.png`` (white inside cluster j, at the image size); and ``cosegment.json`` (clusters, sizes,
files). Needs no model.
"""

from __future__ import annotations

from pathlib import Path

from ..cli_args import add_output_argument
from ..cli_checks import check_distinct_stems
from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..image_files import open_image
from ..images import pil_to_tensor, tensor_to_pil
from ..outputs import OutputFolder, save_image, write_json
from ..wording import first_line, plural

NAME = "cosegment"


def add_command(commands) -> None:
    from ..cosegment import MAX_CLUSTERS

    parser = commands.add_parser(NAME, help="co-segment feature files: K clusters over all images jointly",
                                 description=__doc__)
    parser.add_argument("features", nargs="+", type=Path, help="feature files (.safetensors) from `extract`")
    parser.add_argument("--clusters", "-k", type=int, default=4, help=f"K, 2-{MAX_CLUSTERS} (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-means++ start (default 0)")
    parser.add_argument("--iterations", type=int, default=100, help="most K-means steps (default 100)")
    parser.add_argument("--images", nargs="+", type=Path, help="the original images, one per feature file, drawn "
                        "under the previews")
    parser.add_argument("--foreground", nargs="+", type=Path, help="mask images (white = foreground), one per "
                        "feature file: only cells at least half inside are clustered")
    add_output_argument(parser, "ditf_cosegment")
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    from ..cosegment import cosegment

    features = [_load(path) for path in args.features]
    check_distinct_stems(args.features, "{}_clusters.png", "rename one")
    images = _read_matching(args.images, args.features, "--images")
    if images is not None:
        for path, maps, image in zip(args.images, features, images):
            _check_size(image, maps, path)
    masks = _read_matching(args.foreground, args.features, "--foreground")
    foreground = None if masks is None else [pil_to_tensor(mask)[:1] for mask in masks]  # grey: any channel
    if args.iterations < 1:
        raise DiTFInputError(f"--iterations must be at least 1, got {args.iterations}")
    if args.seed < 0:
        raise DiTFInputError(f"--seed must be at least 0, got {args.seed}")
    result = cosegment(features, args.clusters, foreground=foreground, seed=args.seed, iterations=args.iterations)
    with OutputFolder(args.out, NAME, note=progress.note) as folder:
        written, index = [], 0
        for number, (path, maps) in enumerate(zip(args.features, features)):
            for item in range(maps.batch):
                stem = path.stem if maps.batch == 1 else f"{path.stem}_{item}"
                pixels = pil_to_tensor(images[number]) if images is not None and maps.batch == 1 else None
                written.append(save_image(tensor_to_pil(result.preview(index, pixels)),
                                          folder.path / f"{stem}_clusters.png"))
                for cluster, mask in enumerate(result.masks(index)):
                    written.append(save_image(tensor_to_pil(mask.expand(3, -1, -1)).convert("L"),
                                              folder.path / f"{stem}_cluster{cluster}.png"))
                index += 1
        write_json(folder.path / "cosegment.json", {
            "clusters": result.clusters, "seed": args.seed, "sizes": result.sizes.tolist(),
            "iterations": result.iterations, "converged": result.converged,
            "features": [str(path) for path in args.features], "files": [path.name for path in written],
        })
    print(f"{plural(result.images, 'image')}, {result.clusters} clusters of {result.sizes.tolist()} cells "
          f"({plural(result.iterations, 'K-means step')}): wrote {plural(len(written) + 1, 'file')} to {args.out}")
    return 0


def _load(path: Path) -> DiTFeatures:
    if not path.is_file():
        raise DiTFInputError(f"no feature file at {path}; write one with `python -m ditf_core extract`")
    try:
        return DiTFeatures.load(path)
    except ValueError as error:
        raise DiTFInputError(str(error)) from None
    except Exception as error:  # safetensors raises its own SafetensorError for a damaged or truncated file
        raise DiTFInputError(f"{path} is not a readable feature file ({first_line(error)}); write it again with "
                             "`python -m ditf_core extract`") from None


def _read_matching(paths, features, option: str):
    """The images ``option`` names, one per feature file, each decoded (or None without the option)."""
    if paths is None:
        return None
    if len(paths) != len(features):
        raise DiTFInputError(f"{option} gives {plural(len(paths), 'file')} for "
                             f"{plural(len(features), 'feature file')}; give one for each, in the same order")
    try:
        return [open_image(path) for path in paths]
    except DiTFInputError as error:
        raise DiTFInputError(f"{option}: {error}") from None


def _check_size(image, features: DiTFeatures, path: Path) -> None:
    width, height = features.mapping.image_size
    if image.size != (width, height):
        raise DiTFInputError(
            f"--images: {path} is {image.size[0]}x{image.size[1]} but its features come from a {width}x{height} image; "
            "give the images the features were extracted from, in the same order"
        )
