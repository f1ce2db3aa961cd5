"""The image-level pipeline: resize mapping, VAE/text encodes, seeding, modes, dtypes and input handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import PLANTED
from PIL import Image

from ditf_core import DiTFeatures, DiTFPipeline, PixelMapping, extract_from_latents
from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae
from ditf_core.mapping import plan_resize
from ditf_core.samples import sample_scene

SMALL = dict(resolution=128, ensemble=2)


@pytest.fixture(scope="module")
def demo():
    return DiTFPipeline.demo()


@pytest.fixture(scope="module")
def scene():
    return sample_scene(size=(150, 100))


def test_extract_returns_features_with_mapping_and_settings(demo, scene):
    features = demo.extract(scene, **SMALL)
    assert isinstance(features, DiTFeatures)
    assert features.features.shape == (1, 64, 5, 8)  # 128x80 model input -> 8x5 cells of 16 px
    assert features.mapping == PixelMapping((150, 100), (128, 80), (8, 5))
    assert sorted(features.discarded) == sorted(PLANTED)  # discard="auto" found the planted channels
    s = features.settings
    assert (s["family"], s["layer"], s["t"], s["ensemble"], s["mode"]) == ("flux", 3, 0.26, 2, "ditf")
    assert s["model"]["family"] == "flux" and len(s["model"]["config_sha256"]) == 16


def test_pipeline_is_exactly_the_recipe_on_its_latents(demo, scene):
    """extract() = extract_from_latents() on the E posterior samples and noise drawn from the seed."""
    features = demo.extract(scene, seed=11, discard=list(PLANTED), **SMALL)
    generator = torch.Generator("cpu").manual_seed(11)
    pixels = torch.from_numpy(__import__("numpy").asarray(scene, dtype="float32") / 255).permute(2, 0, 1)[None]
    latents = demo.encode(pixels, features.mapping, 2, generator)
    noise = torch.randn(latents.shape, generator=generator)
    text, pooled = demo.prompt_encoder("")
    expected = extract_from_latents(demo.transformer, latents, t=0.26, layer=3, text_embeds=text, pooled=pooled,
                                    noise=noise, discard=PLANTED)
    assert torch.equal(features.features, expected)


def test_one_vae_and_one_text_encode_per_image_and_prompt(scene):
    pipeline = DiTFPipeline.demo()
    encodes = []
    original = pipeline.vae.encode
    pipeline.vae.encode = lambda x: encodes.append(x.shape[0]) or original(x)
    pipeline.extract(scene, ensemble=8, resolution=128)
    pipeline.extract([scene, scene], ensemble=8, resolution=128)
    assert encodes == [1, 2]  # one encode per call, covering each image once, whatever E
    assert pipeline.prompt_encoder.encode_calls == 1  # zero conditioning: one encode, then cached


def test_same_seed_same_features_other_seed_different(demo, scene):
    a = demo.extract(scene, seed=3, **SMALL).features
    b = demo.extract(scene, seed=3, **SMALL).features
    c = demo.extract(scene, seed=4, **SMALL).features
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_modes(demo, scene):
    ditf = demo.extract(scene, mode="ditf", **SMALL)
    adaln = demo.extract(scene, mode="adaln", **SMALL)
    original = demo.extract(scene, mode="original", **SMALL)
    explicit = demo.extract(scene, mode="ditf", discard="13, 41", **SMALL)
    none = demo.extract(scene, mode="ditf", discard="none", **SMALL)
    assert adaln.discarded == original.discarded == none.discarded == ()
    assert torch.allclose(explicit.features, ditf.features)
    assert torch.allclose(none.features, adaln.features)
    assert original.features.abs().max() > 500  # raw state keeps the massive values
    assert not torch.allclose(ditf.features, adaln.features)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_any_pil_mode_is_accepted(demo, mode):
    image = sample_scene(size=(97, 61)).convert(mode)
    features = demo.extract(image, **SMALL)
    assert torch.isfinite(features.features).all()
    assert features.mapping.image_size == (97, 61)


def test_batch_of_images_and_tensor_input(demo, scene):
    pixels = torch.from_numpy(__import__("numpy").asarray(scene, dtype="float32") / 255).permute(2, 0, 1)
    single = demo.extract(scene, **SMALL).features
    batch = demo.extract(torch.stack([pixels, pixels.flip(-1)]), **SMALL).features
    assert batch.shape[0] == 2
    assert (batch[:1] - single).abs().max() < 1e-4


@pytest.mark.parametrize(
    "images, error",
    [
        ([], "no images given"),
        ([Image.new("RGB", (32, 32)), Image.new("RGB", (48, 32))], "must share a size"),
        (torch.full((1, 3, 32, 32), 2.0), r"must lie in \[0, 1\]"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(1, 5, 32, 32), "C = 1, 3 or 4"),
        ("image.png", "must be a PIL image"),
    ],
)
def test_bad_images_are_explained(demo, images, error):
    with pytest.raises((ValueError, TypeError), match=error):
        demo.extract(images, **SMALL)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(mode="fancy"), "mode must be one of ditf, adaln, original"),
        (dict(ensemble=0), "ensemble must be a positive integer"),
        (dict(resolution=8), "resolution must be an integer of at least 16"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(discard="13, x"), "comma-separated channel numbers"),
        (dict(discard=[64]), "out of range"),
        (dict(layer=6), r"use 0\.\.5"),
        (dict(t=1.0), "strictly between 0 and 1"),
    ],
)
def test_bad_settings_are_explained(demo, scene, kwargs, error):
    with pytest.raises(ValueError, match=error):
        demo.extract(scene, **{**SMALL, **kwargs})


def test_interrupt_leaves_no_hook(demo, scene):
    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.extract(scene, progress=interrupt, micro_batch=1, **SMALL)
    assert all(not m._forward_pre_hooks for m in demo.transformer.modules())


def test_bfloat16_transformer_tracks_float32(scene):
    fp32 = DiTFPipeline(build_tiny_flux(seed=1), build_tiny_vae(), dtype=torch.float32).extract(scene, **SMALL)
    bf16 = DiTFPipeline(build_tiny_flux(seed=1), build_tiny_vae(), dtype=torch.bfloat16).extract(scene, **SMALL)
    assert bf16.features.dtype == torch.float32  # LN and modulation in float32 whatever the model dtype
    similarity = F.cosine_similarity(fp32.features.flatten(2), bf16.features.flatten(2), dim=1)
    assert similarity.min() > 0.98


def test_sd35_pipeline(scene):
    pipeline = DiTFPipeline(build_tiny_sd3(sd35=True), build_tiny_vae())
    features = pipeline.extract(scene, **SMALL)
    assert features.features.shape == (1, 64, 5, 8)
    assert features.settings["family"] == "sd3" and features.settings["layer"] == 2


def test_bad_vae_is_explained():
    with pytest.raises(TypeError, match="vae must be a diffusers AutoencoderKL"):
        DiTFPipeline(build_tiny_flux(), torch.nn.Linear(2, 2))


# --- the pixel <-> feature mapping ---------------------------------------------------------------------------
def test_plan_resize_keeps_aspect_and_rounds_to_the_stride():
    assert plan_resize(1000, 500, 640, 16) == (640, 320)
    assert plan_resize(333, 500, 640, 16) == (432, 640)
    assert plan_resize(4000, 10, 640, 16) == (640, 16)  # never below one cell


def test_mapping_round_trip_and_centres():
    mapping = PixelMapping.for_image(300, 200, 128, 16)
    xy = torch.tensor([[0.0, 0.0], [299.0, 199.0], [150.3, 77.7]])
    assert torch.allclose(mapping.to_pixel(mapping.to_feature(xy)), xy, atol=1e-4)
    # the centre of feature cell 0 sits at the centre of the first cell-sized block of pixels
    assert torch.allclose(mapping.to_pixel(torch.zeros(2)), torch.tensor(mapping.cell_size) / 2 - 0.5)


def test_mapping_agrees_with_bilinear_upsampling():
    """Reading an upsampled map at pixel (x, y) = sampling the map at to_feature(x, y)."""
    mapping = PixelMapping((37, 23), (32, 16), (8, 4))
    grid = torch.randn(1, 3, 4, 8)
    upsampled = F.interpolate(grid, size=(23, 37), mode="bilinear", align_corners=False)
    xy = torch.tensor([[0.0, 0.0], [36.0, 22.0], [10.0, 5.0], [20.0, 17.0]])
    uv = mapping.to_feature(xy)
    normalised = (uv + 0.5) / torch.tensor([8.0, 4.0]) * 2 - 1
    sampled = F.grid_sample(grid, normalised[None, None], mode="bilinear", align_corners=False, padding_mode="border")
    expected = torch.stack([upsampled[0, :, int(y), int(x)] for x, y in xy.tolist()], dim=1)
    assert torch.allclose(sampled[0, :, 0], expected, atol=1e-5)
