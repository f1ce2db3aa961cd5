"""Inputs shared by the nodes that run the model (Extract DiTF Features, Massive-Activation Inspector): the noise
settings and the optional text conditioning, defined once with their ranges, tooltips and checks."""

from __future__ import annotations

from comfy_api.latest import io

from .checks import MAX_SEED, check_float, check_int

T_RANGE = (0.001, 0.999)
ENSEMBLE_RANGE = (1, 64)
RESOLUTION_RANGE = (16, 4096)


def sampling_inputs(result: str) -> list:
    """t, ensemble, seed and resolution inputs; ``result`` names what the seed reproduces ("features", ...)."""
    return [
        io.Float.Input("t", default=0.26, min=T_RANGE[0], max=T_RANGE[1], step=0.01, round=0.001,
                       tooltip="Flow-matching noise level, x_t = t*noise + (1-t)*latent. Paper: 0.26."),
        io.Int.Input("ensemble", default=8, min=ENSEMBLE_RANGE[0], max=ENSEMBLE_RANGE[1], tooltip="Noise draws "
                     "averaged (one transformer pass each, up to block k). Paper: 8."),
        # control_after_generate=False: the frontend would otherwise add "randomize" to any input named seed, and
        # results would change (and miss the cache) on every run.
        io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                     tooltip=f"Seed of the noise draws: the same seed gives the same {result}."),
        io.Int.Input("resolution", default=640, min=RESOLUTION_RANGE[0], max=RESOLUTION_RANGE[1], step=16,
                     tooltip="Long side fed to the model, both sides rounded to 16 px (aspect kept). Paper: 640. At "
                     "most what the model takes: Flux 16384 tokens (2048 px square), SD3 its position embeddings."),
    ]


def text_inputs() -> list:
    """The optional CONDITIONING and prompt inputs (CONDITIONING wins; they are exclusive)."""
    return [
        io.Conditioning.Input("conditioning", optional=True, tooltip="Optional text conditioning from this model's "
                              "text encoders (Flux guidance included); instead of the prompt."),
        io.String.Input("prompt", default="", multiline=True, optional=True, tooltip="Optional prompt, encoded with "
                        "the CLIP wired into Load DiT. Empty: that CLIP's empty prompt, or zero conditioning without "
                        "a CLIP."),
    ]


def check_sampling(t=None, ensemble=None, seed=None, resolution=None) -> None:
    """Raise on a bad value of the sampling inputs (None: not known yet, e.g. a linked input at validation)."""
    if t is not None:
        check_float("t", t, *T_RANGE)
    if ensemble is not None:
        check_int("ensemble", ensemble, *ENSEMBLE_RANGE)
    if seed is not None:
        check_int("seed", seed, 0, MAX_SEED)
    if resolution is not None:
        check_int("resolution", resolution, *RESOLUTION_RANGE)
