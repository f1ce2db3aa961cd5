"""Evaluation harness: dataset readers, PCK numbers against hand-computed values, the feature cache, the CLI.

Synthetic benchmark: every image is one flat colour that encodes its world shift (R = 4 dx, G = 4 dy, so it
survives JPEG); pixel p of an image shows world point p - shift. The test extractor turns that into features
of a smooth random field sampled at the cell centres (8 px cells), so in "exact" mode a source keypoint p
lands exactly on p + (target shift - source shift). Ground-truth target keypoints are then moved by chosen
offsets, which fixes which alphas each point passes: the expected PCK values follow from the offsets alone.
"""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from PIL import Image

from ditf_core.eval import correct_points, evaluate, format_table, read_ap10k, read_pfpascal, read_spair
from ditf_core.features import DiTFeatures
from ditf_core.mapping import PixelMapping

CELL = 8
SETTINGS = {"model": "synthetic", "layer": 1}

# --- the controlled extractor -------------------------------------------------------------------------------


def field(xy: torch.Tensor, channels: int = 48) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    omega = torch.randn(channels, 2, generator=generator) / 30.0
    phase = torch.rand(channels, generator=generator) * 2 * math.pi
    return torch.sin(xy @ omega.T + phase)


class SyntheticExtractor:
    """PIL image -> DiTFeatures of the world the image shows; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image: Image.Image) -> DiTFeatures:
        self.calls += 1
        r, g, _ = image.getpixel((image.width // 2, image.height // 2))
        shift = torch.tensor([round(r / 4), round(g / 4)], dtype=torch.float32)
        grid = (image.width // CELL, image.height // CELL)
        mapping = PixelMapping(image.size, (grid[0] * 16, grid[1] * 16), grid)
        v, u = torch.meshgrid(torch.arange(grid[1]).float(), torch.arange(grid[0]).float(), indexing="ij")
        features = field(mapping.to_pixel(torch.stack([u, v], dim=-1)) - shift)
        return DiTFeatures(features.permute(2, 0, 1)[None].contiguous(), mapping, {"layer": 1})


def write_image(path: Path, size: tuple[int, int], shift: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (4 * shift[0], 4 * shift[1], 128)).save(path, quality=95)


def offset(points, shift, offsets, size):
    """Ground-truth target points: the true positions (points + shift) moved by offsets * size."""
    return [[x + shift[0] + dx * size, y + shift[1] + dy * size] for (x, y), (dx, dy) in zip(points, offsets)]


# Three pairs. Offsets are in units of the PCK size (box or image max side, what alpha multiplies), so each
# decides correctness at alpha 0.01 / 0.05 / 0.10 whatever the layout: 0 -> all three, 0.03 -> 0.05 and 0.10,
# 0.07 -> 0.10 only, 0.12 -> none.
# pair 1 (cat): 0, 0.03, 0.07, 0.12 -> correct 1/4, 2/4, 3/4
# pair 2 (cat): 0, 0, 0.12 -> 2/3, 2/3, 2/3
# pair 3 (dog): 0, 0.03, 0.07, 0.12 -> 1/4, 2/4, 3/4
PAIRS = [
    dict(category="cat", src=("s1", (160, 80), (0, 0)), trg=("t1", (112, 88), (16, 8)),
         points=[[20, 20], [30, 40], [50, 30], [40, 50]], offsets=[(0, 0), (0.03, 0), (0, 0.07), (0.12, 0)], size=100),
    dict(category="cat", src=("s2", (96, 160), (8, 0)), trg=("t2", (104, 96), (24, 16)),
         points=[[20, 30], [44, 20], [60, 50]], offsets=[(0, 0), (0, 0), (0, -0.12)], size=100),
    dict(category="dog", src=("s3", (144, 80), (0, 0)), trg=("t3", (96, 96), (16, 8)),
         points=[[20, 20], [30, 40], [50, 30], [40, 50]], offsets=[(0, 0), (0.03, 0), (0, 0.07), (0.12, 0)], size=50),
]

F_ = Fraction
CAT_PAIRS = [(F_(1, 4), F_(2, 4), F_(3, 4)), (F_(2, 3), F_(2, 3), F_(2, 3))]  # per-pair fractions at each alpha
DOG_PAIRS = [(F_(1, 4), F_(2, 4), F_(3, 4))]
CAT_POINT = (F_(3, 7), F_(4, 7), F_(5, 7))  # (1 + 2) / 7, (2 + 2) / 7, (3 + 2) / 7
DOG_POINT = (F_(1, 4), F_(2, 4), F_(3, 4))
ALL_POINT = (F_(4, 11), F_(6, 11), F_(8, 11))


def expected_summary():
    def image(pairs, i):
        return sum(p[i] for p in pairs) / len(pairs)

    keys = ("0.01", "0.05", "0.1")
    return {
        "cat": ({k: CAT_POINT[i] for i, k in enumerate(keys)}, {k: image(CAT_PAIRS, i) for i, k in enumerate(keys)}),
        "dog": ({k: DOG_POINT[i] for i, k in enumerate(keys)}, {k: image(DOG_PAIRS, i) for i, k in enumerate(keys)}),
        "all": ({k: ALL_POINT[i] for i, k in enumerate(keys)},
                {k: image(CAT_PAIRS + DOG_PAIRS, i) for i, k in enumerate(keys)}),
        "mean": ({k: (CAT_POINT[i] + DOG_POINT[i]) / 2 for i, k in enumerate(keys)},
                 {k: (image(CAT_PAIRS, i) + image(DOG_PAIRS, i)) / 2 for i, k in enumerate(keys)}),
    }


def assert_summary(summary, expected=None):
    expected = expected or expected_summary()
    blocks = {**summary["categories"], "all": summary["all"], "mean": summary["mean"]}
    for name, (per_point, per_image) in expected.items():
        for key in per_point:
            assert blocks[name]["per_point"][key] == pytest.approx(float(per_point[key]), abs=1e-12), (name, key)
            assert blocks[name]["per_image"][key] == pytest.approx(float(per_image[key]), abs=1e-12), (name, key)
    assert summary["all"]["pairs"] == 3 and summary["all"]["points"] == 11


# --- synthetic datasets in the three layouts ---------------------------------------------------------------


def make_spair(root: Path) -> Path:
    for number, pair in enumerate(PAIRS):
        (src, src_size, src_shift), (trg, trg_size, trg_shift) = pair["src"], pair["trg"]
        write_image(root / "JPEGImages" / pair["category"] / f"{src}.jpg", src_size, src_shift)
        write_image(root / "JPEGImages" / pair["category"] / f"{trg}.jpg", trg_size, trg_shift)
        relative = (trg_shift[0] - src_shift[0], trg_shift[1] - src_shift[1])
        annotation = {
            "src_imname": f"{src}.jpg",
            "trg_imname": f"{trg}.jpg",
            "category": pair["category"],
            "src_imsize": [*src_size, 3],
            "trg_imsize": [*trg_size, 3],
            "src_kps": pair["points"],
            "trg_kps": offset(pair["points"], relative, pair["offsets"], pair["size"]),
            "src_bndbox": [0, 0, 10, 10],
            "trg_bndbox": [4, 6, 4 + pair["size"], 6 + pair["size"] // 2],  # the max side is the width
        }
        folder = root / "PairAnnotation" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{number:06d}-{src}-{trg}:{pair['category']}.json").write_text(json.dumps(annotation))
    return root


def make_pfpascal(base: Path) -> Path:
    """PF-PASCAL: the PCK size is the target image's max side."""
    root = base / "PF-dataset-PASCAL"
    rows = [["source_image", "target_image", "class", "XA", "YA", "XB", "YB"]]
    classes = {"cat": 8, "dog": 12}
    for pair in PAIRS:
        (src, src_size, src_shift), (trg, trg_size, trg_shift) = pair["src"], pair["trg"]
        write_image(root / "JPEGImages" / f"{src}.jpg", src_size, src_shift)
        write_image(root / "JPEGImages" / f"{trg}.jpg", trg_size, trg_shift)
        relative = (trg_shift[0] - src_shift[0], trg_shift[1] - src_shift[1])
        truth = offset(pair["points"], relative, pair["offsets"], max(trg_size))
        join = lambda values: ";".join(f"{v:g}" for v in values)  # noqa: E731
        rows.append([f"PF-dataset-PASCAL/JPEGImages/{src}.jpg", f"PF-dataset-PASCAL/JPEGImages/{trg}.jpg",
                     classes[pair["category"]], join(p[0] for p in pair["points"]), join(p[1] for p in pair["points"]),
                     join(p[0] for p in truth), join(p[1] for p in truth)])
    with (root / "test_pairs_pf_pascal.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def make_ap10k(base: Path) -> Path:
    """AP-10K: 17 COCO keypoints per image; two extra points invisible on one side must be ignored."""
    root = base / "ap-10k"
    for number, pair in enumerate(PAIRS):
        species = {"cat": "cat", "dog": "dog"}[pair["category"]]
        names = []
        for (name, size, shift), points in ((pair["src"], pair["points"]), (pair["trg"], None)):
            relative = (pair["trg"][2][0] - pair["src"][2][0], pair["trg"][2][1] - pair["src"][2][1])
            visible = points if points is not None else offset(pair["points"], relative, pair["offsets"], pair["size"])
            keypoints = [[x, y, 2] for x, y in visible]
            keypoints += [[1, 1, 0], [30, 30, 2]] if points is not None else [[30, 30, 2], [90, 90, 0]]
            keypoints += [[0, 0, 0]] * (17 - len(keypoints))
            annotation = {"bbox": [3, 3, pair["size"] // 2, pair["size"]], "width": size[0], "height": size[1],
                          "keypoints": [v for kp in keypoints for v in kp], "name": species}
            path = root / "ImageAnnotation" / "Felidae" / species / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(annotation))
            write_image(root / "JPEGImages" / "Felidae" / species / f"{name}.jpg", size, shift)
            names.append(f"data/ap-10k/ImageAnnotation/Felidae/{species}/{name}.json")  # machine-specific prefix
        folder = root / "PairAnnotation" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        pair_file = folder / f"{pair['src'][0]}-{pair['trg'][0]}:{species}.json"
        pair_file.write_text(json.dumps({"src_json_path": names[0], "trg_json_path": names[1]}))
    return root


# --- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["spair", "pfpascal", "ap10k"])
def test_pck_on_synthetic_benchmarks_matches_hand_computed_values(tmp_path, layout):
    make, read = {"spair": (make_spair, read_spair), "pfpascal": (make_pfpascal, read_pfpascal),
                  "ap10k": (make_ap10k, read_ap10k)}[layout]
    pairs = read(make(tmp_path / layout))
    assert sorted(p.category for p in pairs) == ["cat", "cat", "dog"]
    assert sorted(p.source_points.shape[0] for p in pairs) == [3, 4, 4]
    result = evaluate(pairs, SyntheticExtractor(), match="exact")
    assert_summary(result["summary"])
    assert sum(r["correct"]["0.1"] for r in result["pairs"]) == 8
    table = format_table(result["summary"])
    assert "cat" in table and f"{100 * 8 / 11:.2f}" in table


def test_fast_matching_gives_the_same_pck_at_the_coarser_alphas(tmp_path):
    pairs = read_spair(make_spair(tmp_path / "spair"))
    fast = evaluate(pairs, SyntheticExtractor(), match="fast")["summary"]
    exact = evaluate(pairs, SyntheticExtractor(), match="exact")["summary"]
    for key in ("0.05", "0.1"):  # offsets sit >= 1 px from these thresholds; fast is sub-pixel accurate here
        assert fast["all"]["per_point"][key] == exact["all"]["per_point"][key]


def test_feature_cache_makes_reruns_skip_extraction(tmp_path):
    pairs = read_pfpascal(make_pfpascal(tmp_path))
    cache = tmp_path / "cache"
    first = SyntheticExtractor()
    result = evaluate(pairs, first, match="exact", cache_dir=cache, cache_settings=SETTINGS)
    assert first.calls == 6 and result["features"] == {"extracted": 6, "cached": 0}
    files = sorted(cache.rglob("*.safetensors"))
    assert len(files) == 6 and (files[0].parent / "settings.json").is_file()
    assert not list(cache.rglob("*.partial"))

    again = SyntheticExtractor()
    rerun = evaluate(pairs, again, match="exact", cache_dir=cache, cache_settings=SETTINGS)
    assert again.calls == 0 and rerun["features"] == {"extracted": 0, "cached": 6}
    assert rerun["summary"] == result["summary"]

    files[0].write_bytes(b"not a safetensors file")  # a damaged entry is re-extracted
    repaired = SyntheticExtractor()
    evaluate(pairs, repaired, match="exact", cache_dir=cache, cache_settings=SETTINGS)
    assert repaired.calls == 1

    resized = SyntheticExtractor()  # an image replaced by one of another size is re-extracted
    write_image(pairs[0].target_image, (120, 88), (16, 8))
    evaluate(pairs, resized, match="exact", cache_dir=cache, cache_settings=SETTINGS)
    assert resized.calls == 1

    other = SyntheticExtractor()  # other settings -> other cache folder
    evaluate(pairs, other, match="exact", cache_dir=cache, cache_settings={**SETTINGS, "layer": 2})
    assert other.calls == 6
    with pytest.raises(ValueError, match="cache_settings"):
        evaluate(pairs, other, cache_dir=cache)


def test_images_shared_by_pairs_are_extracted_once(tmp_path):
    pairs = read_spair(make_spair(tmp_path / "spair"))
    doubled = pairs + pairs  # every image appears twice
    extractor = SyntheticExtractor()
    result = evaluate(doubled, extractor)
    assert extractor.calls == 6 and result["summary"]["all"]["pairs"] == 6


def test_pck_threshold_is_inclusive_and_validated():
    truth = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    predicted = torch.tensor([[3.0, 4.0], [5.0, 0.1], [0.0, 0.4]])  # distances 5, ~5.001, 0.4
    correct = correct_points(predicted, truth, size=10.0, alphas=(0.05, 0.5))
    assert correct.tolist() == [[False, False, True], [True, False, True]]
    with pytest.raises(ValueError, match="positive"):
        correct_points(predicted, truth, size=0.0)
    with pytest.raises(ValueError, match=r"\[K, 2\]"):
        correct_points(predicted[:2], truth, size=1.0)


def test_readers_reject_missing_or_malformed_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="PairAnnotation"):
        read_spair(tmp_path)
    with pytest.raises(FileNotFoundError, match="test_pairs_pf_pascal.csv"):
        read_pfpascal(tmp_path)
    root = make_pfpascal(tmp_path)
    (root / "test_pairs_pf_pascal.csv").write_text("a.jpg,b.jpg,99,1,1,1,1\n")
    with pytest.raises(ValueError, match="class '99'"):
        read_pfpascal(root)
    (root / "test_pairs_pf_pascal.csv").write_text("a.jpg,b.jpg,cat,1;2,1,1,1\n")
    with pytest.raises(ValueError, match="2 x but 1 y"):
        read_pfpascal(root)
    spair = make_spair(tmp_path / "spair")
    broken = next((spair / "PairAnnotation" / "test").glob("*.json"))
    broken.write_text(json.dumps({"src_imname": "x.jpg"}))
    with pytest.raises(ValueError, match="SPair-71k field"):
        read_spair(spair)


def test_border_keypoints_are_clamped_into_the_image(tmp_path):
    pairs = read_spair(make_spair(tmp_path / "spair"))
    pair = pairs[0]
    on_border = pair.source_points.clone()
    on_border[0] = torch.tensor([160.0, 80.0])  # one past the last pixel (1-based annotation)
    edited = [type(pair)(**{**pair.__dict__, "source_points": on_border})]
    result = evaluate(edited, SyntheticExtractor(), keep_predictions=True)
    assert result["pairs"][0]["points"] == 4 and len(result["pairs"][0]["predicted"]) == 4


class FakePipeline:
    """Stands in for DiTFPipeline in the CLI (which must only need this surface): the synthetic extractor."""

    name, device, dtype, loaded_depth = "fake", "cpu", torch.float32, 6

    def __init__(self):
        self.extractor = SyntheticExtractor()

    def describe(self):
        return {"family": "flux", "depth": 6, "hidden_size": 48, "text": "none", "config_sha256": "0"}

    def settings(self, **kwargs):
        return type("Settings", (), {"__dict__": {**kwargs, "layer": 1}})()

    def extract(self, image, **kwargs):
        return self.extractor(image)


def test_cli_runs_the_harness_with_a_pipeline_it_loads_lazily(tmp_path, monkeypatch, capsys):
    import ditf_core.eval.__main__ as cli
    from ditf_core import DiTFPipeline

    pipeline = FakePipeline()
    monkeypatch.setattr(DiTFPipeline, "demo", classmethod(lambda cls, **options: pipeline))
    root = make_spair(tmp_path / "spair")
    output = tmp_path / "out" / "result.json"
    argv = ["spair", str(root), "--demo", "--cache", str(tmp_path / "cache"), "--output", str(output), "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean of categories" in printed and "dog" in printed
    data = json.loads(output.read_text())
    assert data["dataset"] == "spair" and data["match"] == "exact"
    assert_summary(data["summary"])
    assert cli.main(argv) == 0  # rerun: every feature from the cache
    assert pipeline.extractor.calls == 6
    assert cli.main(["spair", str(root)]) == 2
    assert "no model: give --model PATH" in capsys.readouterr().err
    assert cli.main(["spair", str(root), "--demo", "--model", str(root)]) == 2
    assert "either --model PATH or --demo, not both" in capsys.readouterr().err
