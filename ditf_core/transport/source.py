"""The transport source, advanced in lockstep with the target whatever the sampler (host-free).

Our design (the paper does not say how its source was run): the source is kept by us, one latent per target row,
and asked for at each sigma the sampler evaluates the model at.

* :class:`SourceTrajectory` (text-conditioned source, prompt interpolation): starts from the target's own initial
  latent (the same noise, the same latent image) and moves with Euler steps, ``x <- x + (x - D) / sigma * (s -
  sigma)``, from the sigma it is at to the sigma asked for, using its own prediction D at the sigma it is at. D is
  the source's CFG result ``U + scale (C - U)`` when the sampler also evaluated the unconditional rows, else C -
  the same arithmetic as ComfyUI's ``cfg_function`` and ``sample_euler``, so with the euler sampler a source equal
  to the target follows the target bit for bit. Samplers that revisit a sigma (heun, dpm_2) get the latent they
  had; samplers that go back up (restart) get the source re-noised from its latest clean prediction with the
  initial noise.
* :class:`NoisedReference` (image-conditioned source, subject-driven generation): the reference latent noised to
  the sigma asked for, always with the same noise (drawn once from a fixed seed); no trajectory, no predictions.

Both hold tensors [B, C, H, W] in the sampler's latent space; ``noise_scaling(sigma, noise, latent)`` is the model
family's forward process (flow models: ``sigma * noise + (1 - sigma) * latent``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NoiseScaling = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

COND, UNCOND = 0, 1  # ComfyUI's cond_or_uncond indices


class SourceTrajectory:
    """A text-conditioned source latent [B, C, H, W] that follows the sigmas the sampler asks for.

    start: the initial latent at ``sigma``; noise: the initial noise (for re-noising on a sigma increase);
    cfg_scale: the guider's CFG scale; noise_scaling: the model's forward process.
    """

    needs_predictions = True

    def __init__(self, start: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, cfg_scale: float,
                 noise_scaling: NoiseScaling) -> None:
        self.latent = start
        self.sigma = sigma.reshape(())
        self.noise = noise
        self.cfg_scale = float(cfg_scale)
        self.noise_scaling = noise_scaling
        self._predictions: dict[int, torch.Tensor] = {}
        self._clean: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.latent.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.latent.shape

    def latent_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """The source latent at ``sigma`` (a 0-d or [m] tensor of equal values), advancing the state to it."""
        sigma = sigma.reshape(-1)[0].to(self.sigma.dtype)
        if torch.equal(sigma, self.sigma):
            return self.latent
        denoised = self.prediction()
        if denoised is None:
            pass  # nothing was ever predicted (the model never ran on the source): hold the latent
        elif sigma < self.sigma:
            derivative = (self.latent - denoised) / self.sigma.reshape(1, *([1] * (self.latent.ndim - 1)))
            self.latent = self.latent + derivative * (sigma - self.sigma)
        else:
            self.latent = self.noise_scaling(sigma, self.noise, denoised)
        if denoised is not None:
            self._clean = denoised
        self.sigma = sigma
        self._predictions = {}
        return self.latent

    def record(self, sigma: torch.Tensor, kind: int, denoised: torch.Tensor) -> None:
        """The source's prediction (denoised [B, C, H, W]) of ``kind`` (COND / UNCOND) at ``sigma``; the first one
        recorded at a sigma wins (later passes at the same sigma - guidance passes of other nodes - are not the
        source's own prediction)."""
        sigma = sigma.reshape(-1)[0].to(self.sigma.dtype)
        if torch.equal(sigma, self.sigma) and kind not in self._predictions:
            self._predictions[kind] = denoised

    def prediction(self) -> torch.Tensor | None:
        """The source's denoised prediction at its current sigma: the CFG of the rows recorded there, the conditional
        one alone without CFG, else (the source was not run at this sigma) its latest clean prediction, or None."""
        cond = self._predictions.get(COND)
        if cond is None:
            return self._clean
        uncond = self._predictions.get(UNCOND)
        return cond if uncond is None else uncond + (cond - uncond) * self.cfg_scale


class NoisedReference:
    """An image-conditioned source: the reference latent [1 or B, C, H, W] noised to each sigma with fixed noise."""

    needs_predictions = False

    def __init__(self, reference: torch.Tensor, noise: torch.Tensor, noise_scaling: NoiseScaling) -> None:
        if noise.shape[1:] != reference.shape[1:] or reference.shape[0] not in (1, noise.shape[0]):
            raise ValueError(f"reference {list(reference.shape)} and noise {list(noise.shape)} do not match")
        self.reference = reference.expand(noise.shape[0], *reference.shape[1:])
        self.noise = noise
        self.noise_scaling = noise_scaling

    @property
    def batch(self) -> int:
        return self.noise.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.noise.shape

    def latent_at(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.noise_scaling(sigma.reshape(-1)[0], self.noise, self.reference)

    def record(self, sigma: torch.Tensor, kind: int, denoised: torch.Tensor) -> None:
        """Nothing to record: the reference does not move."""


def flow_noise_scaling(sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The rectified-flow forward process ``sigma * noise + (1 - sigma) * latent`` (Flux, SD3)."""
    return sigma * noise + (1.0 - sigma) * latent
