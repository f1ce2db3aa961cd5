"""The pack's host-agnostic node modules (model.py, checks.py) and its import rules; no ComfyUI needed."""

from __future__ import annotations

import ast
import importlib
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / "nodes"
SMALL = dict(resolution=64, ensemble=2, seed=3)


@pytest.fixture(scope="module")
def nodes(offline_pack):
    return {name: importlib.import_module(f"{offline_pack.__name__}.nodes.{name}") for name in ("model", "checks")}


@pytest.fixture(scope="module")
def core(offline_pack):
    return importlib.import_module(f"{offline_pack.__name__}.ditf_core")


@pytest.fixture(scope="module")
def demo(core):
    """The demo DiT (planted massive channels) with a short fixed text conditioning: fast on a CPU."""
    from ditf_core.demo_model import build_demo_dit, build_tiny_vae

    generator = torch.Generator().manual_seed(0)
    prompts = core.conditioning.FixedPromptEncoder(torch.randn(1, 4, 32, generator=generator), torch.randn(1, 32, generator=generator))
    return core.DiTFPipeline(build_demo_dit(0), build_tiny_vae(0), prompts, name="demo")


@pytest.fixture(scope="module")
def demo_model(nodes, demo):
    model = nodes["model"]
    return model.DiTFModel(model.DiffusersHost(demo))


@pytest.fixture(scope="module")
def zero_model(nodes, core):
    """The demo DiT without text encoders (zero conditioning)."""
    model = nodes["model"]
    return model.DiTFModel(model.DiffusersHost(core.DiTFPipeline.demo()))


def images(batch=2, height=70, width=90, channels=3, seed=0):
    return torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


# --- DiTFModel on the diffusers host is DiTFPipeline.extract --------------------------------------------------
@pytest.mark.parametrize("mode", ["ditf", "adaln", "original"])
def test_diffusers_host_gives_the_pipelines_features(demo, demo_model, mode):
    pixels = images()
    ours = demo_model.extract(pixels, mode=mode, **SMALL)
    reference = demo.extract(pixels, mode=mode, **SMALL)
    assert torch.allclose(ours.features, reference.features, atol=1e-5, rtol=1e-5)
    assert ours.mapping == reference.mapping and ours.discarded == reference.discarded
    assert {k: v for k, v in ours.settings.items() if k not in ("host", "conditioning")} == reference.settings
    assert (ours.settings["host"], ours.settings["conditioning"]) == ("diffusers", "prompt")


def test_zero_conditioning_without_text_encoders(zero_model, core):
    pixels = images(batch=1)
    ours = zero_model.extract(pixels, ensemble=1, resolution=32, seed=0)
    reference = core.DiTFPipeline.demo().extract(pixels, ensemble=1, resolution=32, seed=0)
    assert torch.allclose(ours.features, reference.features, atol=1e-5)
    assert ours.settings["conditioning"] == "zero"


def test_several_layers_in_one_pass_equal_one_layer_at_a_time(demo_model):
    pixels = images(batch=1)
    together = demo_model.extract_layers(pixels, layers=[1, 4], **SMALL)
    assert sorted(together) == [1, 4]
    for layer in (1, 4):
        alone = demo_model.extract(pixels, layer=layer, **SMALL)
        assert torch.allclose(together[layer].features, alone.features, atol=1e-5)
        assert together[layer].settings["layer"] == layer


def test_defaults_and_minus_one_mean_the_family_default(demo_model):
    pixels = images(batch=1)
    default = demo_model.extract(pixels, **SMALL)
    minus_one = demo_model.extract(pixels, layer=-1, **SMALL)
    assert default.settings["layer"] == minus_one.settings["layer"] == demo_model.defaults.layer
    assert torch.equal(default.features, minus_one.features)


def test_seed_determines_the_features(demo_model):
    pixels = images(batch=1)
    a, b = demo_model.extract(pixels, **SMALL), demo_model.extract(pixels, **SMALL)
    c = demo_model.extract(pixels, **{**SMALL, "seed": 4})
    assert torch.equal(a.features, b.features) and not torch.equal(a.features, c.features)


def test_summary_names_family_blocks_and_defaults(zero_model):
    text = zero_model.summary()
    assert "Flux" in text and "2 double + 4 single blocks" in text and "layer 3" in text and "ensemble 8" in text


@pytest.mark.parametrize("bad, message", [
    (dict(layer=6), "out of range"),
    (dict(t=1.5), "strictly between 0 and 1"),
    (dict(t=float("nan")), "strictly between 0 and 1"),
    (dict(ensemble=0), "ensemble"),
    (dict(mode="bogus"), "mode must be one of"),
    (dict(discard="9999"), "out of range"),
])
def test_bad_settings_are_rejected_by_name(demo_model, bad, message):
    settings = {**SMALL, **bad}
    with pytest.raises(ValueError, match=message):
        demo_model.extract(images(batch=1), **settings)


def test_a_bad_discard_list_fails_before_any_transformer_pass(demo_model):
    passes = []
    with pytest.raises(ValueError, match="discard channel 64 is out of range"):
        demo_model.extract(images(batch=1), discard=[1, 64], progress=lambda done, total: passes.append(done), **SMALL)
    assert passes == []


# --- conditioning --------------------------------------------------------------------------------------------
def conditioning(batch=1, tokens=5, width=32, pooled=32, **extra):
    generator = torch.Generator().manual_seed(batch)
    return [[torch.randn(batch, tokens, width, generator=generator),
             {"pooled_output": torch.randn(batch, pooled, generator=generator), **extra}]]


def test_conditioning_input_is_used_and_recorded(demo_model):
    pixels = images()
    fixed = demo_model.extract(pixels, **SMALL)
    given = demo_model.extract(pixels, conditioning=conditioning(batch=2, guidance=5.0), **SMALL)
    assert not torch.allclose(fixed.features, given.features)
    assert given.settings["conditioning"] == "CONDITIONING input" and given.settings["guidance"] == 5.0


@pytest.mark.parametrize("cond, message", [
    (conditioning(width=16), r"text embeddings are \[1, 5, 16\].*expects \[B, L, 32\]"),
    (conditioning(pooled=8), r"pooled_output is \[1, 8\].*expects \[B, 32\]"),
    ([[torch.zeros(1, 5, 32), {}]], "pooled_output"),
    (conditioning() + conditioning(), "holds 2 entries"),
    (conditioning(batch=3), "batch 3 but the IMAGE batch holds 2"),
    ("a photo", "must be ComfyUI CONDITIONING"),
])
def test_bad_conditioning_is_rejected_with_the_fix(demo_model, cond, message):
    with pytest.raises((ValueError, TypeError), match=message):
        demo_model.extract(images(), conditioning=cond, **SMALL)


def test_prompt_needs_text_encoders_and_excludes_conditioning(demo_model, zero_model):
    with pytest.raises(ValueError, match="wire a CLIP into Load DiT"):
        zero_model.extract(images(batch=1), prompt="a cat", **SMALL)
    with pytest.raises(ValueError, match="not both"):
        demo_model.extract(images(batch=1), prompt="a cat", conditioning=conditioning(), **SMALL)


# --- images, widgets, preview --------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_grey_rgb_and_rgba_images_become_rgb(nodes, channels):
    image = torch.rand(2, 33, 47, channels)
    pixels = nodes["checks"].image_batch(image)
    assert pixels.shape == (2, 3, 33, 47)
    assert torch.equal(pixels[:, 0], image[..., 0])  # alpha dropped, grey repeated
    if channels == 1:
        assert torch.equal(pixels[:, 1], pixels[:, 0])


@pytest.mark.parametrize("image, message", [
    (torch.rand(2, 3, 8, 8)[..., :2], "1 \\(grey\\), 3 \\(RGB\\) or 4"),
    (torch.rand(4, 16, 16), "MASK"),
    (torch.rand(1, 8, 8, 3) * 255, "must lie in \\[0, 1\\]"),
    (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
    (torch.rand(0, 8, 8, 3), "empty"),
    ("image.png", "IMAGE tensor"),
])
def test_unusable_images_are_rejected(nodes, image, message):
    with pytest.raises((ValueError, TypeError), match=message):
        nodes["checks"].image_batch(image)


def test_odd_sized_images_keep_their_mapping(demo_model, nodes):
    image = torch.rand(1, 101, 37, 4)
    features = demo_model.extract(nodes["checks"].image_batch(image), **SMALL)
    assert features.mapping.image_size == (37, 101)
    assert features.mapping.model_size[0] % 16 == 0 and features.mapping.model_size[1] % 16 == 0


def test_widget_checks(nodes):
    checks = nodes["checks"]
    assert checks.parse_discard(" Auto ") == "auto" and checks.parse_discard("") == "none"
    assert checks.parse_discard("154, 1446") == [154, 1446]
    for bad in ("abc", "1, -2"):
        with pytest.raises(ValueError, match="discard"):
            checks.parse_discard(bad)
    with pytest.raises(ValueError, match="finite"):
        checks.check_float("t", math.nan, 0.0, 1.0)
    with pytest.raises(ValueError, match="mode must be one of ditf"):
        checks.check_choice("mode", "bogus", ["ditf", "adaln"])


def test_preview_is_an_image_batch_at_input_size(demo_model, nodes):
    features = demo_model.extract(images(batch=2, height=45, width=61), **SMALL)
    preview = nodes["model"].preview_image(features)
    assert preview.shape == (2, 45, 61, 3) and preview.dtype == torch.float32
    assert 0.0 <= float(preview.min()) and float(preview.max()) <= 1.0


# --- import rules ----------------------------------------------------------------------------------------------
def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_comfy_host_touches_model_patcher_and_model_management():
    runtime = ("comfy.model_management", "comfy.model_patcher", "comfy.utils", "comfy.sd", "comfy.samplers")
    touching = sorted(
        str(path.relative_to(NODES)) for path in NODES.rglob("*.py")
        if any(name.startswith(runtime) or name == "comfy" for name in imported_modules(path))
    )
    assert touching == ["comfy_host.py"]


def test_family_adapters_only_describe_model_classes():
    """nodes/families may read comfy.ldm / comfy.model_base classes, nothing of ComfyUI's runtime."""
    for path in (NODES / "families").glob("*.py"):
        comfy = {m for m in imported_modules(path) if m.split(".")[0] == "comfy"}
        assert all(m.startswith(("comfy.ldm.", "comfy.model_base")) for m in comfy), (path.name, comfy)


def test_host_agnostic_modules_never_import_comfyui():
    for name in ("model.py", "checks.py"):
        assert not {m for m in imported_modules(NODES / name) if m.split(".")[0] in ("comfy", "comfy_api", "folder_paths")}


def test_nodes_import_the_engine_relatively():
    """A git clone into custom_nodes does not put ditf_core on sys.path: the pack must use its own copy."""
    absolute = sorted(path.name for path in NODES.glob("*.py") if any(m.split(".")[0] == "ditf_core" for m in imported_modules(path)))
    assert absolute == []
