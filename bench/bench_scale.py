"""Dataset-scale benchmarks, printed as ratios (run: python bench/bench_scale.py [PART ...], all four by default).

1. loading: peak memory and time of loading only blocks 0..k (load_blocks="auto") vs every block, on a full-width
   Flux slice written as a BFL-layout .safetensors file (like flux1-dev.safetensors); extrapolated to Flux.1-dev at
   k = 28 from parameter counts; plus a parity check of the truncated load against diffusers' own loader;
2. extractions: unique images vs the official per-pair re-extraction, counted on a synthetic SPair-layout dataset and
   computed for SPair-71k test (optionally counted from a real copy: --spair-root);
3. torchrun: wall time of extract-dataset on 2 ranks vs 1 (and vs a plain process) on this machine;
4. efficiency: achieved FLOP/s of an extraction (torch.utils.flop_counter) over the dense-GEMM FLOP/s of the same
   machine, on a full-width Flux slice at 640 px.
Each measurement runs in its own process where memory is measured; medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's ditf_core, and the tests' synthetic datasets

import torch  # noqa: E402

from timing import median_seconds  # noqa: E402

WIDTH, MLP, HEAD = 3072, 12288, 128
GB = 1e9


# --- 1. loading ------------------------------------------------------------------------------------------------------
def bfl_flux_shapes(double: int, single: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a full-width Flux.1-dev transformer in the BFL layout, with fewer blocks."""
    def linear(name, out, inp):
        return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}

    shapes = {**linear("img_in", WIDTH, 64), **linear("txt_in", WIDTH, 4096)}
    for name, inputs in (("time_in", 256), ("vector_in", 768), ("guidance_in", 256)):
        shapes |= linear(f"{name}.in_layer", WIDTH, inputs) | linear(f"{name}.out_layer", WIDTH, WIDTH)
    for i in range(double):
        for stream in ("img", "txt"):
            b = f"double_blocks.{i}.{stream}"
            shapes |= linear(f"{b}_mod.lin", 6 * WIDTH, WIDTH) | linear(f"{b}_attn.qkv", 3 * WIDTH, WIDTH)
            shapes |= linear(f"{b}_attn.proj", WIDTH, WIDTH) | linear(f"{b}_mlp.0", MLP, WIDTH)
            shapes |= linear(f"{b}_mlp.2", WIDTH, MLP)
            shapes |= {f"{b}_attn.norm.query_norm.scale": (HEAD,), f"{b}_attn.norm.key_norm.scale": (HEAD,)}
    for i in range(single):
        b = f"single_blocks.{i}"
        shapes |= linear(f"{b}.linear1", 3 * WIDTH + MLP, WIDTH) | linear(f"{b}.linear2", WIDTH, WIDTH + MLP)
        shapes |= linear(f"{b}.modulation.lin", 3 * WIDTH, WIDTH)
        shapes |= {f"{b}.norm.query_norm.scale": (HEAD,), f"{b}.norm.key_norm.scale": (HEAD,)}
    return shapes | linear("final_layer.linear", 64, WIDTH) | linear("final_layer.adaLN_modulation.1", 2 * WIDTH, WIDTH)


def write_slice(folder: Path, double: int, single: int) -> tuple[Path, Path]:
    """A random bf16 BFL-layout slice file and its diffusers config folder."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {f"model.diffusion_model.{name}": (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
               for name, shape in bfl_flux_shapes(double, single).items()}
    path = folder / "flux-slice.safetensors"
    save_file(tensors, str(path))
    config = json.loads((ROOT / "ditf_core" / "configs" / "flux-dev" / "config.json").read_text())
    (folder / "config").mkdir(exist_ok=True)
    config = {**config, "num_layers": double, "num_single_layers": single}
    (folder / "config" / "config.json").write_text(json.dumps(config))
    return path, folder / "config"


def load_child(mode: str, path: str, config: str, layer: int) -> None:
    """(in a fresh process) load once; print seconds and peak RSS above the post-import baseline (both from after the
    imports), parameters."""
    from diffusers import FluxTransformer2DModel  # noqa: F401  (imports are not loading: done before the clock)
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers  # noqa: F401

    from ditf_core.loading import load_transformer

    baseline = _reset_peak_rss()
    started = time.perf_counter()
    blocks = json.loads(Path(config, "config.json").read_text())
    last = blocks["num_layers"] + blocks["num_single_layers"] - 1
    options = {"auto": dict(load_blocks="auto", layers=[layer]),
               "auto-all": dict(load_blocks="auto", layers=[last]),  # every block, through the same reader as "auto"
               "all": dict(load_blocks="all")}[mode]
    model = load_transformer(Path(path), config=Path(config), dtype=torch.bfloat16, **options)
    # safetensors maps the file and pages tensors in on first use: touch every weight, so that both loaders are
    # measured holding the whole model in memory (as a forward pass or a copy to the GPU would)
    with torch.no_grad():
        touched = sum(float(p.sum()) for p in model.parameters())
    seconds = time.perf_counter() - started
    peak = _peak_rss()
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"seconds": seconds, "peak_gb": (peak - baseline) / GB, "params": params, "sum": touched}))


def parity_child(path: str, config: str, layer: int) -> None:
    """(in a fresh process) block-k input and modulation of the truncated load vs diffusers' from_single_file."""
    from ditf_core import capture_ensemble
    from ditf_core.loading import load_transformer

    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 16, 16, generator=generator)
    text, pooled = torch.randn(1, 16, 4096, generator=generator), torch.randn(1, 768, generator=generator)
    captures = []
    for options in (dict(load_blocks="all"), dict(load_blocks="auto", layers=[layer])):
        model = load_transformer(Path(path), config=Path(config), dtype=torch.bfloat16, **options)
        captures.append(capture_ensemble(model, latents, t=0.26, layers=range(layer + 1), text_embeds=text,
                                         pooled=pooled)
                        )
        del model
    equal = all(torch.equal(captures[0][k].hidden, captures[1][k].hidden)
                and torch.equal(captures[0][k].modulation.scale, captures[1][k].modulation.scale)
                for k in range(layer + 1))
    print(json.dumps({"equal": equal}))


def flux_dev_counts(layer: int = 28) -> dict:
    """Parameters of Flux.1-dev (from its config, on the meta device): total and through block ``layer``."""
    from diffusers import FluxTransformer2DModel

    config = FluxTransformer2DModel.load_config(str(ROOT / "ditf_core" / "configs" / "flux-dev"))
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    double, single = count(model.transformer_blocks[0]), count(model.single_transformer_blocks[0])
    blocks = len(model.transformer_blocks) * double + len(model.single_transformer_blocks) * single
    other = count(model) - blocks
    kept_single = layer + 1 - len(model.transformer_blocks)
    loaded = other + len(model.transformer_blocks) * double + kept_single * single
    return {"total": count(model), "loaded": loaded, "double": double, "single": single, "other": other}


def bench_loading(repeats: int) -> None:
    double, single, layer = 2, 4, 3  # k = 3: both double blocks and 2 of 4 single ones, like k = 28 of Flux.1-dev
    with tempfile.TemporaryDirectory() as folder:
        path, config = write_slice(Path(folder), double, single)
        print(f"loading: full-width Flux slice ({double} double + {single} single blocks, BFL layout, bf16, "
              f"{path.stat().st_size / GB:.2f} GB file), k = {layer}; peak RSS above the post-import baseline")
        runs: dict[str, list[dict]] = {"auto": [], "auto-all": [], "all": []}
        for _ in range(repeats):
            for mode in runs:
                runs[mode].append(_child(["--load-child", mode, str(path), str(config), str(layer)]))
        median = {mode: {key: statistics.median(r[key] for r in results) for key in ("seconds", "peak_gb")}
                  for mode, results in runs.items()}
        params = {mode: results[0]["params"] for mode, results in runs.items()}
        for mode, label in (("auto", f"auto (blocks 0..{layer})"), ("auto-all", "every block, same reader"),
                            ("all", "every block, diffusers from_single_file (load_blocks='all')")):
            print(f"  {label:<60} {median[mode]['seconds']:6.2f} s  peak {median[mode]['peak_gb']:5.2f} GB  "
                  f"params {params[mode] / 1e9:.3f} B")
        share = params["auto"] / params["auto-all"]
        for other, label in (("auto-all", "every block, same reader"), ("all", "load_blocks='all'")):
            memory = median["auto"]["peak_gb"] / median[other]["peak_gb"]
            seconds = median["auto"]["seconds"] / median[other]["seconds"]
            print(f"  truncated / {label}: memory {memory:.2f}, time {seconds:.2f}, parameters "
                  f"{params['auto'] / params[other]:.2f}")
        parity = _child(["--parity-child", str(path), str(config), str(layer)])
        print(f"  parity: block inputs and modulations of blocks 0..{layer}, truncated BFL load vs from_single_file: "
              f"{'bitwise equal' if parity['equal'] else 'DIFFERENT'}")
    counts = flux_dev_counts()
    loaded, total = counts["loaded"], counts["total"]
    print(f"  Flux.1-dev at k = 28 (from parameter counts): {loaded / 1e9:.2f} B of {total / 1e9:.2f} B parameters = "
          f"{loaded / total:.2f} ({loaded * 2 / GB:.1f} GB instead of {total * 2 / GB:.1f} GB in bf16; blocks: double "
          f"{counts['double'] / 1e6:.0f} M, single {counts['single'] / 1e6:.0f} M, rest {counts['other'] / 1e6:.0f} M)")


# --- 2. extractions per dataset --------------------------------------------------------------------------------------
def bench_extractions(spair_root: Path | None) -> None:
    from test_eval import SyntheticExtractor, write_image

    from ditf_core.dataset import Ranks
    from ditf_core.eval import read_spair
    from ditf_core.eval.harness import evaluate_on_ranks

    with tempfile.TemporaryDirectory() as folder:
        root = write_synthetic_spair(Path(folder) / "spair", write_image, categories=3, per_category=6)
        pairs = read_spair(root)
        extractor = SyntheticExtractor()
        evaluate_on_ranks(pairs, extractor, ranks=Ranks(), cache_dir=Path(folder) / "cache",
                          cache_settings={"synthetic": 1}, show_progress=False)
    official = 2 * len(pairs)
    print(f"extractions: synthetic SPair layout ({len(pairs)} pairs = every pair of 6 images in each of 3 categories): "
          f"{extractor.calls} extractor calls vs {official} per-pair re-extractions -> "
          f"{official / extractor.calls:.1f}x fewer")
    test_pairs, images, per_category = 12_234, 1_800, 100
    print(f"  SPair-71k test: {test_pairs} pairs -> {2 * test_pairs} per-pair extractions (official); unique images at "
          f"most {images} (the layout holds {per_category} images in each of its 18 categories, "
          f"JPEGImages/<category>/) -> at least {2 * test_pairs / images:.1f}x fewer")
    if spair_root is not None:
        real = read_spair(spair_root, "test")
        unique = len({p for pair in real for p in (pair.source_image, pair.target_image)})
        print(f"  counted in {spair_root}: {len(real)} test pairs, {unique} unique images -> "
              f"{2 * len(real) / unique:.1f}x fewer")


def write_synthetic_spair(root: Path, write_image, categories: int, per_category: int) -> Path:
    """Every unordered pair of ``per_category`` images in each category, SPair-71k's file layout."""
    folder = root / "PairAnnotation" / "test"
    folder.mkdir(parents=True)
    number = 0
    for c in range(categories):
        category = f"class{c}"
        for i in range(per_category):
            write_image(root / "JPEGImages" / category / f"{i}.jpg", (64 + 8 * i, 64), (i, c))
        for i in range(per_category):
            for j in range(i + 1, per_category):
                annotation = {"src_imname": f"{i}.jpg", "trg_imname": f"{j}.jpg", "category": category,
                              "src_kps": [[10, 10]], "trg_kps": [[10, 10]], "trg_bndbox": [0, 0, 40, 40]}
                (folder / f"{number:06d}-{i}-{j}:{category}.json").write_text(json.dumps(annotation))
                number += 1
    return root


# --- 3. torchrun 2 ranks vs 1 ----------------------------------------------------------------------------------------
def bench_torchrun(repeats: int, images: int = 16) -> None:
    from test_eval import write_image

    from ditf_core.demo_model import build_tiny_flux, build_tiny_vae

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = folder / "model"
        build_tiny_flux(num_layers=4, num_single_layers=8, attention_head_dim=32, num_attention_heads=8,
                        axes_dims_rope=(8, 12, 12)).save_pretrained(model / "transformer")
        build_tiny_vae().save_pretrained(model / "vae")
        (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
        for i in range(images):
            write_image(folder / "images" / f"{i}.jpg", (256, 192), (i, 1))
        command = ["-m", "ditf_core", "extract-dataset", str(folder / "images"), "--model", str(model),
                   "--resolution", "256", "--ensemble", "4", "--quiet"]
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
        # torchrun gives each of several ranks one thread (OMP_NUM_THREADS=1); one rank keeps torch's default (one
        # thread per core) unless told otherwise
        launches = {"1 rank, 2 threads": ([*torchrun, "1"], {}),
                    "1 rank, 1 thread": ([*torchrun, "1"], {"OMP_NUM_THREADS": "1"}),
                    "2 ranks, 1 thread each": ([*torchrun, "2"], {})}
        walls: dict[str, list[float]] = {name: [] for name in launches}
        extraction: dict[str, list[float]] = {name: [] for name in launches}
        for repeat in range(repeats):
            for name, (launcher, env) in launches.items():
                store = folder / f"store-{repeat}-{len(walls[name])}-{launcher[-1]}-{env.get('OMP_NUM_THREADS', '')}"
                argv = [sys.executable, *launcher, *command, "--out", str(store)]
                started = time.perf_counter()
                done = subprocess.run(argv, cwd=ROOT, env={**_env(), **env}, capture_output=True, text=True, check=True)
                walls[name].append(time.perf_counter() - started)
                extraction[name].append(json.loads(done.stdout)["seconds"])
    wall = {name: statistics.median(values) for name, values in walls.items()}
    work = {name: statistics.median(values) for name, values in extraction.items()}
    print(f"torchrun: extract-dataset of {images} images (256x192 px, E=4, 12-block hidden-256 Flux), {os.cpu_count()} "
          "cores; wall time incl. start-up / extraction phase only")
    for name in launches:
        print(f"  {name:<24} {wall[name]:7.2f} s / {work[name]:7.2f} s")
    two = "2 ranks, 1 thread each"
    for one in ("1 rank, 2 threads", "1 rank, 1 thread"):
        print(f"  2 ranks / {one}: wall {wall[two] / wall[one]:.2f}, extraction {work[two] / work[one]:.2f}")


# --- 4. CPU efficiency ------------------------------------------------------------------------------------------------
def bench_efficiency(repeats: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from ditf_core import extract_from_latents
    from ditf_core.demo_model import build_tiny_flux

    def cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)  # torch counts the CUDA attention kernels, not this CPU one

    a, b = torch.randn(2112, WIDTH), torch.randn(WIDTH, WIDTH)
    config = json.loads((ROOT / "ditf_core" / "configs" / "flux-dev" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    model = build_tiny_flux(**{**config, "num_layers": 1, "num_single_layers": 2})  # full width, fp32
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 80, 80, generator=generator)  # 640 px: 40 x 40 tokens
    noise = torch.randn(2, 1, 16, 80, 80, generator=generator)
    text, pooled = torch.randn(1, 512, 4096, generator=generator), torch.randn(1, 768, generator=generator)

    def extract():
        extract_from_latents(model, latents, t=0.26, layer=2, text_embeds=text, pooled=pooled, noise=noise)

    attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=attention) as counter:
        extract()
    flops = counter.get_total_flops()
    gemms, extractions = [], []
    extract()  # warm-up
    for _ in range(repeats):  # interleaved, so that both see the same load on a shared machine
        gemms.append(2 * 2112 * WIDTH * WIDTH / median_seconds(lambda: a @ b, 8))
        started = time.perf_counter()
        extract()
        extractions.append(flops / (time.perf_counter() - started))
    gemm, achieved = statistics.median(gemms), statistics.median(extractions)
    ratio = statistics.median(e / g for e, g in zip(extractions, gemms))
    print(f"efficiency: extraction to block 2 of a full-width Flux slice (1 double + 2 single blocks, fp32), 640 px, "
          f"E=2, 512 text tokens: {flops / 1e12:.2f} TFLOP at {achieved / 1e9:.1f} GFLOP/s; dense GEMM "
          f"[2112x3072]@[3072x3072]: {gemm / 1e9:.1f} GFLOP/s -> efficiency {ratio:.2f} (median of {repeats} "
          "interleaved pairs; target >= 0.7)")


# --- helpers ---------------------------------------------------------------------------------------------------------
def _reset_peak_rss() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS and return that. (getrusage's ru_maxrss would not do:
    it carries the parent's peak across fork + exec.)"""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def _peak_rss() -> int:
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def _child(arguments: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *arguments], env=_env(), capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["loading", "extractions", "torchrun", "efficiency"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spair-root", type=Path, help="a real SPair-71k folder, to count its test images")
    parser.add_argument("--load-child", nargs=4, metavar=("MODE", "FILE", "CONFIG", "LAYER"), help=argparse.SUPPRESS)
    parser.add_argument("--parity-child", nargs=3, metavar=("FILE", "CONFIG", "LAYER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        mode, path, config, layer = args.load_child
        return load_child(mode, path, config, int(layer))
    if args.parity_child:
        path, config, layer = args.parity_child
        return parity_child(path, config, int(layer))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for part in args.parts:
        {"loading": lambda: bench_loading(args.repeats), "extractions": lambda: bench_extractions(args.spair_root),
         "torchrun": lambda: bench_torchrun(args.repeats), "efficiency": lambda: bench_efficiency(args.repeats)}[part]()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
