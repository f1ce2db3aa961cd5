"""Massive activations at work inside a normal diffusers pipeline call: disruption vs its control, transport from a
source prompt, Detail Guidance.

    python examples/diffusers_massive_activations.py                      # tiny RANDOM-weight Flux, runs anywhere
    python examples/diffusers_massive_activations.py --model /path/to/FLUX.1-dev --prompt "a red fox in snow" \
        --source-prompt "a husky in snow" --size 1024 --steps 28

Without --model the transformer is the tiny demo DiT with planted massive activations and the prompts are random
embeddings (no text encoders), so the numbers say the patches work, not what the images look like. Needs
``pip install -e .`` (or run from the repository root).
"""

from __future__ import annotations

import argparse

import torch

from ditf_core.transport import Disruption, Transport
from ditf_core.transport.diffusers_hooks import (
    DetailGuidancePatch,
    DisruptionPatch,
    TransportPatch,
    massive_activations,
)


def main(argv=None) -> dict[str, float]:
    args = parse(argv)
    pipe = load(args.model)
    pipe.set_progress_bar_config(disable=True)
    target, source = prompts(pipe, args)
    depth = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    everywhere = range(depth)

    def generate(embeds):
        return pipe(prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[1], height=args.size, width=args.size,
                    num_inference_steps=args.steps, output_type="latent",
                    generator=torch.Generator().manual_seed(args.seed)).images

    plain = generate(target)
    with massive_activations(pipe.transformer, disruption=DisruptionPatch(everywhere, Disruption(args.top_k))):
        disrupted = generate(target)
    with massive_activations(pipe.transformer, disruption=DisruptionPatch(everywhere, Disruption(args.top_k, True))):
        control = generate(target)
    source_sample = generate(source)
    transport = TransportPatch(everywhere, Transport(args.top_k, args.strength, "none"), source_embeds=source[0],
                               source_pooled=source[1])
    with massive_activations(pipe.transformer, transport=transport):
        transported = generate(target)
    with massive_activations(pipe.transformer, detail_guidance=DetailGuidancePatch(depth // 2, args.weight)):
        detailed = generate(target)

    def distance(a, b):
        return float((a.float() - b.float()).norm())

    numbers = {
        "disruption": distance(disrupted, plain),
        "control": distance(control, plain),
        "source_to_plain": distance(source_sample, plain),
        "source_to_transported": distance(source_sample, transported),
        "detail_guidance": distance(detailed, plain),
    }
    for name, value in numbers.items():
        print(f"{name:>22}: {value:.4g}")
    return numbers


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers Flux folder (default: the tiny random-weight demo DiT)")
    parser.add_argument("--prompt", default="a red fox in the snow")
    parser.add_argument("--source-prompt", default="a husky in the snow")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--weight", type=float, default=1.0, help="Detail Guidance weight")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load(model):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    if model:
        return FluxPipeline.from_pretrained(model, torch_dtype=torch.bfloat16)
    from ditf_core.demo_model import build_demo_dit, build_tiny_vae

    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=build_tiny_vae(), transformer=build_demo_dit(0),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)


def prompts(pipe, args):
    """(prompt_embeds, pooled) of the target and the source prompt."""
    if pipe.text_encoder is not None:
        target = pipe.encode_prompt(args.prompt, prompt_2=None)[:2]
        return target, pipe.encode_prompt(args.source_prompt, prompt_2=None)[:2]
    # Random embeddings for the tiny model; the prompts share the pooled vector, which in a random tiny model would
    # otherwise dominate every block's modulation.
    generator = torch.Generator().manual_seed(args.seed)
    pooled = torch.randn(1, 32, generator=generator)
    return (torch.randn(1, 8, 32, generator=generator), pooled), (torch.randn(1, 8, 32, generator=generator), pooled)


if __name__ == "__main__":
    main()
