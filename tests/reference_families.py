"""By-hand block inputs of the families beyond Flux.1 / SD3, for the independent recipe reference.

Each function drives the model's own submodules step by step, as its diffusers forward does, without hooks and
without anything from ``ditf_core``: time convention, latent packing, text streams, RoPE ids, the blocks before
``layer``. It returns (image tokens entering block ``layer`` [B, N, C], shift [B, C], scale [B, C], token grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def by_hand(model, x_t, *, t, layer, text, pooled, guidance):
    b = x_t.shape[0]
    if isinstance(text, dict):
        text = {name: value.expand(b, *value.shape[1:]) for name, value in text.items()}
    else:
        text = text.expand(b, -1, -1)
    pooled = None if pooled is None else pooled.expand(b, -1)
    return BY_HAND[type(model).__name__](model, x_t, t, layer, text, pooled, guidance)


def noised(model, clean, noise, t):
    """x_t as each family's own scheduler makes it (DDPM for PixArt, flow matching for the rest)."""
    if type(model).__name__ == "PixArtTransformer2DModel":
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
        return scheduler.add_noise(clean, noise, torch.tensor([round(t * 1000)]))
    return t * noise + (1 - t) * clean


def pack_2x2(x):
    b, c, h, w = x.shape
    tokens = torch.stack([x[:, :, i::2, j::2] for i in range(2) for j in range(2)], dim=2)
    return tokens.reshape(b, c * 4, (h // 2) * (w // 2)).transpose(1, 2)


def _flux2(model, x_t, t, layer, text, pooled, guidance):
    from diffusers.models.transformers.transformer_flux2 import Flux2Modulation

    b, c, h, w = x_t.shape
    length = text.shape[1]
    timestep = torch.full((b,), t) * 1000
    temb = model.time_guidance_embed(timestep, torch.full((b,), guidance) * 1000 if model.config.guidance_embeds else None)
    mod_img, mod_txt = model.double_stream_modulation_img(temb), model.double_stream_modulation_txt(temb)
    mod_single = model.single_stream_modulation(temb)
    hidden = model.x_embedder(x_t.reshape(b, c, h * w).transpose(1, 2))
    encoder = model.context_embedder(text)
    image_ids = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    text_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length))
    image_rope, text_rope = model.pos_embed(image_ids), model.pos_embed(text_ids)
    rope = tuple(torch.cat([text_rope[i], image_rope[i]]) for i in range(2))
    doubles = model.transformer_blocks
    for block in doubles[: min(layer, len(doubles))]:
        encoder, hidden = block(hidden, encoder, mod_img, mod_txt, rope)
    if layer < len(doubles):
        shift, scale, _ = Flux2Modulation.split(mod_img, 2)[0]
        return hidden, shift[:, 0], scale[:, 0], (h, w)
    joint = torch.cat([encoder, hidden], dim=1)
    for block in model.single_transformer_blocks[: layer - len(doubles)]:
        joint = block(joint, None, mod_single, rope)
    shift, scale, _ = Flux2Modulation.split(mod_single, 1)[0]
    return joint[:, length:], shift[:, 0], scale[:, 0], (h, w)


def _chroma(model, x_t, t, layer, text, pooled, guidance):
    b, _, h, w = x_t.shape
    length = text.shape[1]
    hidden = model.x_embedder(pack_2x2(x_t))
    vectors = model.distilled_guidance_layer(model.time_text_embed(torch.full((b,), t) * 1000))  # [B, n, C]
    encoder = model.context_embedder(text)
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    rope = model.pos_embed(torch.cat([torch.zeros(length, 3), image_ids]))
    doubles, singles = model.transformer_blocks, model.single_transformer_blocks
    d, s = len(doubles), len(singles)
    for i, block in enumerate(doubles[: min(layer, d)]):
        image, txt = 3 * s + 6 * i, 3 * s + 6 * d + 6 * i
        temb = torch.cat([vectors[:, image : image + 6], vectors[:, txt : txt + 6]], dim=1)
        encoder, hidden = block(hidden_states=hidden, encoder_hidden_states=encoder, temb=temb, image_rotary_emb=rope)
    if layer < d:
        own = vectors[:, 3 * s + 6 * layer :]
        return hidden, own[:, 0], own[:, 1], (h // 2, w // 2)
    joint = torch.cat([encoder, hidden], dim=1)
    for j, block in enumerate(singles[: layer - d]):
        joint = block(hidden_states=joint, temb=vectors[:, 3 * j : 3 * j + 3], image_rotary_emb=rope)
    own = vectors[:, 3 * (layer - d) :]
    return joint[:, length:], own[:, 0], own[:, 1], (h // 2, w // 2)


def _qwen(model, x_t, t, layer, text, pooled, guidance):
    b, _, h, w = x_t.shape
    hidden = model.img_in(pack_2x2(x_t))
    temb = model.time_text_embed(torch.full((b,), t), hidden)
    encoder = model.txt_in(model.txt_norm(text))
    rope = model.pos_embed([(1, h // 2, w // 2)] * b, max_txt_seq_len=text.shape[1], device=x_t.device)
    for block in model.transformer_blocks[:layer]:
        encoder, hidden = block(hidden_states=hidden, encoder_hidden_states=encoder, encoder_hidden_states_mask=None,
                                temb=temb, image_rotary_emb=rope)
    shift, scale, _ = model.transformer_blocks[layer].img_mod(temb).chunk(2, dim=-1)[0].chunk(3, dim=-1)
    return hidden, shift, scale, (h // 2, w // 2)


def _lumina2(model, x_t, t, layer, text, pooled, guidance):
    b, _, h, w = x_t.shape
    temb, encoder = model.time_caption_embed(x_t, torch.full((b,), 1.0 - t), text)  # Lumina2's time runs backwards
    mask = torch.ones(b, text.shape[1], dtype=torch.bool)
    patches, text_rope, image_rope, rope, _, _ = model.rope_embedder(x_t, mask)
    hidden = model.x_embedder(patches)
    for block in model.context_refiner:
        encoder = block(encoder, mask, text_rope)
    for block in model.noise_refiner:
        hidden = block(hidden, None, image_rope, temb)
    joint = torch.cat([encoder, hidden], dim=1)
    for block in model.layers[:layer]:
        joint = block(joint, None, rope, temb)
    scale = model.layers[layer].norm1.linear(F.silu(temb)).chunk(4, dim=1)[0]
    return joint[:, text.shape[1] :], torch.zeros_like(scale), scale, (h // 2, w // 2)


def _z_image(model, x_t, t, layer, text, pooled, guidance):
    b, _, h, w = x_t.shape
    adaln = model.t_embedder(torch.full((b,), 1.0 - t) * model.t_scale)  # Z-Image's time runs backwards
    images, captions, _, image_pos, caption_pos, image_pad, caption_pad = model.patchify_and_embed(
        list(x_t.unsqueeze(2).unbind(0)), list(text.unbind(0)), 2, 1)
    image_lengths, caption_lengths = [len(x) for x in images], [len(x) for x in captions]
    hidden = model.all_x_embedder["2-1"](torch.cat(images)).split(image_lengths)
    hidden, image_freqs, image_mask, _, _ = model._prepare_sequence(list(hidden), image_pos, image_pad, model.x_pad_token)
    for block in model.noise_refiner:
        hidden = block(hidden, image_mask, image_freqs, adaln)
    encoder = model.cap_embedder(torch.cat(captions)).split(caption_lengths)
    encoder, caption_freqs, caption_mask, _, _ = model._prepare_sequence(list(encoder), caption_pos, caption_pad,
                                                                         model.cap_pad_token)
    for block in model.context_refiner:
        encoder = block(encoder, caption_mask, caption_freqs)
    joint, freqs = torch.cat([hidden, encoder], dim=1), torch.cat([image_freqs, caption_freqs], dim=1)  # image first
    for block in model.layers[:layer]:
        joint = block(joint, None, freqs, adaln)
    scale = model.layers[layer].adaLN_modulation(adaln).chunk(4, dim=1)[0]
    return joint[:, : (h // 2) * (w // 2)], torch.zeros_like(scale), scale, (h // 2, w // 2)


def _hidream(model, x_t, t, layer, text, pooled, guidance):
    b, _, h, w = x_t.shape
    patches, masks, _, image_ids = model.patchify(x_t)
    hidden = model.x_embedder(patches)
    temb = model.t_embedder(torch.full((b,), t * 1000), hidden.dtype) + model.p_embedder(pooled)
    llama = [text["conditioning_llama3"][:, k] for k in model.config.llama_layers]
    streams = [model.caption_projection[i](x).view(b, -1, hidden.shape[-1]) for i, x in enumerate(llama)]
    streams.append(model.caption_projection[-1](text["context"]).view(b, -1, hidden.shape[-1]))
    text_ids = torch.zeros(b, streams[-1].shape[1] + streams[-2].shape[1] + streams[0].shape[1], 3)
    rope = model.pe_embedder(torch.cat([image_ids, text_ids], dim=1))
    shared = torch.cat([streams[-1], streams[-2]], dim=1)
    doubles, singles = model.double_stream_blocks, model.single_stream_blocks
    count = (h // 2) * (w // 2)
    for i, block in enumerate(doubles[: min(layer, len(doubles))]):
        hidden, joint_text = block(hidden_states=hidden, hidden_states_masks=masks,
                                   encoder_hidden_states=torch.cat([shared, streams[i]], dim=1), temb=temb,
                                   image_rotary_emb=rope)
        shared = joint_text[:, : shared.shape[1]]
    if layer < len(doubles):
        mod = doubles[layer].block.adaLN_modulation(temb).chunk(12, dim=-1)
        return hidden[:, :count], mod[0], mod[1], (h // 2, w // 2)
    hidden = torch.cat([hidden, shared], dim=1)
    total = hidden.shape[1]
    if masks is not None:
        masks = torch.cat([masks, torch.ones(b, shared.shape[1] + streams[0].shape[1])], dim=1)
    for j, block in enumerate(singles[: layer - len(doubles)]):
        joint = torch.cat([hidden, streams[len(doubles) + j]], dim=1)
        hidden = block(hidden_states=joint, hidden_states_masks=masks, temb=temb, image_rotary_emb=rope)[:, :total]
    mod = singles[layer - len(doubles)].block.adaLN_modulation(temb).chunk(6, dim=-1)
    return hidden[:, :count], mod[0], mod[1], (h // 2, w // 2)


def _pixart(model, x_t, t, layer, text, pooled, guidance):
    b, _, h, w = x_t.shape
    hidden = model.pos_embed(x_t)
    timestep, _ = model.adaln_single(torch.full((b,), round(t * 1000)), {"resolution": None, "aspect_ratio": None},
                                     batch_size=b, hidden_dtype=hidden.dtype)
    encoder = model.caption_projection(text).view(b, -1, hidden.shape[-1])
    for block in model.transformer_blocks[:layer]:
        hidden = block(hidden, encoder_hidden_states=encoder, timestep=timestep)
    table = model.transformer_blocks[layer].scale_shift_table
    shift, scale = (table[None] + timestep.reshape(b, 6, -1)).chunk(6, dim=1)[:2]
    return hidden, shift[:, 0], scale[:, 0], (h // 2, w // 2)


def _auraflow(model, x_t, t, layer, text, pooled, guidance):
    b, _, h, w = x_t.shape
    hidden = model.pos_embed(x_t)
    temb = model.time_step_proj(model.time_step_embed(torch.full((b,), t)))
    encoder = model.context_embedder(text)
    encoder = torch.cat([model.register_tokens.repeat(b, 1, 1), encoder], dim=1)
    joint_blocks = model.joint_transformer_blocks
    for block in joint_blocks[: min(layer, len(joint_blocks))]:
        encoder, hidden = block(hidden_states=hidden, encoder_hidden_states=encoder, temb=temb)
    if layer < len(joint_blocks):
        block = joint_blocks[layer]
    else:
        combined = torch.cat([encoder, hidden], dim=1)
        for single in model.single_transformer_blocks[: layer - len(joint_blocks)]:
            combined = single(hidden_states=combined, temb=temb)
        hidden = combined[:, encoder.shape[1] :]
        block = model.single_transformer_blocks[layer - len(joint_blocks)]
    shift, scale = block.norm1.linear(F.silu(temb)).chunk(6, dim=1)[:2]
    return hidden, shift, scale, (h // 2, w // 2)


def _wan(model, x_t, t, layer, text, pooled, guidance):
    b, _, h, w = x_t.shape
    clip = x_t.unsqueeze(2)  # one frame
    rope = model.rope(clip)
    hidden = model.patch_embedding(clip).flatten(2).transpose(1, 2)
    _, projection, encoder, _ = model.condition_embedder(torch.full((b,), t * 1000), text, None)
    projection = projection.unflatten(1, (6, -1))
    for block in model.blocks[:layer]:
        hidden = block(hidden, encoder, projection, rope)
    shift, scale = (model.blocks[layer].scale_shift_table + projection.float()).chunk(6, dim=1)[:2]
    return hidden, shift[:, 0], scale[:, 0], (h // 2, w // 2)


BY_HAND = {
    "Flux2Transformer2DModel": _flux2,
    "ChromaTransformer2DModel": _chroma,
    "QwenImageTransformer2DModel": _qwen,
    "Lumina2Transformer2DModel": _lumina2,
    "ZImageTransformer2DModel": _z_image,
    "HiDreamImageTransformer2DModel": _hidream,
    "PixArtTransformer2DModel": _pixart,
    "AuraFlowTransformer2DModel": _auraflow,
    "WanTransformer3DModel": _wan,
}
