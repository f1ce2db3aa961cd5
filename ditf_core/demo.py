"""The demo job: the whole pipeline on the bundled sample pair, with pictures, the massive-activation inspector's
report and a one-screen summary."""

from __future__ import annotations

import time
from pathlib import Path

from .massive import channel_magnitudes
from .pipeline import MODE_HELP
from .visualize import labelled_grid, pca_rgb, upsample_rgb


def run_demo_pipeline(pipeline, out: Path, extract_kwargs: dict, progress=None) -> str:
    """Extract features of the sample pair in the three recipe modes and inspect them (full-depth sweep); write
    PNGs, features, the inspector report (``inspect/``) and a summary.

    Returns the summary text (also written to ``summary.txt``).
    """
    from .cli import write_json
    from .samples import sample_pair

    out.mkdir(parents=True, exist_ok=True)
    scene_a, scene_b, _ = sample_pair()
    scene_a.save(out / "scene_a.png")
    scene_b.save(out / "scene_b.png")

    kwargs = {k: v for k, v in extract_kwargs.items() if k != "mode"}
    by_mode, timings = {}, {}
    for mode in ("original", "adaln", "ditf"):
        started = time.perf_counter()
        by_mode[mode] = [
            pipeline.extract(image, mode=mode, progress=progress and progress(f"{mode} {name}"), **kwargs)
            for name, image in (("A", scene_a), ("B", scene_b))
        ]
        timings[mode] = time.perf_counter() - started
    ditf_a, ditf_b = by_mode["ditf"]
    ditf_a.save(out / "features_a.safetensors")
    ditf_b.save(out / "features_b.safetensors")

    rows = [("input images A, B", [scene_a, scene_b])]
    for mode, (features_a, features_b) in by_mode.items():
        rgb_a, rgb_b = pca_rgb([features_a.features[0], features_b.features[0]])
        rows.append((f"PCA of features, mode {mode}: {MODE_HELP[mode]}",
                     [upsample_rgb(rgb_a, scene_a.size), upsample_rgb(rgb_b, scene_b.size)]))
    labelled_grid(rows).save(out / "pca_modes.png")

    from .inspect import inspect_pipeline

    started = time.perf_counter()
    inspect_settings = {k: v for k, v in extract_kwargs.items() if k not in ("mode", "discard", "micro_batch")}
    inspection = inspect_pipeline(pipeline, [scene_a, scene_b], micro_batch=extract_kwargs.get("micro_batch"),
                                  progress=progress and progress("inspect A+B"), **inspect_settings)
    inspection.save(out / "inspect")
    timings["inspect"] = time.perf_counter() - started

    settings = ditf_a.settings
    raw = by_mode["original"][0].features[0].flatten(1).T  # [N, C] raw block input
    per_channel, overall = channel_magnitudes(raw)
    massive = settings["massive_channels"]
    ratios = {c: round(float(per_channel[c] / overall), 1) for c in massive}
    write_json(out / "summary.json", {"settings": settings, "massive_ratios": ratios, "seconds": timings})

    lines = [
        f"DiTF demo on {settings['model']['name']}" + ("  (RANDOM WEIGHTS)" if "demo" in pipeline.name else ""),
        f"  family {settings['family']}, layer {settings['layer']} of {settings['model']['depth']}, t={settings['t']}, "
        f"ensemble {settings['ensemble']}, resolution {settings['resolution']}, seed {settings['seed']}",
        f"  features {list(ditf_a.features.shape)} per image (grid {ditf_a.grid[1]}x{ditf_a.grid[0]} cells)",
        f"  massive channels at block {settings['layer']}: {massive or 'none'}"
        + (f"  (median |h| / map median: {', '.join(f'{c}: {r}x' for c, r in ratios.items())})" if ratios else ""),
        f"  discarded in mode ditf: {list(ditf_a.discarded) or 'none'}",
        f"  time for 2 images: " + ", ".join(f"{m} {s:.2f}s" for m, s in timings.items()),
        f"  wrote to {out}/: scene_a.png scene_b.png features_[ab].safetensors pca_modes.png summary.json",
        inspection.summary(),
        f"  wrote to {out}/inspect/: report.json sweep.safetensors " + " ".join(f"{n}.png" for n in inspection.figures),
    ]
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n")
    return summary
