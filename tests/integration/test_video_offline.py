"""The video nodes' host-agnostic helpers (nodes/video_source.py) without ComfyUI: the DITF_MODEL feature source on
the diffusers host (video defaults, one discard set per clip, the same features as the pipeline), IMAGE batches
as clips, keyframes."""

from __future__ import annotations

import importlib

import pytest
import torch

from test_offline import NODES, imported_modules


@pytest.fixture(scope="module")
def video(offline_pack):
    return importlib.import_module(f"{offline_pack.__name__}.nodes.video_source")


@pytest.fixture(scope="module")
def demo_model(offline_pack):
    core = importlib.import_module(f"{offline_pack.__name__}.ditf_core")
    model = importlib.import_module(f"{offline_pack.__name__}.nodes.model")
    return model.DiTFModel(model.DiffusersHost(core.DiTFPipeline.demo())), core


def test_the_source_uses_the_video_defaults_and_matches_the_pipeline(video, demo_model):
    ditf_model, core = demo_model
    source, chosen = video.model_source(ditf_model, layer=-1, t=0.0, ensemble=0, resolution=0, seed=3, discard="auto")
    assert (chosen.layer, chosen.t, chosen.ensemble, chosen.resolution, chosen.prompt) == (3, 0.09, 1, 960, "")
    source, _ = video.model_source(ditf_model, layer=-1, t=0.0, ensemble=0, resolution=64, seed=3, discard="auto")
    frames = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = source(frames[:1]), source(frames[1:])
        direct = ditf_model.host.pipeline.extract(frames[1:], layer=3, t=0.09, ensemble=1, resolution=64, seed=3,
                                                  discard=list(first.discarded))
    planted = importlib.import_module(f"{core.__name__}.demo_model").DEMO_MASSIVE_CHANNELS
    assert sorted(first.discarded) == sorted(planted) and second.discarded == first.discarded  # kept for the clip
    torch.testing.assert_close(second.features, direct.features, rtol=0, atol=1e-5)


def test_image_batches_become_clips_frame_by_frame(video):
    grey = video.ComfyFrames(torch.full((2, 5, 7, 1), 0.5))
    assert len(grey) == 2 and grey.size == (7, 5) and grey[1].shape == (3, 5, 7) and grey[1].eq(0.5).all()
    rgba = video.ComfyFrames(torch.rand(3, 5, 7, 4))
    assert rgba[0].shape == (3, 5, 7) and len(rgba[0:2]) == 2
    broken = video.ComfyFrames(torch.cat([torch.rand(1, 5, 7, 3), torch.full((1, 5, 7, 3), 2.0)]))
    assert broken[0].shape == (3, 5, 7)
    with pytest.raises(ValueError, match=r"frames\[1\] holds values in \[2, 2\]"):
        broken[1]
    with pytest.raises(ValueError, match="frames must be an IMAGE batch"):
        video.ComfyFrames(torch.rand(5, 7, 3))


def test_keyframes_pair_with_the_mask_batch(video):
    assert video.parse_keyframes("0") == [0] and video.parse_keyframes(" 0, 40;80 ") == [0, 40, 80]
    for text in ("", "5", "0, 40, 20", "0, 0"):
        with pytest.raises(ValueError, match="keyframes must start with 0 and go up"):
            video.parse_keyframes(text)
    masks = torch.zeros(2, 6, 8)
    masks[:, 1:3, 2:5] = 0.9
    labels = video.keyframe_labels(masks, [0, 4], 5, (8, 6))
    assert sorted(labels) == [0, 4] and labels[4].sum() == 6 and labels[4].dtype == torch.long


def test_video_source_never_imports_comfyui():
    imported = imported_modules(NODES / "video_source.py")
    assert not {m for m in imported if m.split(".")[0] in ("comfy", "comfy_api", "folder_paths", "server", "ditf_core")}
