"""Joint PCA of feature maps: one basis fitted over every cell of every image being matched (SD-DINO's co-PCA).

SD-DINO (``co_pca`` in its utils) fits PCA jointly over the source and target features with ``torch.pca_lowrank``,
which draws unseeded random numbers. Here the fit is deterministic: a fixed-seed subspace iteration over chunks of
cells (memory [C, k], never [cells, cells] or a full [C, C] eigenproblem: ``eigh`` of a 3072 x 3072 matrix takes
a minute on a small CPU), then an exact PCA inside that subspace; components come largest variance first, each
sign-fixed so that its largest-magnitude loading is positive. Features reduced with different bases live in
different spaces: the basis carries a digest that the fusion records, and matching refuses pairs whose digests
differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import DiTFInputError

_CHUNK_CELLS = 8192  # cells per pass step: [8192, C] float32 at a time
_OVERSAMPLE = 16  # extra directions kept during the subspace iteration


@dataclass(frozen=True)
class PCABasis:
    """mean: [C] float32; components: [k, C] float32, orthonormal rows, largest variance first."""

    mean: torch.Tensor
    components: torch.Tensor

    @property
    def dims(self) -> int:
        return self.components.shape[0]

    @property
    def channels(self) -> int:
        return self.components.shape[1]

    @property
    def digest(self) -> str:
        """A short hash of the basis: equal for features reduced with the same fit."""
        data = hashlib.sha256()
        for tensor in (self.mean, self.components):
            data.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return data.hexdigest()[:16]

    def project(self, maps: torch.Tensor) -> torch.Tensor:
        """Feature maps [B, C, h, w] -> their coordinates in the basis [B, k, h, w] (float32)."""
        if maps.ndim != 4 or maps.shape[1] != self.channels:
            raise DiTFInputError(
                f"the PCA basis was fitted on {self.channels}-channel features but these are {list(maps.shape)}; "
                "fit it on the features you reduce"
            )
        centred = maps.to(torch.float32) - self.mean.to(maps.device).view(1, -1, 1, 1)
        return torch.einsum("kc,bchw->bkhw", self.components.to(maps.device), centred)


def fit_joint_pca(maps: Sequence[torch.Tensor], dims: int, *, iterations: int = 4) -> PCABasis:
    """The top ``dims`` principal directions of all cells of ``maps`` together (each [B, C, h, w], sizes may differ).

    Needs ``dims`` <= C and ``dims`` < the number of cells (more would be directions without variance, whose
    vectors are arbitrary). Exact when ``dims`` + 16 >= C; otherwise a randomised subspace iteration from a fixed
    seed (Halko et al. 2011; ``iterations`` power steps) followed by an exact PCA inside that subspace.
    """
    if not maps:
        raise DiTFInputError("no feature maps to fit a PCA on")
    channels = {m.shape[1] for m in maps}
    if len(channels) != 1 or any(m.ndim != 4 for m in maps):
        raise DiTFInputError("the PCA is fitted on feature maps [B, C, h, w] that all have the same C")
    width = channels.pop()
    cells = sum(m.shape[0] * m.shape[2] * m.shape[3] for m in maps)
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= min(width, cells - 1):
        raise DiTFInputError(
            f"pca_dims must be a whole number in [1, {min(width, cells - 1)}] for {cells} cells of {width} channels "
            f"(at most the channels, and fewer than the cells), got {dims!r}; 0 turns the PCA off"
        )
    total = torch.zeros(width, dtype=torch.float64)
    for rows in _cell_chunks(maps):
        total += rows.sum(dim=0, dtype=torch.float64)
    mean = (total / cells).to(torch.float32)
    rank = min(width, dims + _OVERSAMPLE)
    if rank == width:
        basis = torch.eye(width)
    else:
        generator = torch.Generator().manual_seed(0)
        basis, _ = torch.linalg.qr(torch.randn(width, rank, generator=generator))
        for _ in range(iterations):
            basis, _ = torch.linalg.qr(_scatter_times(maps, mean, basis))
    inner = torch.zeros(rank, rank, dtype=torch.float64)  # the covariance inside the subspace (x cells - 1)
    for rows in _cell_chunks(maps):
        coords = ((rows - mean) @ basis).to(torch.float64)
        inner += coords.T @ coords
    _, vectors = torch.linalg.eigh(inner)  # ascending eigenvalues
    components = (basis.to(torch.float64) @ vectors[:, -dims:].flip(1)).T  # [dims, C], largest variance first
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    return PCABasis(mean, (components * signs).to(torch.float32).contiguous())


def _scatter_times(maps: Sequence[torch.Tensor], mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(X - mean)^T (X - mean) @ basis [C, r] without forming the [C, C] scatter matrix."""
    product = torch.zeros_like(basis)
    for rows in _cell_chunks(maps):
        centred = rows - mean
        product += centred.T @ (centred @ basis)
    return product


def _cell_chunks(maps: Sequence[torch.Tensor]):
    """Every cell of every map as float32 rows [n, C], at most ``_CHUNK_CELLS`` at a time, on the CPU."""
    for batch in maps:
        for image in batch.detach().to("cpu"):
            rows = image.flatten(1).T  # a view [h w, C]: only the chunk is copied
            for start in range(0, rows.shape[0], _CHUNK_CELLS):
                yield rows[start : start + _CHUNK_CELLS].to(torch.float32)
