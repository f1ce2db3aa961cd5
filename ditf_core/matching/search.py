"""The two nearest-neighbour searches behind matching, both in bounded memory.

* :func:`nearest_cells` works at feature resolution: cosine of each query against every key cell, argmax, then
  an optional soft-argmax in a small window around the argmax for a sub-cell position. Queries are processed
  in chunks so at most ``chunk_elements`` similarities exist at once (kornia's ``conv_soft_argmax2d`` would
  soft-argmax every window of the whole query x key volume, which is what we must avoid, so the windowed
  soft-argmax is written here).
* :func:`exact_point_matches` gives the paper protocol's answer: both maps bilinearly upsampled to their
  ORIGINAL image sizes (``nn.Upsample(mode='bilinear')``, align_corners=False), cosine against every target
  pixel, argmax. It never builds the upsampled C x H x W target: an upsampled vector is a bilinear combination
  of 4 cell vectors, so its dot with the query is the same combination of 4 cell dots, and its squared norm
  is a quadratic form in the Gram entries of those 4 cells (self, right, down and both diagonal neighbours),
  all computed once at feature resolution (:class:`UpsampledTarget`). Queries go in chunks of points and target
  rows, so only [n, h+1, W] dots and [n, rows, W] similarities exist at once, whatever the number of points.

Both report progress after each chunk through an optional ``progress(done, total)``, which may raise to stop
(ComfyUI's Cancel): long searches stop between chunks.

Ties resolve to the first maximum in row-major order, like ``numpy.argmax`` in the official script.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # similarities alive at once (16 MB of float32)
# Point x target-pixel cosines per chunk of the exact search (~0.5 s of work on a 2-core CPU), so a Cancel between
# chunks acts within about that even on large target images (a 2048 x 1536 target: 10 points a chunk).
EXACT_CHUNK_COSINES = 1 << 25

# progress(done, total): called after each chunk of a search; it may raise (e.g. ComfyUI's Cancel) to stop there.
ProgressFn = Callable[[int, int], None]


def nearest_cells(
    queries: torch.Tensor,
    keys: torch.Tensor,
    allowed: torch.Tensor | None = None,
    *,
    window: int = 3,
    temperature: float = 0.02,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best key cell for each query, refined to sub-cell precision.

    queries: [Q, C] unit vectors. keys: [C, h, w] unit vectors. allowed: bool [h, w] or None.
    window: odd soft-argmax window side in cells (1 disables refinement); temperature: softmax temperature on
    cosine similarities (<= 0 disables refinement). progress(done, total): called after each chunk of queries.
    Returns uv [Q, 2] (feature coordinates, cell j centre at u = j), score [Q] (cosine at the argmax cell) and
    index [Q] (flat argmax cell, row-major).
    """
    channels, h, w = keys.shape
    flat = keys.reshape(channels, h * w)
    blocked = None if allowed is None else ~allowed.reshape(h * w)
    rows = max(1, chunk_elements // max(1, h * w))
    total = -(-queries.shape[0] // rows)
    uvs, scores, indices = [], [], []
    for done, start in enumerate(range(0, queries.shape[0], rows), start=1):
        similarity = queries[start : start + rows] @ flat  # [q, h*w]
        if blocked is not None:
            similarity.masked_fill_(blocked, float("-inf"))
        index = similarity.argmax(dim=1)
        score = similarity.gather(1, index[:, None])[:, 0]
        uv = torch.stack([index % w, index // w], dim=1).to(torch.float32)
        if window > 1 and temperature > 0:
            uv = window_soft_argmax(similarity, index, (h, w), window, temperature)
        uvs.append(uv)
        scores.append(score)
        indices.append(index)
        if progress is not None:
            progress(done, total)
    return torch.cat(uvs), torch.cat(scores), torch.cat(indices)


def exact_point_matches(
    source: torch.Tensor,
    xy: torch.Tensor,
    source_size: tuple[int, int],
    target: torch.Tensor,
    target_size: tuple[int, int],
    allowed: torch.Tensor | None = None,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper-protocol matches of integer source pixels: argmax over the bilinearly upsampled target.

    source: [C, h_s, w_s] raw source features, upsampled to ``source_size`` (W, H) and read at xy [K, 2] (integer
    pixels). target: [C, h, w] raw target features, upsampled to ``target_size`` (W, H). allowed: bool [H, W]
    target pixels or None. The points go in chunks of :meth:`UpsampledTarget.points_per_chunk` (their source
    vectors read per chunk too), so memory stays bounded whatever K; ``progress(done, total)`` is called after each
    chunk and may raise to stop there.
    Returns xy [K, 2] int64 target pixels and score [K] (cosine of the two upsampled vectors).
    """
    prepared = UpsampledTarget.prepare(target, target_size, chunk_elements)
    padded = _replicate_pad(source.to(torch.float32))
    step = prepared.points_per_chunk(chunk_elements)
    total = -(-xy.shape[0] // step)
    found, scores = [], []
    for done, start in enumerate(range(0, xy.shape[0], step), start=1):
        queries = upsampled_vectors(source, xy[start : start + step].long(), source_size, padded)
        matched, score = prepared.nearest(queries, allowed, chunk_elements)
        found.append(matched)
        scores.append(score)
        if progress is not None:
            progress(done, total)
    return torch.cat(found), torch.cat(scores)


@dataclass(frozen=True)
class UpsampledTarget:
    """A target map [C, h, w] prepared once for exact search at its image size (W, H): the map padded by one
    replicated row and column, torch's bilinear indices and weights, and the norm of every upsampled target pixel
    ``norm`` [H, W] (a quadratic form in the Gram terms of its 4 cells; F.normalize's eps applied)."""

    pad: torch.Tensor
    row_index: torch.Tensor
    row_weight: torch.Tensor
    col_index: torch.Tensor
    col_weight: torch.Tensor
    norm: torch.Tensor

    @classmethod
    def prepare(cls, keys: torch.Tensor, image_size: tuple[int, int], chunk_elements: int) -> UpsampledTarget:
        width, height = image_size
        pad = _replicate_pad(keys.to(torch.float32))  # [C, h+1, w+1]: the "+1" neighbour of an edge cell is itself
        row_index, row_weight = interpolation_weights(height, keys.shape[1])
        j, b1 = interpolation_weights(width, keys.shape[2])
        b0 = 1.0 - b1
        gram = _neighbour_gram(pad, chunk_elements)
        # per feature row, columns upsampled: squared norms [h+1, W] and the cross term with the next row [h, W]
        row_norm2 = b0 * b0 * gram["self"][:, j] + b1 * b1 * gram["self"][:, j + 1] + 2 * b0 * b1 * gram["right"][:, j]
        row_cross = b0 * b0 * gram["down"][:, j] + b1 * b1 * gram["down"][:, j + 1]
        row_cross = row_cross + b0 * b1 * (gram["diag"][:, j] + gram["anti"][:, j])
        norm = torch.empty(height, width)
        rows = max(1, chunk_elements // width)
        for y0 in range(0, height, rows):  # in row chunks: a few [rows, W] temporaries at a time
            i = row_index[y0 : y0 + rows]
            a1 = row_weight[y0 : y0 + rows, None]
            a0 = 1.0 - a1
            norm2 = a0 * a0 * row_norm2[i] + a1 * a1 * row_norm2[i + 1] + 2 * a0 * a1 * row_cross[i]
            norm[y0 : y0 + rows] = norm2.clamp_min(0).sqrt().clamp_min(1e-12)  # F.normalize's eps
        return cls(pad, row_index, row_weight, j, b1, norm)

    def points_per_chunk(self, chunk_elements: int) -> int:
        """Queries whose column-interpolated dots ([n, h+1, W]) fit in ``chunk_elements`` and whose cosines with
        every target pixel stay within ``EXACT_CHUNK_COSINES``; at least one."""
        width, height = self.col_index.shape[0], self.row_index.shape[0]
        memory = chunk_elements // (self.pad.shape[1] * width)
        return max(1, min(memory, EXACT_CHUNK_COSINES // (height * width)))

    def nearest(self, queries: torch.Tensor, allowed: torch.Tensor | None, chunk_elements: int):
        """Best target pixel of each query [n, C] (keep n to :meth:`points_per_chunk`): xy [n, 2] int64, score [n]."""
        height, width = self.row_index.shape[0], self.col_index.shape[0]
        queries = F.normalize(queries.to(torch.float32), dim=1)
        pad, j, b1 = self.pad, self.col_index, self.col_weight
        # Columns first (as torch's kernel does), for all h+1 rows at once: [n, h+1, W] dots.
        dots = (queries @ pad.reshape(pad.shape[0], -1)).reshape(-1, *pad.shape[1:])
        dots = (1.0 - b1) * dots[..., j] + b1 * dots[..., j + 1]
        rows = max(1, chunk_elements // max(1, queries.shape[0] * width))
        best = torch.full((queries.shape[0],), float("-inf"))
        best_index = torch.zeros(queries.shape[0], dtype=torch.long)
        for y0 in range(0, height, rows):
            i = self.row_index[y0 : y0 + rows]
            a1 = self.row_weight[y0 : y0 + rows, None]
            # in place: only two [n, r, W] blocks exist at a time
            cosine = dots[:, i].mul_(1.0 - a1).addcmul_(dots[:, i + 1], a1)
            cosine.div_(self.norm[y0 : y0 + rows])
            if allowed is not None:
                cosine.masked_fill_(~allowed[y0 : y0 + rows], float("-inf"))
            index = cosine.flatten(1).argmax(dim=1)  # argmax: documented to return the first maximum
            score = cosine.flatten(1).gather(1, index[:, None])[:, 0]
            better = score > best  # strict: an earlier row keeps a tie
            best = torch.where(better, score, best)
            best_index = torch.where(better, index + y0 * width, best_index)
        return torch.stack([best_index % width, best_index // width], dim=1), best


def progress_part(progress: ProgressFn | None, part: int, parts: int) -> ProgressFn | None:
    """``progress`` for part ``part`` (0-based) of ``parts`` equal shares of a job: an inner loop's (done, total) is
    reported as (part * total + done, parts * total), so the fraction shown only grows. None stays None."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(part * total + done, parts * total)

    return report


def upsampled_vectors(features: torch.Tensor, xy: torch.Tensor, image_size: tuple[int, int],
                      padded: torch.Tensor | None = None) -> torch.Tensor:
    """Vectors of ``features`` [C, h, w] upsampled (bilinear, align_corners=False) to ``image_size`` (W, H),
    read at integer pixels xy [K, 2] -> [K, C], without upsampling the whole map. padded: the map as
    ``_replicate_pad`` makes it, when the caller reads several chunks of points (padded once)."""
    width, height = image_size
    row_index, row_weight = interpolation_weights(height, features.shape[1])
    col_index, col_weight = interpolation_weights(width, features.shape[2])
    x, y = xy[:, 0].long(), xy[:, 1].long()
    i, j, a1, b1 = row_index[y], col_index[x], row_weight[y], col_weight[x]
    pad = _replicate_pad(features.to(torch.float32)) if padded is None else padded
    a0, b0 = 1.0 - a1, 1.0 - b1
    # same evaluation order as torch's upsample_bilinear2d kernel
    top = b0 * pad[:, i, j] + b1 * pad[:, i, j + 1]
    vectors = a0 * top + a1 * (b0 * pad[:, i + 1, j] + b1 * pad[:, i + 1, j + 1])
    return vectors.T


def interpolation_weights(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source index i0 [out] and weight of i0 + 1 [out] of torch's bilinear resize, align_corners=False.

    ``(torch.arange(out) + 0.5) * (in / out) - 0.5`` clamped at 0, in float32 like torch's kernel."""
    if out_size == in_size:  # torch copies in this case
        return torch.arange(out_size), torch.zeros(out_size)
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    real = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
    index = real.floor().long().clamp_max(in_size - 1)
    weight = (real - index).clamp(0.0, 1.0)
    # Past the last cell centre torch blends the last cell with itself; weight 0 gives the same vector with
    # bitwise-equal values along the whole border band, so ties there resolve to the first pixel, not to noise.
    return index, weight.masked_fill(index == in_size - 1, 0.0)


def sample_descriptors(features: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear read of features [B, C, h, w] at feature coordinates uv [B, K, 2] -> [B, K, C].

    Coordinates outside the grid are clamped to the edge cells, as bilinear upsampling does.
    """
    h, w = features.shape[-2:]
    size = torch.tensor([w, h], dtype=torch.float32)
    grid = (uv.to(torch.float32) + 0.5) * 2.0 / size - 1.0  # align_corners=False convention
    sampled = F.grid_sample(
        features.to(torch.float32), grid.unsqueeze(1), mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled[:, :, 0].transpose(1, 2)


def window_soft_argmax(
    similarity: torch.Tensor, index: torch.Tensor, grid: tuple[int, int], window: int, temperature: float
) -> torch.Tensor:
    """Softmax-weighted mean cell position in a window x window neighbourhood of each argmax -> uv [q, 2]."""
    h, w = grid
    radius = window // 2
    offsets = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    rows = (index // w)[:, None] + dy.reshape(1, -1)  # [q, window^2]
    cols = (index % w)[:, None] + dx.reshape(1, -1)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)
    values = similarity.gather(1, flat).masked_fill(~inside, float("-inf"))  # masked keys are already -inf
    weights = torch.softmax((values - values.amax(dim=1, keepdim=True)) / temperature, dim=1)
    weights = torch.nan_to_num(weights)
    return torch.stack([(weights * cols).sum(1), (weights * rows).sum(1)], dim=1).to(torch.float32)


def _replicate_pad(features: torch.Tensor) -> torch.Tensor:
    """[C, h, w] -> [C, h + 1, w + 1] with the last row and column repeated."""
    return F.pad(features.unsqueeze(0), (0, 1, 0, 1), mode="replicate")[0]


def _neighbour_gram(pad: torch.Tensor, chunk_elements: int) -> dict[str, torch.Tensor]:
    """Dot products of each padded cell [C, h+1, w+1] with itself and its right, down and diagonal
    neighbours, accumulated over channel chunks so no full-size product is ever held."""
    pairs = {
        "self": lambda p: (p, p),
        "right": lambda p: (p[:, :, :-1], p[:, :, 1:]),
        "down": lambda p: (p[:, :-1, :], p[:, 1:, :]),
        "diag": lambda p: (p[:, :-1, :-1], p[:, 1:, 1:]),
        "anti": lambda p: (p[:, :-1, 1:], p[:, 1:, :-1]),
    }
    step = max(1, chunk_elements // (pad.shape[1] * pad.shape[2]))
    gram = {}
    for name, views in pairs.items():
        total = None
        for c0 in range(0, pad.shape[0], step):
            a, b = views(pad[c0 : c0 + step])
            part = (a * b).sum(0)
            total = part if total is None else total + part
        gram[name] = total
    return gram
