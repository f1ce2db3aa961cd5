"""The same tiny random weights in BOTH hosts' formats for the families beyond Flux.1 / SD3, converted with the
converters the libraries ship (never by hand). Import only after ComfyUI is importable (the ``comfy`` fixture).

Direction per family:
* ComfyUI layout -> diffusers with diffusers' single-file converters (``diffusers.loaders.single_file_utils``):
  Wan (``convert_wan_transformer_to_diffusers``), HiDream (``convert_hidream_transformer_to_diffusers``: the same
  layout); Qwen-Image needs none (ComfyUI loads the diffusers layout as it is);
* diffusers layout -> ComfyUI with ComfyUI's own ``comfy.model_detection.convert_diffusers_mmdit``: AuraFlow,
  PixArt (its PixArt map assumes PixArt's width, 1152: the tiny PixArt is 1152 wide, 2 blocks);
* Chroma and Lumina2 with diffusers' converters too, but those only work at the released widths (Chroma's hard-codes
  3072, Lumina2's 2304 / 768 projections): their pairs are built at that width with one block per stream
  (``CONVERTER_WIDTH``); their other tests use the tiny ComfyUI models.

ComfyUI models are built from ``comfy.supported_models`` with an explicit unet_config (its detection hard-codes
full widths for most families) and ComfyUI-layout weights drawn here from a seed.
"""

from __future__ import annotations

import torch

# family -> (comfy.supported_models class, unet_config), mirroring ditf_core.demo_model.TINY_FAMILIES.
COMFY_CONFIGS = {
    "qwen_image": ("QwenImage", dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                     num_layers=4, attention_head_dim=16, num_attention_heads=4,
                                     joint_attention_dim=32, axes_dims_rope=(4, 6, 6))),
    "wan": ("WAN21_T2V", dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=64,
                              ffn_dim=128, freq_dim=32, text_dim=32, out_dim=16, num_heads=4, num_layers=4)),
    "hidream": ("HiDream", dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                num_single_layers=3, attention_head_dim=16, num_attention_heads=4,
                                caption_channels=[32, 24], text_emb_dim=32, num_routed_experts=2,
                                num_activated_experts=1, axes_dims_rope=(4, 6, 6), max_resolution=(32, 32),
                                llama_layers=[0, 1, 2, 3, 2])),
    "auraflow": ("AuraFlow", dict(in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=5, n_double_layers=2,
                                  n_heads=4, global_conddim=64, cond_seq_dim=32, max_seq=1024)),
    "pixart": ("PixArtSigma", dict(image_model="pixart_sigma", input_size=32, patch_size=2, in_channels=4,
                                   hidden_size=1152, depth=2, num_heads=16, caption_channels=32, pe_interpolation=1,
                                   micro_condition=False, model_max_length=120)),
    "chroma": ("Chroma", dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64,
                              mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=3, axes_dim=[4, 6, 6],
                              theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32,
                              n_layers=2)),
    "lumina2": ("Lumina2", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, n_layers=4,
                                n_refiner_layers=1, n_heads=4, n_kv_heads=2, multiple_of=16, qk_norm=True,
                                cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[300, 64, 64])),
}
# Families whose converter only works at the released width: (ComfyUI overrides, diffusers overrides) for a model
# of that width with one block per stream (Chroma: 3072 wide, 340 M parameters; Lumina2: 2304, 257 M).
CONVERTER_WIDTH = {
    "chroma": (dict(hidden_size=3072, num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56],
                    out_dim=3072, n_layers=1),
               dict(num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=24,
                    axes_dims_rope=(16, 56, 56), approximator_layers=1)),
    "lumina2": (dict(dim=2304, n_layers=1, n_heads=24, n_kv_heads=8, multiple_of=256, axes_dims=[32, 32, 32]),
                dict(hidden_size=2304, num_layers=1, num_attention_heads=24, num_kv_heads=8, multiple_of=256,
                     axes_dim_rope=(32, 32, 32))),
}
WIDE_DIFFUSERS = {  # the diffusers twin of a ComfyUI config that differs from ditf_core's tiny one
    "pixart": dict(sample_size=64, num_layers=2, attention_head_dim=72, num_attention_heads=16,
                   cross_attention_dim=1152),
}
COMFY_TO_DIFFUSERS = ("qwen_image", "wan", "hidream", "chroma", "lumina2")


def comfy_model(name: str, seed: int = 0):
    """A tiny ComfyUI MODEL of family ``name`` with seeded random weights (no diffusers twin)."""
    base = comfy_base(name)
    load_exactly(base.diffusion_model, comfy_layout_weights(base.diffusion_model, seed))
    return patcher(base)


def comfy_and_diffusers(name: str, seed: int = 0):
    """(ComfyUI MODEL, diffusers transformer) of family ``name`` with the same weights, float32 (at the converter's
    width for the families in ``CONVERTER_WIDTH``)."""
    from ditf_core.demo_model import build_tiny_family

    converted = name in COMFY_TO_DIFFUSERS
    comfy_overrides, diffusers_overrides = CONVERTER_WIDTH.get(name, ({}, WIDE_DIFFUSERS.get(name, {})))
    transformer = build_tiny_family(name, seed=seed, perturb=not converted, **diffusers_overrides)
    if converted:
        base = comfy_base(name, **comfy_overrides)
        state = comfy_layout_weights(base.diffusion_model, seed)
        load_exactly(base.diffusion_model, state)
        load_exactly(transformer, to_diffusers(name, state))
    else:
        import comfy.model_detection

        converted = comfy.model_detection.convert_diffusers_mmdit(
            {k: v.detach().clone() for k, v in transformer.state_dict().items()}, "")
        base = comfy_base(name)
        state = base.model_config.process_unet_state_dict(converted)
        if name == "pixart":  # the null caption of training-time caption dropout has no diffusers counterpart
            state["y_embedder.y_embedding"] = torch.zeros_like(base.diffusion_model.y_embedder.y_embedding)
        load_exactly(base.diffusion_model, state)
    return patcher(base), transformer.eval()


def comfy_base(name: str, **overrides):
    import comfy.supported_models

    class_name, unet_config = COMFY_CONFIGS[name]
    model_config = getattr(comfy.supported_models, class_name)({**unet_config, **overrides})
    model_config.set_inference_dtype(torch.float32, None)
    return model_config.get_model({}, "")


def patcher(base):
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def to_diffusers(name: str, state: dict) -> dict:
    from diffusers.loaders import single_file_utils as converters

    state = dict(state)  # the converters pop keys; the tensors themselves are shared, never written
    if name == "qwen_image":
        return state  # ComfyUI loads Qwen-Image's diffusers layout as it is
    convert = {
        "wan": converters.convert_wan_transformer_to_diffusers,
        "hidream": converters.convert_hidream_transformer_to_diffusers,
        "chroma": converters.convert_chroma_transformer_checkpoint_to_diffusers,
        "lumina2": converters.convert_lumina2_to_diffusers,
    }[name]
    return convert(state)


POOL = 1_000_003  # a prime: tensors cut from the cycled pool at random offsets share no period with their rows


def comfy_layout_weights(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights for every tensor of ``module`` (ComfyUI builds its models uninitialised): norm scales
    near 1, biases and tables near 0, matrices with the variance of 1/fan-in. Values are cut from one cycled pool of
    normal draws at random offsets: drawing hundreds of millions of values one by one takes most of a minute for the
    full-width models, a pool copy a second."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL, generator=generator)
    state = {}
    for key, value in module.state_dict().items():
        offset = int(torch.randint(POOL, (), generator=generator))
        noise = pool.roll(-offset).repeat(value.numel() // POOL + 1)[: value.numel()].reshape(value.shape)
        if value.ndim == 1 and ("norm" in key or key.endswith((".scale", ".gamma"))):
            state[key] = noise.mul_(0.02).add_(1.0)
        elif value.ndim == 1:
            state[key] = noise.mul_(0.02)
        else:
            state[key] = noise.mul_(value[0].numel() ** -0.5)
    return state


def load_exactly(module: torch.nn.Module, state: dict) -> None:
    """Load ``state`` into ``module`` (taking the tensors over, no copy); every tensor must find its place (a
    converter gap is a test failure)."""
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    assert not missing and not unexpected, f"converted weights do not fit: missing {missing}, unexpected {unexpected}"


def conditioning_for(transformer, batch: int = 1, tokens: int = 6, seed: int = 3) -> tuple[torch.Tensor, dict]:
    """(context [B, L, D], CONDITIONING extras: pooled_output where the family has one, text streams) of the
    family's widths, seeded."""
    from ditf_core.families import family_for

    family = family_for(transformer)
    generator = torch.Generator().manual_seed(seed)
    zeros, _ = family.zero_conditioning(transformer, tokens)
    streams = zeros if isinstance(zeros, dict) else {"context": zeros}
    drawn = {k: torch.randn(batch, *v.shape[1:], generator=generator) for k, v in streams.items()}
    extra = {k: v for k, v in drawn.items() if k != "context"}
    width = family.pooled_width(transformer)
    if width is not None:
        extra["pooled_output"] = torch.randn(batch, width, generator=generator)
    return drawn["context"], extra


def small_vae(channels: int, seed: int = 0):
    """A random TAESD-layout ComfyUI VAE with ``channels`` latent channels at 1/8 (what the host's VAE check needs
    for image families; the latent-level tests never encode with it)."""
    import comfy.sd
    import comfy.taesd.taesd as taesd

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in taesd.TAESD(latent_channels=channels).state_dict().items():
        if key in ("vae_scale", "vae_shift"):
            continue
        fan_in = max(1, value[0].numel())
        state[key] = torch.randn(value.shape, generator=generator) * fan_in**-0.5 if key.endswith(".weight") \
            else torch.zeros(value.shape)
    return comfy.sd.VAE(sd=state)


def wan_vae_pair(seed: int = 0):
    """(diffusers AutoencoderKLWan, ComfyUI VAE) with the same random full-size Wan 2.1 VAE weights (converted with
    diffusers' ``convert_wan_vae_to_diffusers``) and a posterior std of ~exp(-30): the diffusers host's posterior
    samples then equal ComfyUI's posterior mean."""
    import comfy.ldm.wan.vae
    import comfy.sd
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    module = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, temperal_downsample=[False, True, True])
    state = comfy_layout_weights(module, seed)
    state["conv1.weight"][16:] = 0.0  # the log-variance half of the quant conv
    state["conv1.bias"][16:] = -60.0
    comfy_vae = comfy.sd.VAE(sd={k: v.clone() for k, v in state.items()})
    diffusers_vae = AutoencoderKLWan()
    load_exactly(diffusers_vae, convert_wan_vae_to_diffusers({k: v.clone() for k, v in state.items()}))
    return diffusers_vae.eval(), comfy_vae
