"""The neighbourhood-restricted affinity of label propagation, computed only around each query cell.

DINO's reference (:mod:`ditf_core.video.reference`) builds the dense affinity of every query cell with every cell
of every context frame, ``exp(<f_t, f_s> / tau)`` ([n, hw, hw]: at 960 px Flux 8 x 2160^2 values), then multiplies it
by a (2r+1)^2 neighbourhood mask. Here the query cells are taken in tiles of ``tile`` x ``tile`` cells; for a tile
only the context cells its neighbourhoods can reach (the tile grown by r on each side, clipped to the frame) are
read, one context frame at a time, and each query's (2r+1)^2 window values are gathered out of that small product.
Out-of-frame window positions hold 0, exactly as the masked dense matrix does. The dense matrix never exists:
at most [tile^2, (tile + 2r)^2] similarities and one [C, (tile + 2r)^2] slice of a context frame are alive.

Top-k then normalisation, as in the reference: per query, the ``top_k``-th largest affinity over all context
frames' windows is the threshold, every affinity at or above it is kept (ties included), the kept ones are
divided by their sum, and the query's labels are the weighted sum of the context labels at those cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SLICE_ELEMENTS = 1 << 20  # context values copied at once (4 MB): a contiguous block of channels of a tile's slice


def default_tile(radius: int) -> int:
    """Query cells per tile side. Each tile reads (tile + 2r)^2 context cells for (2r+1)^2 per query: smaller tiles
    waste less, larger ones run larger (faster) matrix products; tile = r measured best at r = 12, C = 3072."""
    return max(4, radius)


def propagate_labels(
    query: torch.Tensor,
    context: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    radius: int,
    top_k: int,
    temperature: float,
    tile: int | None = None,
) -> torch.Tensor:
    """Labels of the query frame propagated from the context frames (``tile``: None = :func:`default_tile`).

    query: [C, h, w] unit-norm features (per cell). context: [n, C, h, w] unit-norm features, or a sequence of n
    [C, h, w] maps (not stacked: no copy of the context is made). labels: [n, L, h, w] the context frames' (soft)
    labels. Returns [L, h, w] float32.
    """
    h, w = query.shape[-2:]
    out = torch.zeros(labels.shape[1], h * w, dtype=torch.float32, device=query.device)
    for (y0, y1, x0, x1), affinity, index in _tiles(query, context, radius, temperature, tile):
        weights = _top_k_weights(affinity, top_k)  # [n, q, P]
        rows = (torch.arange(y0, y1, device=query.device)[:, None] * w + torch.arange(x0, x1, device=query.device))
        for label in range(labels.shape[1]):  # one label at a time: [n, q, P] values alive, not [n, L, q, P]
            out[label, rows.reshape(-1)] = (weights * labels[:, label].flatten(1)[:, index.key]).sum(dim=(0, 2))
    return out.reshape(-1, h, w)


def window_affinity(
    query: torch.Tensor, context: torch.Tensor | Sequence[torch.Tensor], *, radius: int, temperature: float,
    tile: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole frame's windowed affinity, for tests and inspection (:func:`propagate_labels` never holds it).

    Returns values [n, h*w, P] (P = (2r+1)^2, window positions row-major from offset (-r, -r); 0 outside the
    frame), key [h*w, P] (flat context cell of each window position, clamped into the frame) and valid [h*w, P].
    """
    n, (h, w) = len(context), query.shape[-2:]
    side = (2 * radius + 1) ** 2
    values = torch.zeros(n, h * w, side, dtype=torch.float32)
    keys = torch.zeros(h * w, side, dtype=torch.long)
    valid = torch.zeros(h * w, side, dtype=torch.bool)
    for (y0, y1, x0, x1), affinity, index in _tiles(query, context, radius, temperature, tile):
        rows = (torch.arange(y0, y1)[:, None] * w + torch.arange(x0, x1)).reshape(-1)
        values[:, rows], keys[rows], valid[rows] = affinity, index.key, index.valid
    return values, keys, valid


class _WindowIndex:
    """Where each query's window positions sit: in the tile's context slice (``local``) and in the frame (``key``)."""

    def __init__(self, y0, y1, x0, x1, h, w, radius, device):
        offsets = torch.arange(-radius, radius + 1, device=device)
        qy = torch.arange(y0, y1, device=device).repeat_interleave(x1 - x0)  # [q] query rows, row-major
        qx = torch.arange(x0, x1, device=device).repeat(y1 - y0)
        ky = qy[:, None, None] + offsets[None, :, None]  # [q, 2r+1, 1]
        kx = qx[:, None, None] + offsets[None, None, :]  # [q, 1, 2r+1]
        self.valid = ((ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)).reshape(len(qy), -1)  # [q, P]
        ky, kx = ky.clamp(0, h - 1), kx.clamp(0, w - 1)
        # the context slice read for this tile: rows [top, bottom), columns [left, right)
        self.top, self.bottom = max(0, y0 - radius), min(h, y1 + radius)
        self.left, self.right = max(0, x0 - radius), min(w, x1 + radius)
        self.local = ((ky - self.top) * (self.right - self.left) + (kx - self.left)).reshape(len(qy), -1)
        self.key = (ky * w + kx).reshape(len(qy), -1)


def _tiles(query, context, radius, temperature, tile):
    """Per query tile: its bounds, the windowed affinity [n, q, P] (0 outside the frame) and its _WindowIndex."""
    shapes = {tuple(frame.shape) for frame in context}
    if query.ndim != 3 or shapes != {tuple(query.shape)}:
        raise ValueError(f"query must be [C, h, w] and every context frame the same [C, h, w]; got "
                         f"{list(query.shape)} and {sorted(shapes)}")
    n, (channels, h, w) = len(context), query.shape
    tile = tile or default_tile(radius)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            index = _WindowIndex(y0, y1, x0, x1, h, w, radius, query.device)
            queries = query[:, y0:y1, x0:x1].reshape(channels, -1).T  # [q, C]
            affinity = torch.empty(n, queries.shape[0], index.local.shape[1], dtype=torch.float32, device=query.device)
            for s in range(n):  # one context frame's slice at a time, a block of channels at a time
                keys = context[s][:, index.top : index.bottom, index.left : index.right]
                step = max(1, SLICE_ELEMENTS // (keys.shape[1] * keys.shape[2]))
                similarity = queries[:, :step] @ keys[:step].reshape(min(step, channels), -1)  # [q, slice cells]
                for c0 in range(step, channels, step):
                    similarity.addmm_(queries[:, c0 : c0 + step], keys[c0 : c0 + step].reshape(-1, similarity.shape[1]))
                affinity[s] = similarity.gather(1, index.local)
            affinity = torch.exp(affinity / temperature).mul_(index.valid)  # the reference multiplies by its mask
            yield (y0, y1, x0, x1), affinity, index


def _top_k_weights(affinity: torch.Tensor, top_k: int) -> torch.Tensor:
    """affinity [n, q, P] -> weights [n, q, P]: per query the values >= its top_k-th largest over all n * P (ties
    kept, as the reference's ``aff[aff < kth] = 0``), divided by their sum."""
    n, q, side = affinity.shape
    flat = affinity.permute(1, 0, 2).reshape(q, n * side)
    kth = flat.topk(min(top_k, n * side), dim=1).values[:, -1:]  # [q, 1]
    kept = flat * (flat >= kth)
    kept = kept / kept.sum(dim=1, keepdim=True)
    return kept.reshape(q, n, side).permute(1, 0, 2)
