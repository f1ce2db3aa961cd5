"""Tiny random-weight models in BOTH hosts' formats, and the checkpoint files the live-server tests load.

Import only after ComfyUI is importable (the ``comfy`` fixture). Nothing is downloaded: every weight is drawn
here from a seed. ComfyUI 0.3.64 constraints these models respect:
* its MMDiT has head dim 64 and as many joint blocks as heads (hidden 128 = 2 heads, 2 blocks);
* its Flux detection hard-codes full width, so tiny Flux is built in-process from ``comfy.supported_models.Flux``;
* its KL VAE is always full size (ch 128, mult 1-2-4-4), its TAESD layout is small.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

# Latent normalisation (scale, shift) of each family, as in comfy.latent_formats and the diffusers VAE configs.
LATENT_FORMATS = {"flux": (0.3611, 0.1159), "sd3": (1.5305, 0.0609)}

SD35_CONFIG = dict(
    sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=64,
    num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=128, pooled_projection_dim=32,
    pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm",
)
# For the live server: real text widths (CLIP-L through ComfyUI's SD3 text encoder gives [B, 77, 4096] and a
# 2048-wide pooled vector) and 64x64 position embeddings (1024 px).
SD35_SERVER_CONFIG = dict(SD35_CONFIG, joint_attention_dim=4096, pooled_projection_dim=2048, pos_embed_max_size=64)


def perturb(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """diffusers zero-initialises some layers (AdaLN, output projections): nudge every weight so all paths count."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return module


def tiny_sd35(seed: int = 0, **overrides) -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return perturb(SD3Transformer2DModel(**{**SD35_CONFIG, **overrides}).eval(), seed)


def to_comfy_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A diffusers Flux / SD3 state dict in ComfyUI's (BFL / Stability) key layout."""
    import comfy.model_detection

    state = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    return {k: v.contiguous() for k, v in comfy.model_detection.convert_diffusers_mmdit(state, "").items()}


def flux_unet_config(transformer: torch.nn.Module) -> dict:
    """ComfyUI's Flux unet_config for a diffusers FluxTransformer2DModel."""
    c = transformer.config
    return {
        "image_model": "flux", "in_channels": c.in_channels // 4, "out_channels": c.in_channels // 4,
        "vec_in_dim": c.pooled_projection_dim, "context_in_dim": c.joint_attention_dim,
        "hidden_size": c.num_attention_heads * c.attention_head_dim, "mlp_ratio": 4.0,
        "num_heads": c.num_attention_heads, "depth": c.num_layers, "depth_single_blocks": c.num_single_layers,
        "axes_dim": list(c.axes_dims_rope), "theta": 10000, "patch_size": 2, "qkv_bias": True,
        "guidance_embed": bool(c.guidance_embeds),
    }


def comfy_flux_from_state_dict(state: dict, unet_config: dict):
    """A ComfyUI MODEL (ModelPatcher over model_base.Flux) from ComfyUI-layout weights, in float32."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({}, "")
    base.load_model_weights(dict(state), "")
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def comfy_flux(transformer: torch.nn.Module):
    return comfy_flux_from_state_dict(to_comfy_state_dict(transformer), flux_unet_config(transformer))


def comfy_sd3(transformer: torch.nn.Module):
    """What UNETLoader does with the converted weights: ComfyUI detects the MMDiT config from the tensors."""
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(to_comfy_state_dict(transformer), model_options={})


def kl_vae_pair(family: str, seed: int = 0):
    """(diffusers AutoencoderKL, ComfyUI VAE) with the same random full-size weights and a posterior std of
    ~exp(-30): the diffusers host's E posterior samples then equal ComfyUI's posterior mode."""
    import comfy.sd
    from diffusers import AutoencoderKL

    scale, shift = LATENT_FORMATS[family]
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=scale, shift_factor=shift,
    ).eval()
    with torch.no_grad():
        conv_out = vae.encoder.conv_out  # channels 16..31 are the log-variance
        conv_out.weight[16:] = 0.0
        conv_out.bias[16:] = -60.0
    return vae, comfy.sd.VAE(sd={k: v.detach().clone() for k, v in vae.state_dict().items()})


def taesd16_state_dict(family: str = "sd3", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random 16-channel TAESD (the small VAE layout VAELoader accepts), with the family's latent stats."""
    import comfy.taesd.taesd as taesd

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in taesd.TAESD(latent_channels=16).state_dict().items():
        if key in ("vae_scale", "vae_shift"):
            continue
        fan_in = max(1, value[0].numel())
        state[key] = torch.randn(value.shape, generator=generator) * fan_in**-0.5 if key.endswith(".weight") else torch.zeros(value.shape)
    scale, shift = LATENT_FORMATS[family]
    state["vae_scale"], state["vae_shift"] = torch.tensor(scale), torch.tensor(shift)
    return state


def clip_l_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random CLIP-L text encoder (HF layout, fp16, 123 M parameters: ComfyUI builds it at full size)."""
    generator = torch.Generator().manual_seed(seed)
    width, mlp, layers = 768, 3072, 12

    def rand(*shape):
        return (torch.randn(shape, generator=generator) * 0.02).half()

    state = {
        "text_model.embeddings.token_embedding.weight": rand(49408, width),
        "text_model.embeddings.position_embedding.weight": rand(77, width),
        "text_model.final_layer_norm.weight": torch.ones(width).half(),
        "text_model.final_layer_norm.bias": torch.zeros(width).half(),
        "text_projection.weight": rand(width, width),
    }
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[p + f"self_attn.{name}.weight"] = rand(width, width)
            state[p + f"self_attn.{name}.bias"] = rand(width)
        for norm in ("layer_norm1", "layer_norm2"):
            state[p + f"{norm}.weight"] = torch.ones(width).half()
            state[p + f"{norm}.bias"] = torch.zeros(width).half()
        state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"] = rand(mlp, width), rand(mlp)
        state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"] = rand(width, mlp), rand(width)
    return state


def write_server_models(models_dir, flux_transformer) -> dict[str, str]:
    """Write every checkpoint the live-server tests use under ``models_dir``; returns {role: file or folder name}.

    flux_transformer: a tiny diffusers Flux (ComfyUI cannot load it through UNETLoader: see the module docstring);
    it goes to models/diffusion_models with its unet_config in the metadata, for the test-only loader node.
    """
    from ditf_core.demo_model import build_tiny_vae

    dirs = {name: models_dir / name for name in ("diffusion_models", "vae", "text_encoders", "checkpoints", "diffusers")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    sd35 = to_comfy_state_dict(tiny_sd35(seed=1, **_server_overrides()))
    taesd = taesd16_state_dict("sd3")
    clip_l = clip_l_state_dict()
    names = {
        "sd35": "ditf_tiny_sd35.safetensors",
        "vae": "ditf_tiny_taesd16.safetensors",
        "clip_l": "ditf_random_clip_l.safetensors",
        "checkpoint": "ditf_tiny_sd35_all_in_one.safetensors",
        "flux": "ditf_test_flux.safetensors",
        "diffusers": "ditf_tiny_flux_diffusers",
    }
    save_file(sd35, str(dirs["diffusion_models"] / names["sd35"]))
    save_file(taesd, str(dirs["vae"] / names["vae"]))
    save_file(clip_l, str(dirs["text_encoders"] / names["clip_l"]))
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in sd35.items()}
    checkpoint |= {f"first_stage_model.{k}": v for k, v in taesd.items()}
    checkpoint |= {f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_l.items()}
    save_file(checkpoint, str(dirs["checkpoints"] / names["checkpoint"]))
    save_file(to_comfy_state_dict(flux_transformer), str(dirs["diffusion_models"] / names["flux"]),
              metadata={"ditf_unet_config": json.dumps(flux_unet_config(flux_transformer))})
    write_diffusers_folder(dirs["diffusers"] / names["diffusers"], flux_transformer, build_tiny_vae(0))
    return names


def write_diffusers_folder(folder, transformer, vae) -> None:
    """A minimal diffusers FluxPipeline folder without text encoders (what Load DiT from diffusers reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(str(folder / "transformer"), safe_serialization=True)
    vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", type(transformer).__name__],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index))


def _server_overrides() -> dict:
    return {k: v for k, v in SD35_SERVER_CONFIG.items() if SD35_CONFIG.get(k) != v}
