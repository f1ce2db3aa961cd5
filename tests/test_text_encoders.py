"""Diffusers folders with text encoders: prompts go through the pipeline's own encoders, once per prompt.

The encoders are tiny random CLIP / T5 models with a word-level tokenizer, written as a real diffusers folder.
"""

from __future__ import annotations

import pytest
import torch

from ditf_core.conditioning import DiffusersPromptEncoder, ZeroPromptEncoder
from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae
from ditf_core import load_pipeline
from ditf_core.samples import sample_scene

transformers = pytest.importorskip("transformers")
SMALL = dict(resolution=64, ensemble=1, seed=0)
WORDS = ["<pad>", "<unk>", "</s>", "<|startoftext|>", "<|endoftext|>", "a", "cat", "dog", "photo", "of"]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=77
    )


def _clip(hidden: int, projection: bool):
    config = transformers.CLIPTextConfig(
        vocab_size=len(WORDS), hidden_size=hidden, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=hidden, pad_token_id=0, bos_token_id=3, eos_token_id=4,
    )
    return (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config)


def _t5(width: int):
    config = transformers.T5Config(vocab_size=len(WORDS), d_model=width, d_ff=37, d_kv=8, num_layers=1, num_heads=4,
                                   pad_token_id=0, eos_token_id=2)
    return transformers.T5EncoderModel(config)


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("flux") / "tiny-flux"
    FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=build_tiny_vae(), transformer=build_tiny_flux(),
        text_encoder=_clip(32, projection=False), tokenizer=_tokenizer(), text_encoder_2=_t5(32), tokenizer_2=_tokenizer(),
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sd3") / "tiny-sd35"
    StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=build_tiny_vae(), transformer=build_tiny_sd3(sd35=True),
        text_encoder=_clip(16, projection=True), tokenizer=_tokenizer(),
        text_encoder_2=_clip(16, projection=True), tokenizer_2=_tokenizer(),
        text_encoder_3=_t5(32), tokenizer_3=_tokenizer(),
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("folder_fixture", ["flux_folder", "sd3_folder"])
def test_prompts_go_through_the_folders_text_encoders(request, folder_fixture):
    pipeline = load_pipeline(request.getfixturevalue(folder_fixture), device="cpu")
    assert isinstance(pipeline.prompt_encoder, DiffusersPromptEncoder)
    text, pooled = pipeline.prompt_encoder("a photo of a cat")
    config = pipeline.transformer.config
    assert text.shape[0] == 1 and text.shape[-1] == config.joint_attention_dim
    assert pooled.shape == (1, config.pooled_projection_dim)
    image = sample_scene(size=(64, 64))
    extracted = pipeline.extract(image, prompt="a photo of a cat", **SMALL)
    assert extracted.settings["prompt"] == "a photo of a cat"  # recorded because the encoders really used it
    cat = extracted.features
    dog = pipeline.extract(image, prompt="a photo of a dog", **SMALL).features
    again = pipeline.extract(image, prompt="a photo of a cat", **SMALL).features
    assert not torch.allclose(cat, dog)  # the prompt reaches the model
    assert torch.equal(cat, again)
    assert pipeline.prompt_encoder.encode_calls == 2  # each prompt encoded once, then cached


def test_text_encoders_can_be_skipped(flux_folder):
    pipeline = load_pipeline(flux_folder, device="cpu", text_encoders=False)
    assert isinstance(pipeline.prompt_encoder, ZeroPromptEncoder)
