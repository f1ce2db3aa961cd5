"""The demo job: the whole pipeline on the bundled sample pair, in one capture: features in the three recipe
modes, the massive-activation inspector's report, keypoint and dense matches scored against the known
transform, and the warps they drive; pictures and a one-screen summary."""

from __future__ import annotations

import time
from pathlib import Path

from .demo_match import run_match_demo
from .outputs import save_image, write_json, write_text
from .pipeline import MODE_HELP, MODES
from .visualize import captioned_grid, pca_rgb, upsample_rgb


def run_demo_pipeline(pipeline, out: Path, extract_kwargs: dict, progress=None, *, shown_as: Path | None = None) -> str:
    """Run the demo on ``pipeline`` and write its outputs to ``out``; returns the summary (also ``summary.txt``).

    extract_kwargs: ``DiTFPipeline.extract`` options (layer, t, ensemble, ..., mode and discard for the ``ditf``
    features). progress: ``label -> progress(done, total)`` callback factory, or None. shown_as: the folder named
    in the summary (default ``out``; a command writing through a staging folder passes its final folder).

    One early-exit pass per micro-batch captures every block for both images: the features of block k in every
    mode and the inspector's full-depth sweep all come from it.
    """
    from .inspect import inspect_run
    from .samples import sample_pair

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scene_a, scene_b, truth = sample_pair()
    save_image(scene_a, out / "scene_a.png")
    save_image(scene_b, out / "scene_b.png")
    random_weights = "demo" in pipeline.name
    model_note = f" ({pipeline.name}" + (": RANDOM weights, so this shows the mechanics, not semantics)"
                                         if random_weights else ")")

    settings = {k: v for k, v in extract_kwargs.items() if k not in ("mode", "discard", "micro_batch")}
    timings = {}
    started = time.perf_counter()
    run = pipeline.capture([scene_a, scene_b], layers=range(pipeline.depth),
                           micro_batch=extract_kwargs.get("micro_batch"),
                           progress=progress and progress("capture A+B, all blocks"), **settings)
    timings["capture"] = time.perf_counter() - started

    by_mode = {mode: pipeline.features(run, mode=mode, discard=extract_kwargs.get("discard", "auto")) for mode in MODES}
    ditf = by_mode["ditf"]
    ditf_a, ditf_b = ditf.select(0), ditf.select(1)
    ditf_a.save(out / "features_a.safetensors")
    ditf_b.save(out / "features_b.safetensors")
    rows = [("Input images", [("A", scene_a), ("B: A rotated, scaled and shifted", scene_b)])]
    for mode, features in by_mode.items():
        rgb_a, rgb_b = pca_rgb([features.features[0], features.features[1]])
        rows.append((f"mode {mode}: {MODE_HELP[mode]}",
                     [("A", upsample_rgb(rgb_a, scene_a.size)), ("B", upsample_rgb(rgb_b, scene_b.size))]))
    layer = ditf.settings["layer"]
    save_image(captioned_grid(rows, title=f"PCA of the block {layer} features in the three recipe modes{model_note}",
                              footer=["One joint PCA per mode over both images: equal colours mean similar features; "
                                      "each square is one feature cell."]), out / "pca_modes.png")

    started = time.perf_counter()
    inspection = inspect_run(pipeline, run)
    inspection.save(out / "inspect")
    timings["inspect"] = time.perf_counter() - started

    started = time.perf_counter()
    match_lines, match_numbers = run_match_demo(out, scene_a, scene_b, truth, ditf_a, ditf_b, model_note=model_note)
    timings["match_and_warp"] = time.perf_counter() - started

    s = ditf.settings
    shown = Path(shown_as or out)
    lines = [
        f"DiTF demo on {s['model']['name']}" + ("  (RANDOM WEIGHTS)" if random_weights else ""),
        f"  family {s['family']}, layer {s['layer']} of {s['model']['depth']}, t={s['t']}, ensemble {s['ensemble']}, "
        f"resolution {s['resolution']}, seed {s['seed']}",
        f"  features {list(ditf_a.features.shape)} per image (grid {ditf.grid[1]}x{ditf.grid[0]} cells); "
        f"discarded in mode ditf: {list(ditf.discarded) or 'none'}",
        inspection.summary(),
        *match_lines,
        "  time: " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items()),
        f"  wrote to {shown}/: scene_a.png scene_b.png features_[ab].safetensors pca_modes.png matches.png warps.png "
        "summary.json summary.txt, and inspect/ (report.json, sweep.safetensors, "
        + ", ".join(f"{n}.png" for n in inspection.figures) + ")",
    ]
    summary = "\n".join(lines)
    # The summaries come last: their presence says every other file is complete.
    write_json(out / "summary.json", {"settings": s, "matching": match_numbers,
                                      "seconds": {k: round(v, 3) for k, v in timings.items()}})
    write_text(out / "summary.txt", summary + "\n")
    return summary
