"""The command line's shared options: argument groups, reading option text, progress lines and the model banner.

Command modules add these groups to their parser (see :mod:`ditf_core.cli`); the checks that run before a model
is loaded live in :mod:`ditf_core.cli_checks`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DiTFInputError
from .pipeline import MODES

DEFAULT_LAYER = -1


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one ``error:`` line (and where to find help) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def add_output_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", type=Path, default=Path(default),
                        help=f"output folder, created if needed (default {default}); see the README for its files")


def add_model_arguments(parser: argparse.ArgumentParser, *, load_blocks: bool = True) -> None:
    """The model options; ``load_blocks`` adds --load-blocks, for commands that capture up to a few layers (early
    exit) and pass them to ``load_planned`` (a command that runs every block leaves it out)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, help="diffusers folder or .safetensors transformer")
    group.add_argument("--demo", action="store_true", help="use the tiny RANDOM-weight demo DiT (a smoke test)")
    group.add_argument("--vae", type=Path, help="VAE folder or .safetensors, when --model holds only a transformer")
    group.add_argument("--config", type=Path, help="diffusers config folder for a single-file transformer")
    group.add_argument("--no-text-encoders", action="store_true", help="skip text encoders: zero conditioning")
    group.add_argument("--text-embeds", type=Path,
                       help="precomputed conditioning: .safetensors with text_embeds, pooled")
    group.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="transformer dtype (default: auto)")
    if load_blocks:
        group.add_argument("--load-blocks", choices=["auto", "all"], default="auto",
                           help="auto (default): read only the transformer blocks up to the deepest layer captured "
                                "(a sweep: all); all: every block")


def add_sampling_arguments(group) -> None:
    """What every capture needs: timestep, ensemble, resolution, seed, conditioning, memory bound."""
    group.add_argument("--t", type=float, help="flow-matching time in (0, 1); Flux default 0.26")
    group.add_argument("--ensemble", type=int, help="noise draws averaged (default 8)")
    group.add_argument("--resolution", type=int, help="long side in pixels fed to the model, 16-4096 (default 640)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument("--prompt", default="", help="text prompt (default empty); needs the model's text encoders")
    group.add_argument("--guidance", type=float, default=3.5, help="Flux-dev guidance value (default 3.5)")
    group.add_argument("--micro-batch", type=int,
                       help="rows per transformer pass, to bound memory (default: all; on CUDA what fits)")


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("extraction (defaults: the model family's)")
    group.add_argument("--layer", type=int, default=DEFAULT_LAYER,
                       help="global block index k (Flux: 0-18 double, 19-56 single); -1: the family default")
    add_sampling_arguments(group)
    group.add_argument("--discard", default="auto", help="'auto', 'none' or channels like '154,1446'")
    group.add_argument("--mode", default="ditf", choices=MODES, help="recipe variant")


def sampling_kwargs(args) -> dict:
    """The pipeline settings the sampling options give (None: the family default)."""
    return dict(t=args.t, ensemble=args.ensemble, resolution=args.resolution, seed=args.seed, prompt=args.prompt,
                guidance=args.guidance)


def extract_kwargs(args) -> dict:
    """``DiTFPipeline.extract`` keyword arguments from the extraction options (layer -1 -> the family default)."""
    layer = None if args.layer == DEFAULT_LAYER else args.layer
    return dict(layer=layer, mode=args.mode, discard=args.discard, micro_batch=args.micro_batch,
                **sampling_kwargs(args))


def parse_index_list(text: str, option: str) -> list[int]:
    """"20, 28" -> [20, 28], or an error naming the option."""
    try:
        numbers = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise DiTFInputError(f"{option} takes comma-separated block numbers like '20,28', got {text!r}") from None
    if not numbers:
        raise DiTFInputError(f"{option} is empty; give block numbers like '20,28', or leave it out")
    return numbers


class Progress:
    """Progress lines on stderr (rewritten in place) that notes and errors never run into."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.open = False

    def bar(self, label: str, unit: str = "transformer pass"):
        """A ``progress(done, total)`` callback that counts the ``unit`` of ``label`` on one line."""

        def report(done: int, total: int) -> None:
            self.open = done != total
            print(f"\r  {label}: {unit} {done}/{total}", end="" if self.open else "\n", file=self.stream, flush=True)

        return report

    def note(self, text: str) -> None:
        self.end_line()
        print(f"note: {text}", file=self.stream, flush=True)

    def end_line(self) -> None:
        if self.open:
            print(file=self.stream, flush=True)
            self.open = False


def model_banner(pipeline) -> str:
    info = pipeline.describe()
    warning = "  [RANDOM WEIGHTS: demo model, features are not meaningful]" if "demo" in pipeline.name else ""
    held = pipeline.loaded_depth
    loaded = f" [blocks 0..{held - 1} loaded]" if held < info["depth"] else ""
    return (
        f"model: {pipeline.name} ({info['family']}, {info['depth']} blocks{loaded}, hidden {info['hidden_size']}, "
        f"{pipeline.device}/{str(pipeline.dtype).removeprefix('torch.')}, text: {info['text']}){warning}"
    )
