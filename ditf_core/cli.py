"""Command line: ``python -m ditf_core {extract,inspect,demo,extract-dataset} ...``.

``demo`` is the quick start: without ``--model`` it runs on the built-in tiny demo DiT (RANDOM weights, two
planted massive channels), so it works anywhere with no download.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import DiTFInputError
from .pipeline import MODES


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (DiTFInputError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ditf_core", description="DiTF: features from Diffusion Transformers")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    extract = commands.add_parser("extract", help="images -> DiTF features (.safetensors) + PCA previews (.png)")
    extract.add_argument("images", nargs="+", type=Path, help="image files")
    extract.add_argument("--out", type=Path, default=Path("ditf_features"), help="output folder")
    add_model_arguments(extract)
    add_extract_arguments(extract)
    extract.set_defaults(run=run_extract)

    inspect = commands.add_parser("inspect", help="massive-activation inspector: report.json + PNG pictures")
    inspect.add_argument("images", nargs="*", type=Path, help="image files (default: the bundled sample pair)")
    inspect.add_argument("--out", type=Path, default=Path("ditf_inspect"), help="output folder")
    add_model_arguments(inspect)
    add_inspect_arguments(inspect)
    inspect.set_defaults(run=run_inspect)

    demo = commands.add_parser("demo", help="the whole pipeline on the bundled sample images (default: demo DiT)")
    demo.add_argument("--out", type=Path, default=Path("ditf_demo"), help="output folder")
    add_model_arguments(demo)
    add_extract_arguments(demo)
    demo.set_defaults(run=run_demo)

    from .dataset.command import add_command as add_extract_dataset  # imports this module's shared options

    add_extract_dataset(commands)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, help="diffusers folder or .safetensors transformer")
    group.add_argument("--demo", action="store_true", help="use the tiny RANDOM-weight demo DiT (a smoke test)")
    group.add_argument("--vae", type=Path, help="VAE folder or .safetensors, when --model holds only a transformer")
    group.add_argument("--config", type=Path, help="diffusers config folder for a single-file transformer")
    group.add_argument("--no-text-encoders", action="store_true", help="skip text encoders: zero conditioning")
    group.add_argument("--text-embeds", type=Path, help="precomputed conditioning: .safetensors with text_embeds, pooled")
    group.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="transformer dtype (default: auto)")
    group.add_argument("--load-blocks", choices=["auto", "all"], default="auto",
                       help="auto: only the blocks up to the deepest layer asked for (sweeps: all); all: every block")


def add_sampling_arguments(group) -> None:
    """What every capture needs: timestep, ensemble, resolution, seed, conditioning, memory bound."""
    group.add_argument("--t", type=float, help="flow-matching time in (0, 1); Flux default 0.26")
    group.add_argument("--ensemble", type=int, help="noise draws averaged (default 8)")
    group.add_argument("--resolution", type=int, help="long side in pixels fed to the model (default 640)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument("--prompt", default="", help="text prompt (default empty)")
    group.add_argument("--guidance", type=float, default=3.5, help="Flux-dev guidance value (default 3.5)")
    group.add_argument("--micro-batch", type=int, help="rows per transformer pass (default: all; on CUDA what fits)")


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("extraction (defaults: the model family's)")
    group.add_argument("--layer", type=int, help="global block index k (Flux: 0-18 double, 19-56 single)")
    add_sampling_arguments(group)
    group.add_argument("--discard", default="auto", help="'auto', 'none' or channels like '154,1446'")
    group.add_argument("--mode", default="ditf", choices=list(MODES), help="recipe variant")


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inspection (defaults: the model family's)")
    group.add_argument("--layers", help="blocks to analyse in detail, like '28' or '20,28' (default: family layer k)")
    add_sampling_arguments(group)
    group.add_argument("--ratio", type=float, default=100.0, help="massive: channel median >= RATIO x map median")
    group.add_argument("--weak-ratio", type=float, default=10.0, help="weakly massive after AdaLN (default 10)")
    group.add_argument("--gate-k", type=int, help="top-|gate| channels compared (default: number of massive ones)")
    group.add_argument("--no-sweep", action="store_true", help="capture only --layers, no full-depth layer sweep")
    group.add_argument("--cache-dir", type=Path, help="also keep the sweep in this folder for later runs")


def load_from_args(args, *, demo_by_default: bool = False, every_block: bool = False):
    """The pipeline the model arguments name: --model PATH, or --demo (the default only for ``demo``).

    every_block: the command runs every block (a sweep, the demo), so --load-blocks auto loads them all."""
    import torch

    from .conditioning import FixedPromptEncoder
    from .pipeline import DiTFPipeline

    check_model_choice(args, demo_by_default=demo_by_default)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.model is None:
        pipeline = DiTFPipeline.demo(device=args.device, dtype=dtype)
    else:
        pipeline = DiTFPipeline.from_pretrained(
            args.model,
            vae=args.vae,
            config=args.config,
            text_encoders=not args.no_text_encoders and args.text_embeds is None,
            device=args.device,
            dtype=dtype,
            **blocks_to_load(args, every_block),
        )
    if args.text_embeds is not None:
        pipeline.prompt_encoder = FixedPromptEncoder.from_file(args.text_embeds)
    return pipeline


def blocks_to_load(args, every_block: bool) -> dict:
    """load_pipeline's load_blocks / layers: with --load-blocks auto, blocks 0..k of the deepest layer asked for
    (--layer, --layers; none: the family default); all blocks for --load-blocks all and every-block commands."""
    if every_block or args.load_blocks == "all":
        return {"load_blocks": "all"}
    if getattr(args, "layer", None) is not None:
        return {"load_blocks": "auto", "layers": [args.layer]}
    layers = parse_index_list(args.layers, "--layers") if getattr(args, "layers", None) else None
    return {"load_blocks": "auto", "layers": layers}


def check_model_choice(args, *, demo_by_default: bool = False) -> None:
    """Exactly one of --model / --demo (none means --demo only where ``demo_by_default``)."""
    if args.model is not None and args.demo:
        raise DiTFInputError("give either --model PATH or --demo, not both")
    if args.model is None and not (args.demo or demo_by_default):
        raise DiTFInputError("no model: give --model PATH (a diffusers folder or .safetensors transformer), or --demo "
                             "for the tiny random-weight demo DiT")


def sampling_kwargs(args) -> dict:
    return dict(t=args.t, ensemble=args.ensemble, resolution=args.resolution, seed=args.seed, prompt=args.prompt,
                guidance=args.guidance)


def extract_kwargs(args) -> dict:
    return dict(layer=args.layer, mode=args.mode, discard=args.discard, micro_batch=args.micro_batch,
                **sampling_kwargs(args))


def run_extract(args) -> int:
    from PIL import Image

    from .visualize import pca_rgb, upsample_rgb

    pipeline = load_from_args(args)
    print(model_banner(pipeline))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.images:
        if not path.is_file():
            raise DiTFInputError(f"no image file at {path}")
        image = Image.open(path)
        started = time.perf_counter()
        features = pipeline.extract(image, progress=progress_printer(path.name), **extract_kwargs(args))
        elapsed = time.perf_counter() - started
        saved = features.save(args.out / f"{path.stem}.safetensors")
        results.append((path, image, features))
        print(f"{path.name}: {list(features.features.shape)} in {elapsed:.2f}s, discarded {list(features.discarded)} -> {saved}")
    # One joint PCA so that colours are comparable across the images.
    for (path, image, _), rgb in zip(results, pca_rgb([f.features[0] for _, _, f in results])):
        upsample_rgb(rgb, image.size).save(args.out / f"{path.stem}_pca.png")
    print(f"wrote {len(results)} feature files and PCA previews to {args.out}")
    return 0


def run_inspect(args) -> int:
    from PIL import Image

    from .inspect import SweepCache, inspect_pipeline
    from .samples import sample_pair

    pipeline = load_from_args(args, every_block=not args.no_sweep)
    print(model_banner(pipeline))
    if args.images:
        missing = [str(path) for path in args.images if not path.is_file()]
        if missing:
            raise DiTFInputError(f"no image file at {', '.join(missing)}")
        images = [Image.open(path).convert("RGB") for path in args.images]
    else:
        images = list(sample_pair()[:2])
    if len({image.size for image in images}) > 1:  # one batch, one size: the statistics do not need the aspect
        print(f"note: resizing all images to {images[0].size[0]}x{images[0].size[1]} (the first image's size)")
        images = [image.resize(images[0].size, Image.Resampling.BICUBIC) for image in images]
    layers = parse_index_list(args.layers, "--layers") if args.layers else None
    inspection = inspect_pipeline(
        pipeline,
        images,
        layers=layers,
        sweep=not args.no_sweep,
        cache=SweepCache(directory=args.cache_dir) if args.cache_dir else None,
        ratio=args.ratio,
        weak_ratio=args.weak_ratio,
        gate_k=args.gate_k,
        micro_batch=args.micro_batch,
        progress=progress_printer("inspect"),
        layer=layers[0] if layers else None,
        **sampling_kwargs(args),
    )
    written = inspection.save(args.out)
    print(inspection.summary())
    print(f"wrote {', '.join(path.name for path in written)} to {args.out}")
    return 0


def run_demo(args) -> int:
    from .demo import run_demo_pipeline

    pipeline = load_from_args(args, demo_by_default=True, every_block=True)
    print(model_banner(pipeline))
    summary = run_demo_pipeline(pipeline, args.out, extract_kwargs(args), progress=progress_printer)
    print(summary)
    return 0


def model_banner(pipeline) -> str:
    info = pipeline.describe()
    warning = "  [RANDOM WEIGHTS: demo model, features are not meaningful]" if "demo" in pipeline.name else ""
    held = getattr(pipeline, "loaded_depth", info["depth"])
    loaded = f" [blocks 0..{held - 1} loaded]" if held < info["depth"] else ""
    return (
        f"model: {pipeline.name} ({info['family']}, {info['depth']} blocks{loaded}, hidden {info['hidden_size']}, "
        f"{pipeline.device}/{str(pipeline.dtype).removeprefix('torch.')}, text: {info['text']}){warning}"
    )


def progress_printer(label: str):
    def report(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r  {label}: transformer pass {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def parse_index_list(text: str, name: str) -> list[int]:
    """"20, 28" -> [20, 28], or an error naming the option."""
    try:
        return [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise DiTFInputError(f"{name} takes comma-separated block numbers like '20,28', got {text!r}") from None
