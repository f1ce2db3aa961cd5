"""A tiny Flux built so that exactly ONE known block carries spatially faithful features (the layer finder's test).

The VAE's encoder is set to pool colours: latent channels 0..7 are random 3x3 filters of the image's RGB averaged over
8x8 pixels (group-normalised), channels 8..15 are empty (posterior mean 0), so at x_t those hold the ensemble noise
only; the noise draws are shared by an image and its warps (``draw_noise``), so a feature made of
them matches every point to the SAME position in a warp - the identity, not the warp: scrambled. Packed 2x2, the
content channels become token dims 0..31 and the noise-only ones dims 32..63, and the patch embedding keeps them
apart (the noise dims amplified, so blocks see mostly noise). Every block is the identity (gates 0) except two
single blocks whose MLP is linear on a set of dims (gelu far from 0 is the identity plus a bias):

* the WRITER (``FAITHFUL - 1``) adds a large multiple of the normalised content dims: the input of block
  ``FAITHFUL`` is content-dominated, spatially faithful;
* the SCRAMBLER (``FAITHFUL``) adds a large multiple of the normalised noise dims: every later block input is
  noise-dominated again.
"""

from __future__ import annotations

import torch

from ditf_core.demo_model import build_tiny_flux, build_tiny_vae

FAITHFUL = 3  # tiny Flux: block 0 double, blocks 1..5 single; the finder must pick block 3
NOISE_GAIN, WRITE_GAIN, SCRAMBLE_GAIN = 100.0, 2e4, 1e8
BIAS = 8.0  # gelu(z + BIAS) = z + BIAS to float32 precision for the small normalised inputs here
COLOUR_GAIN = 8.0  # latent colour channels of std ~2.5 next to unit noise


def build_faithful_block_flux(seed: int = 0):
    """(tiny Flux transformer, tiny VAE) with spatially faithful features at block ``FAITHFUL`` only."""
    model = build_tiny_flux(seed, num_layers=1, num_single_layers=5)
    hidden = model.inner_dim
    content, noise = torch.arange(hidden // 2), torch.arange(hidden // 2, hidden)
    with torch.no_grad():
        embed = torch.zeros(hidden, model.config.in_channels)
        embed[content, content] = 1.0
        embed[noise, noise] = NOISE_GAIN
        model.x_embedder.weight.copy_(embed)
        model.x_embedder.bias.zero_()
        for index, block in enumerate([*model.transformer_blocks, *model.single_transformer_blocks]):
            _set_modulation(block, hidden, gate=1.0 if index in (FAITHFUL - 1, FAITHFUL) else 0.0)
        _linear_mlp(model.single_transformer_blocks[FAITHFUL - 2], content, WRITE_GAIN)  # writer: block 2
        _linear_mlp(model.single_transformer_blocks[FAITHFUL - 1], noise, SCRAMBLE_GAIN)  # scrambler: block 3
    vae = colour_pooling_vae(seed)
    return model.eval(), vae


def _set_modulation(block, hidden: int, gate: float) -> None:
    """shift = scale = 0 and the given attention/MLP gate, whatever the timestep (weights 0, biases fixed)."""
    norm = block.norm1 if hasattr(block, "norm1") else block.norm
    norm.linear.weight.zero_()
    norm.linear.bias.zero_()
    chunks = norm.linear.out_features // hidden  # 6 (double: ..., gate_msa at 2, gate_mlp at 5) or 3 (single)
    for position in (2, 5) if chunks == 6 else (2,):
        norm.linear.bias[position * hidden : (position + 1) * hidden] = gate


def _linear_mlp(block, dims: torch.Tensor, gain: float) -> None:
    """The single block's update becomes ``gain * LN(h)[dims]`` on ``dims`` (attention off: values are zero)."""
    block.attn.to_v.weight.zero_()
    block.attn.to_v.bias.zero_()
    block.proj_mlp.weight.zero_()
    block.proj_mlp.bias.zero_()
    block.proj_out.weight.zero_()
    block.proj_out.bias.zero_()
    width = block.attn.to_v.out_features  # proj_out reads cat(attention, mlp): the MLP units start here
    units = torch.arange(len(dims))
    block.proj_mlp.weight[units, dims] = 1.0
    block.proj_mlp.bias[units] = BIAS
    block.proj_out.weight[dims, width + units] = gain
    block.proj_out.bias[dims] = -gain * BIAS


def colour_pooling_vae(seed: int = 0):
    """The tiny 16-channel AutoencoderKL with its encoder set to average-pool RGB (every resnet and the mid-block
    attention reduced to their skip connection, each downsampler to a 2x2 mean): latent channels 0..7 carry random
    local filters of the pooled colours, the others nothing."""
    vae = build_tiny_vae(seed)
    encoder = vae.encoder
    with torch.no_grad():
        _identity_conv(encoder.conv_in, 3)
        for block in encoder.down_blocks:
            for resnet in block.resnets:
                _skip_only(resnet)
            for downsampler in block.downsamplers or ():
                downsampler.conv.weight.zero_()
                downsampler.conv.bias.zero_()
                for channel in range(3):
                    downsampler.conv.weight[channel, channel, :2, :2] = 0.25
        for resnet in encoder.mid_block.resnets:
            _skip_only(resnet)
        for attention in encoder.mid_block.attentions:
            attention.to_out[0].weight.zero_()
            attention.to_out[0].bias.zero_()
        # Latent channels 0..7: random 3x3 filters of the pooled colours (cosine matching needs more than three
        # colour values to tell places apart); 8..15: nothing.
        generator = torch.Generator().manual_seed(seed)
        half = encoder.conv_out.out_channels // 2
        encoder.conv_out.weight[:half] = 0.0
        encoder.conv_out.bias[:half] = 0.0
        filters = torch.randn(8, 3, 3, 3, generator=generator)
        encoder.conv_out.weight[:8, :3] = filters * COLOUR_GAIN / filters[0].numel() ** 0.5
    return vae


def _identity_conv(conv, channels: int) -> None:
    conv.weight.zero_()
    conv.bias.zero_()
    for channel in range(channels):
        conv.weight[channel, channel, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0


def _skip_only(resnet) -> None:
    resnet.conv2.weight.zero_()
    resnet.conv2.bias.zero_()
    if resnet.conv_shortcut is not None:
        _identity_conv(resnet.conv_shortcut, min(resnet.conv_shortcut.in_channels, resnet.conv_shortcut.out_channels))

