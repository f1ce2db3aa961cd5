"""Bounded work, in-process on ComfyUI's own classes (issue 10, section 3): Cancel inside a capture pass on both hosts,
the memory plan of a capture on a DITF_MODEL, the diffusers-folder listing with link loops and deep trees, and error
messages that name the exact input."""

from __future__ import annotations

import importlib
import os
import threading

import pytest
import torch
from ditf_core.demo_model import build_demo_dit

import tiny_models

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def mods(pack):
    names = ("comfy_host", "model", "nodes_load", "nodes_match", "nodes_warp", "nodes_inspect", "checks")
    found = {name: importlib.import_module(f"{pack.__name__}.nodes.{name}") for name in names}
    found["core"] = importlib.import_module(f"{pack.__name__}.ditf_core")
    return found


@pytest.fixture(scope="module")
def taesd(comfy):
    import comfy.sd

    return comfy.sd.VAE(sd=tiny_models.taesd16_state_dict("flux"))


def pixels(batch=1, height=48, width=64):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


# --- Cancel inside the pass -------------------------------------------------------------------------------------------
def test_cancel_inside_a_comfyui_pass_stops_at_the_next_block(mods, taesd):
    """Cancel is pressed while block 1 runs (a patch on the user's model does it); block 2's check must stop the
    pass, so block 3 never runs although the pass goes to block 5. The user's MODEL keeps its own patches only."""
    import comfy.model_management

    flux = tiny_models.comfy_flux(build_demo_dit(0))
    ran, pressing = [], [True]

    def press_cancel(args, extra):
        if pressing:
            comfy.model_management.interrupt_current_processing(True)
        return extra["original_block"](args)

    def record(args, extra):
        ran.append(3)
        return extra["original_block"](args)

    users = flux.clone()  # a MODEL with replace patches of its own, as other nodes may leave
    users.set_model_patch_replace(press_cancel, "dit", "double_block", 1)
    users.set_model_patch_replace(record, "dit", "single_block", 1)  # global block 3
    options = repr(users.model_options)
    ditf_model = mods["model"].DiTFModel(mods["comfy_host"].ComfyHost.create(users, taesd))
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
            ditf_model.extract(pixels(), layer=5, resolution=64, ensemble=2)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert ran == []
    assert repr(users.model_options) == options  # the capture patched a clone only
    pressing.clear()
    with torch.inference_mode():  # without Cancel, the user's patches still run inside the capture pass
        ditf_model.extract(pixels(), layer=5, resolution=64, ensemble=1)
    assert ran == [3]


def test_cancel_inside_a_diffusers_pass_stops_at_the_next_block(mods):
    import comfy.model_management

    pipeline = mods["core"].DiTFPipeline.demo()
    blocks = pipeline.family.blocks(pipeline.transformer)
    ran = []
    watchers = [block.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, block in enumerate(blocks)]
    watchers.append(blocks[1].register_forward_hook(  # Cancel pressed while block 1 runs
        lambda *_: comfy.model_management.interrupt_current_processing(True)))
    host = mods["model"].DiffusersHost(pipeline, interrupt=mods["comfy_host"].check_interrupted)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            mods["model"].DiTFModel(host).extract(pixels(), layer=5, resolution=64, ensemble=2)
    finally:
        comfy.model_management.interrupt_current_processing(False)
        for watcher in watchers:
            watcher.remove()
    assert ran == [0, 1]  # block 2's check raised
    assert all(not block._forward_pre_hooks and not block._forward_hooks for block in blocks)


# --- memory -----------------------------------------------------------------------------------------------------------
def test_a_capture_that_cannot_fit_is_refused_before_any_work_and_one_that_can_is_split(mods, taesd):
    import comfy.model_management

    recipe = mods["core"].recipe
    flux = tiny_models.comfy_flux(build_demo_dit(0))
    encodes = []

    class CountingVAE:  # the ComfyUI VAE, counting its encodes
        def __getattr__(self, name):
            return getattr(taesd, name)

        def encode(self, image):
            encodes.append(image.shape[0])
            return taesd.encode(image)

    ditf_model = mods["model"].DiTFModel(mods["comfy_host"].ComfyHost.create(flux, CountingVAE()))
    images = pixels(batch=3)
    tokens = 4 * 3
    sweep = recipe.kept_bytes(3, tokens, 64, 6)
    with pytest.raises(ValueError, match=r"this capture needs about 129.0 kB \(3 image\(s\) x 12 tokens x 64 channels "
                                         r"x 6 block\(s\) kept x 4 bytes .* is free in RAM; .*sweep off"):
        ditf_model.capture(images, layers=range(6), resolution=64, ensemble=1, available_memory=sweep)
    assert encodes == []
    steps = []
    one_image = recipe.kept_bytes(3, tokens, 64, 1) + tokens * 64 * recipe.PASS_BYTES_PER_TOKEN_CHANNEL
    with torch.inference_mode():
        split = ditf_model.extract(images, resolution=64, ensemble=2, available_memory=one_image,
                                   progress=lambda done, total: steps.append((done, total)))
        whole = ditf_model.extract(images, resolution=64, ensemble=2)
    assert steps[-1] == (6, 6)  # 3 images x 2 draws, one image a pass
    torch.testing.assert_close(split.features, whole.features, atol=1e-4, rtol=1e-4)
    free = mods["comfy_host"].free_memory()
    assert comfy.model_management.get_torch_device().type == "cpu" and free > 0
    import psutil

    assert abs(free - psutil.virtual_memory().available) < 2e9  # on the CPU: available RAM, as ComfyUI counts it


# --- the diffusers-folder listing -------------------------------------------------------------------------------------
def _pipeline(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "transformer").mkdir()
    (folder / "transformer" / "model_index.json").write_text("{}")  # inside a pipeline: never listed


def _listing(mods, root, **bounds):
    """pipeline_folders(root) in a thread: a walk that never ends fails the test instead of hanging it."""
    found = []
    walker = threading.Thread(target=lambda: found.append(mods["nodes_load"].pipeline_folders(str(root), **bounds)),
                              daemon=True)
    walker.start()
    walker.join(timeout=60)
    assert not walker.is_alive(), "the listing did not finish"
    return sorted(os.path.relpath(path, root) for path in found[0])


def test_the_listing_survives_link_loops_and_bounds_depth(mods, tmp_path, monkeypatch):
    import folder_paths

    root = tmp_path / "diffusers"
    _pipeline(root / "flux-dev")
    _pipeline(root / "org" / "models--org--sd35" / "snapshots" / "abc")  # the HF cache layout: 4 levels down
    (root / "loop").symlink_to(".", target_is_directory=True)  # a -> .
    (root / "org" / "up").symlink_to("..", target_is_directory=True)  # a loop one level down
    (root / "alias").symlink_to(root / "flux-dev", target_is_directory=True)  # the same folder by another name
    deep = root / "deep"
    for level in range(40):
        deep = deep / f"d{level}"
    _pipeline(deep)
    (root / "broken").symlink_to(tmp_path / "nowhere")
    listed = _listing(mods, root)
    assert listed == ["alias", "org/models--org--sd35/snapshots/abc"]  # flux-dev is alias, met first (sorted)
    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda name: [str(root)] if name == "diffusers" else [])
    assert mods["nodes_load"].diffusers_folders() == listed
    assert mods["nodes_load"].resolve_diffusers_folder("alias") == str(root / "alias")
    with pytest.raises(ValueError, match="not a diffusers folder under models/diffusers"):
        mods["nodes_load"].resolve_diffusers_folder("loop/flux-dev")
    shallow = _listing(mods, root, max_depth=2)
    assert shallow == ["alias"]


def test_the_listing_stops_after_its_folder_budget(mods, tmp_path, caplog):
    root = tmp_path / "wide"
    for index in range(30):
        (root / f"f{index:02d}").mkdir(parents=True)
    _pipeline(root / "zz")
    with caplog.at_level("WARNING"):
        assert _listing(mods, root, max_folders=10) == []
    assert "stopped listing models/diffusers after 10 folders" in caplog.text
    assert _listing(mods, root) == ["zz"]


# --- messages name the exact input ------------------------------------------------------------------------------------
def test_messages_name_the_exact_image_input(mods):
    match, warp = mods["nodes_match"].CorrespondenceMatch, mods["nodes_warp"].WarpAppearanceTransfer
    good, as_mask = torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8)
    common = dict(points="[[1, 1]]", mode="fast", max_points=8, cycle_tolerance=2.0)
    for names, images in ((("source_image",), (as_mask, good)), (("target_image",), (good, as_mask))):
        with pytest.raises(ValueError, match=rf"^{names[0]} must be an IMAGE \[B, H, W, C\]"):
            match.execute(None, None, *images, **common)
    with pytest.raises(ValueError, match=r"^target_image values must lie in \[0, 1\]"):
        warp.execute(good, None, "appearance", 1.0, 0.5, target_image=good * 3)
    with pytest.raises(ValueError, match=r"^image must be an IMAGE"):
        warp.execute(as_mask, None, "flow", 1.0, 0.5)
