"""The demo job: the whole pipeline on the bundled sample pair, in one capture: features in the three recipe
modes, the massive-activation inspector's report, keypoint and dense matches scored against the known
transform, and the warps they drive; pictures and a one-screen summary."""

from __future__ import annotations

import time
from pathlib import Path

from .demo_match import run_match_demo
from .pipeline import MODE_HELP, MODES
from .transport.demo import run_ma_demo
from .visualize import labelled_grid, pca_rgb, upsample_rgb


def run_demo_pipeline(pipeline, out: Path, extract_kwargs: dict, progress=None) -> str:
    """Run the demo on ``pipeline`` and write its outputs to ``out``; returns the summary (also ``summary.txt``).

    One early-exit pass per micro-batch captures every block for both images: the features of block k in every
    mode and the inspector's full-depth sweep all come from it.
    """
    from .cli import write_json
    from .inspect import inspect_run
    from .samples import sample_pair

    out.mkdir(parents=True, exist_ok=True)
    scene_a, scene_b, truth = sample_pair()
    scene_a.save(out / "scene_a.png")
    scene_b.save(out / "scene_b.png")

    settings = {k: v for k, v in extract_kwargs.items() if k not in ("mode", "discard", "micro_batch")}
    timings = {}
    started = time.perf_counter()
    run = pipeline.capture([scene_a, scene_b], layers=range(pipeline.depth), micro_batch=extract_kwargs.get("micro_batch"),
                           progress=progress and progress("capture A+B, all blocks"), **settings)
    timings["capture"] = time.perf_counter() - started

    by_mode = {mode: pipeline.features(run, mode=mode, discard=extract_kwargs.get("discard", "auto")) for mode in MODES}
    ditf = by_mode["ditf"]
    ditf_a, ditf_b = ditf.select(0), ditf.select(1)
    ditf_a.save(out / "features_a.safetensors")
    ditf_b.save(out / "features_b.safetensors")
    rows = [("input images A, B", [scene_a, scene_b])]
    for mode, features in by_mode.items():
        rgb_a, rgb_b = pca_rgb([features.features[0], features.features[1]])
        rows.append((f"PCA of features, mode {mode}: {MODE_HELP[mode]}",
                     [upsample_rgb(rgb_a, scene_a.size), upsample_rgb(rgb_b, scene_b.size)]))
    labelled_grid(rows).save(out / "pca_modes.png")

    started = time.perf_counter()
    inspection = inspect_run(pipeline, run)
    inspection.save(out / "inspect")
    timings["inspect"] = time.perf_counter() - started

    started = time.perf_counter()
    match_lines, match_numbers = run_match_demo(out, scene_a, scene_b, truth, ditf_a, ditf_b)
    timings["match_and_warp"] = time.perf_counter() - started

    s = ditf.settings
    write_json(out / "summary.json", {"settings": s, "matching": match_numbers,
                                      "seconds": {k: round(v, 3) for k, v in timings.items()}})
    lines = [
        f"DiTF demo on {s['model']['name']}" + ("  (RANDOM WEIGHTS)" if "demo" in pipeline.name else ""),
        f"  family {s['family']}, layer {s['layer']} of {s['model']['depth']}, t={s['t']}, ensemble {s['ensemble']}, "
        f"resolution {s['resolution']}, seed {s['seed']}",
        f"  features {list(ditf_a.features.shape)} per image (grid {ditf.grid[1]}x{ditf.grid[0]} cells); "
        f"discarded in mode ditf: {list(ditf.discarded) or 'none'}",
        inspection.summary(),
        *match_lines,
        *run_ma_demo(out / "massive_activations"),
        "  time: " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items()),
        f"  wrote to {out}/: scene_a.png scene_b.png features_[ab].safetensors pca_modes.png matches.png warps.png "
        "summary.json, and inspect/ (report.json, " + ", ".join(f"{n}.png" for n in inspection.figures) + ")",
    ]
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n")
    return summary
