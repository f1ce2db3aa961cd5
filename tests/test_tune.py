"""The layer finder: known warps, the block it picks on a model built with one faithful block, determinism, the
table / plot / JSON, clear errors, and the command line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tune_model import FAITHFUL, build_faithful_block_flux

from ditf_core import DiTFPipeline
from ditf_core.conditioning import ZeroPromptEncoder
from ditf_core.demo_model import build_demo_dit, build_tiny_vae
from ditf_core.errors import DiTFInputError
from ditf_core.tune import LayerSearch, find_layer, make_warps, pipeline_extractor, tune_pipeline


def textured_images(count: int, seed: int = 0, size=(192, 256)) -> list[torch.Tensor]:
    """Smooth random colour fields: every place looks different, so faithful features can be told apart."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.rand(count, 3, size[0] // 16, size[1] // 16, generator=generator)
    return list(F.interpolate(cells, size=size, mode="bicubic", align_corners=False).clamp(0, 1))


def test_warps_put_every_pixel_where_their_homography_says():
    image = torch.zeros(3, 120, 160)
    points = torch.tensor([[30.0, 40.0], [100.0, 60.0], [80.0, 90.0]])
    for x, y in points.long().tolist():
        image[:, y - 1 : y + 2, x - 1 : x + 2] = 1.0  # a bright 3x3 dot
    warps = make_warps(image, 4, torch.Generator().manual_seed(0), jitter=0.0)
    truth = warps.where(points)
    found = 0
    for view, places in zip(warps.images, truth):
        for x, y in places.round().long().tolist():
            if 3 <= x < 157 and 3 <= y < 117:
                window = view[0, y - 3 : y + 4, x - 3 : x + 4]
                row, column = divmod(int(window.argmax()), 7)
                assert float(window.max()) > 0.5 and abs(row - 3) <= 1 and abs(column - 3) <= 1
                found += 1
    assert found >= 8
    moved = (truth - points).norm(dim=-1)
    assert float(moved.mean()) > 10  # shifts and rotations move the content: the identity is a wrong answer


def test_warps_are_seeded():
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    a = make_warps(image, 2, torch.Generator().manual_seed(3))
    b = make_warps(image, 2, torch.Generator().manual_seed(3))
    c = make_warps(image, 2, torch.Generator().manual_seed(4))
    assert torch.equal(a.images, b.images) and torch.equal(a.homographies, b.homographies)
    assert not torch.allclose(a.homographies, c.homographies)


def short_text(transformer, vae) -> DiTFPipeline:
    """A pipeline on zero conditioning of 8 text tokens (not Flux's 512: the text does not matter here, and the
    tiny models' time goes into attention over it)."""
    return DiTFPipeline(transformer, vae, ZeroPromptEncoder(transformer, tokens=8))


@pytest.fixture(scope="module")
def faithful_pipeline():
    return short_text(*build_faithful_block_flux())


@pytest.fixture(scope="module")
def demo():
    return short_text(build_demo_dit(0), build_tiny_vae(0))


def test_the_finder_picks_the_one_block_with_faithful_features(faithful_pipeline):
    """Blocks before FAITHFUL carry the shared noise draws (they map every point onto itself), blocks after it are
    scrambled the same way: block FAITHFUL must win. Mode adaln: the model's gains are extreme enough that the
    massive-channel discard of mode ditf would remove exactly the dims that make the difference."""
    search = tune_pipeline(faithful_pipeline, textured_images(2), ts=(0.1, 0.26), warps=3, resolution=256,
                           ensemble=1, mode="adaln")
    print(search.table())
    assert search.best_layer == FAITHFUL and search.best_t == 0.1
    others = [search.score(layer, 0.1) for layer in search.layers if layer != FAITHFUL]
    assert search.score(FAITHFUL, 0.1) >= max(others) + 0.05


def test_same_seed_same_table_other_seed_other_warps(demo):
    pipeline = demo
    images = textured_images(1, size=(96, 128))
    settings = dict(ts=(0.26,), warps=2, resolution=128, ensemble=1)
    a = tune_pipeline(pipeline, images, seed=5, **settings)
    b = tune_pipeline(pipeline, images, seed=5, **settings)
    c = tune_pipeline(pipeline, images, seed=6, **settings)
    assert torch.equal(a.pck, b.pck) and a.best == b.best
    assert not torch.equal(a.pck, c.pck)


def test_one_capture_per_image_and_t_covers_every_block(demo):
    pipeline = demo
    calls, progress = [], []
    extract = pipeline_extractor(pipeline, resolution=128, ensemble=1)

    def counting(pixels, t):
        calls.append((pixels.shape[0], t))
        return extract(pixels, t)

    search = find_layer(counting, textured_images(2, size=(96, 128)), ts=(0.2, 0.4), warps=3,
                        progress=lambda done, total: progress.append((done, total)))
    assert calls == [(4, 0.2), (4, 0.4)] * 2  # the image and its 3 warps together, once per t
    assert search.layers == tuple(range(pipeline.depth)) and search.pck.shape == (2, 2, pipeline.depth)
    assert progress[-1] == (4, 4)


def test_table_json_and_plot():
    pck = torch.tensor([[[0.1, 0.4, 0.2], [0.3, 0.3, 0.1]], [[0.5, 0.8, 0.8], [0.6, 0.7, 0.2]]], dtype=torch.float64)
    search = LayerSearch((3, 7, 9), (0.1, 0.3), pck, 100, 1, 4)
    assert search.best == (7, 0.1)  # PCK@0.10 ties (0.8 at blocks 7 and 9, t 0.1): PCK@0.05 decides
    table = search.table()
    assert "7 |" in table and "<- best" in table.splitlines()[3] and "best: layer 7, t 0.1" in table
    data = json.loads(json.dumps(search.to_dict()))
    assert data["best"] == {"layer": 7, "t": 0.1, "pck": {"0.05": 0.4, "0.1": 0.8}}
    plot = search.plot()
    assert plot.mode == "RGB" and plot.size[0] == 1000


@pytest.mark.parametrize("images, message", [
    ([], "needs at least one image"),
    ([torch.rand(3, 20, 24)], "20 px a side|24x20 px"),
    ([torch.rand(64, 64)], r"must be a float tensor \[3, H, W\]"),
])
def test_bad_images_are_explained(images, message):
    with pytest.raises(DiTFInputError, match=message):
        find_layer(lambda pixels, t: {}, images)


def test_an_image_too_small_for_the_feature_grid_is_explained(demo):
    with pytest.raises(DiTFInputError, match="feature cells.*larger image or a higher resolution"):
        tune_pipeline(demo, textured_images(1, size=(48, 48)), ts=(0.26,), warps=1, resolution=48, ensemble=1)


@pytest.mark.parametrize("kwargs, message", [(dict(ts=()), "at least one t"), (dict(ts=(0.2, 1.0)), "strictly between"),
                                             (dict(warps=0), "warps must be a positive integer")])
def test_bad_settings_are_explained(kwargs, message):
    with pytest.raises((DiTFInputError, ValueError), match=message):
        find_layer(lambda pixels, t: {}, textured_images(1, size=(64, 64)), **kwargs)


def test_command_line_writes_table_plot_and_json(tmp_path, capsys):
    from PIL import Image

    from ditf_core.cli import main

    path = tmp_path / "image.png"
    Image.fromarray((textured_images(1, size=(96, 128))[0].permute(1, 2, 0) * 255).byte().numpy()).save(path)
    code = main(["tune", str(path), "--demo", "--t", "0.26", "--warps", "1", "--resolution", "128", "--ensemble", "1",
                 "--layers", "1,3", "--out", str(tmp_path / "out")])
    assert code == 0
    data = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert data["layers"] == [1, 3] and data["ts"] == [0.26] and data["best"]["layer"] in (1, 3)
    assert (tmp_path / "out" / "tune.png").is_file()
    assert "use --layer" in capsys.readouterr().out
