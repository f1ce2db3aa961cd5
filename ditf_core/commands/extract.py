"""``python -m ditf_core extract IMAGES... (--model PATH | --demo) [--out ditf_features]``: DiTF features of each
image (``<name>.safetensors``) and a PCA preview of each (``<name>_pca.png``, one joint PCA so that equal colours
mean similar features). ``--dino PATH`` fuses them with a local DINOv2 first (see
:mod:`ditf_core.commands.dino_options`)."""

from __future__ import annotations

import time
from pathlib import Path

from ..cli_args import add_extract_arguments, add_model_arguments, add_output_argument, model_banner
from ..cli_checks import (
    captured_layers,
    check_distinct_stems,
    check_extract_options,
    check_images,
    load_planned,
    plan_model,
)
from ..outputs import OutputFolder, save_image
from ..wording import plural
from .dino_options import add_dino_arguments, check_dino_options, fuse_images, load_dino

NAME = "extract"


def add_command(commands) -> None:
    parser = commands.add_parser(NAME, help="images -> DiTF features (.safetensors) + PCA previews (.png)",
                                 description=__doc__)
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    add_output_argument(parser, "ditf_features")
    add_model_arguments(parser)
    add_extract_arguments(parser)
    add_dino_arguments(parser)
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    from ..visualize import pca_rgb, upsample_rgb

    check_distinct_stems(args.images, "{}.safetensors", "rename one, or extract them into different --out folders")
    images = check_images(args.images)
    plan = plan_model(args)
    options = check_extract_options(args, plan, [image.size for image in images])
    check_dino_options(args, plan, [image.size for image in images])
    with OutputFolder(args.out, NAME, note=progress.note) as folder:
        pipeline = load_planned(plan, captured_layers(options, plan))
        dino = load_dino(args, pipeline)
        print(model_banner(pipeline))
        results = []
        for path, image in zip(args.images, images):
            started = time.perf_counter()
            features = pipeline.extract(image, progress=progress.bar(path.name), **options)
            elapsed = time.perf_counter() - started
            results.append(features)
            print(f"{path.name}: {list(features.features.shape)} in {elapsed:.2f}s, "
                  f"discarded {list(features.discarded)}")
        if dino is not None:  # after all extractions: --dino-pca fits one PCA over every image
            results = fuse_images(dino, args, results, images)
            print(f"fused with {dino.describe()['name']}: {list(results[0].features.shape)} per image")
        for path, features in zip(args.images, results):
            features.save(folder.path / f"{path.stem}.safetensors")
        # One joint PCA so that colours are comparable across the images.
        for path, image, rgb in zip(args.images, images, pca_rgb([f.features[0] for f in results])):
            save_image(upsample_rgb(rgb, image.size), folder.path / f"{path.stem}_pca.png")
    count = len(results)
    print(f"wrote {plural(count, 'feature file')} and {plural(count, 'PCA preview')} to {args.out}")
    return 0
