"""The (Gaussian, pixel) pairs the sparse Gaussian rasterizer composites, found without visiting
every pixel of every radius box.

A pair is kept when α = o·exp(−σ) ≥ 1/255 (σ = ½ dᵀΣ⁻¹d at the pixel centre) and the pixel's
transmittance after it stays above 1e-4. Two things keep the candidates few, neither changing
which pairs are kept (the same float arithmetic decides every pair, as before):
- each row of a Gaussian's box is cut to the span where σ ≤ ln(255·o) can hold (the roots of the
  quadratic in x, widened by a pixel and a margin on σ: every pair the test keeps lies inside);
- the depth-sorted Gaussians go in chunks, and after each chunk the pixels whose transmittance has
  already fallen past the cut-off are done: later (deeper) Gaussians' pairs there would all be
  dropped by the cut-off, so their rows and pairs are not generated at all.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.renderers.segments import segment_exclusive_cumsum, segments

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
DEPTH_CHUNKS = 8  # passes over the depth order; each ends by marking the pixels that are done
SIGMA_MARGIN = 1e-3  # on ln(255·o) for the row spans: far above float32 rounding of σ (~1e-6)
DONE_MARGIN = 1e-6  # on ln(1e-4) for done pixels: far above float64 rounding of the sums


def pair_sigma(mu: Tensor, conic: Tensor, row_py: Tensor, row: Tensor, px: Tensor) -> Tensor:
    """½ dᵀΣ⁻¹d [M] at pixel centres: rows carry the Gaussian (mu [R,2], conic [R,3]) and the pixel
    row row_py [R]; each pair names its row [M] and its pixel column px [M]."""
    take = lambda values: values.index_select(0, row)  # noqa: E731 (several times faster than [row] on a CPU, forward and backward)
    dy = row_py.to(mu.dtype) + 0.5 - mu[:, 1]
    linear, constant = conic[:, 1] * dy, 0.5 * conic[:, 2] * dy * dy
    dx = px.to(mu.dtype) + 0.5 - take(mu[:, 0])
    return take(0.5 * conic[:, 0]) * dx * dx + take(linear) * dx + take(constant)


def _boxes(m: Tensor, r: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixel bounds x0 [G], y0 [G], box width [G] and height [G] of the pixels whose centre lies
    within mean ± radius (m [G,2], r [G,2] as float; culled Gaussians get an empty box)."""
    x0 = (m[:, 0] - r[:, 0] - 0.5).ceil().clamp(0, width).long()
    x1 = (m[:, 0] + r[:, 0] - 0.5).floor().clamp(-1, width - 1).long()
    y0 = (m[:, 1] - r[:, 1] - 0.5).ceil().clamp(0, height).long()
    y1 = (m[:, 1] + r[:, 1] - 0.5).floor().clamp(-1, height - 1).long()
    culled = r[:, 0] <= 0
    box_w = (x1 - x0 + 1).clamp_min(0).masked_fill(culled, 0)
    box_h = (y1 - y0 + 1).clamp_min(0).masked_fill(culled, 0)
    return x0, y0, box_w, box_h


def row_spans(mu: Tensor, conic: Tensor, opacity: Tensor, row_py: Tensor, x0: Tensor, box_w: Tensor) -> tuple[Tensor, Tensor]:
    """Per row (mu [R,2], conic [R,3], opacity [R], pixel row row_py [R], box columns x0 [R] and
    box_w [R]): the first column xa [R] and the count [R] of the box's pixels where σ ≤ ln(255·o)
    can hold. In float64: with dy fixed, σ(dx) = ½a dx² + b dy dx + ½c dy² ≤ L has the roots
    dx = (−b dy ± √(2aL − det·dy²)) / a; a non-positive-definite conic keeps its whole box row."""
    mu, conic = mu.double(), conic.double()
    a, b, c = conic.unbind(-1)
    level = torch.log(opacity.double().clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD) + SIGMA_MARGIN
    dy = row_py.double() + 0.5 - mu[:, 1]
    det = a * c - b * b
    disc = 2.0 * a * level - det * dy * dy
    definite = (a > 0) & (det > 0)
    safe_a = torch.where(definite, a, torch.ones_like(a))
    half = disc.clamp_min(0).sqrt() / safe_a
    centre = mu[:, 0] - 0.5 - b * dy / safe_a  # the column index whose centre is at the chord's middle
    x1 = x0 + box_w - 1
    xa = torch.where(definite, torch.maximum(x0, (centre - half).ceil().long() - 1), x0)
    xb = torch.where(definite, torch.minimum(x1, (centre + half).floor().long() + 1), x1)
    count = (xb - xa + 1).clamp_min(0).masked_fill(definite & (disc < 0), 0)
    return xa, count


def _open_in_box(open_table: Tensor, camera: Tensor, x0: Tensor, y0: Tensor, box_w: Tensor, box_h: Tensor) -> Tensor:
    """Whether each box [G] holds a pixel not yet done (open_table [C,H+1,W+1]: the summed-area
    table of the open pixels of each camera)."""
    C, H1, W1 = open_table.shape
    flat = open_table.reshape(-1)
    corner = lambda y, x: flat.index_select(0, (camera * H1 + y) * W1 + x)  # noqa: E731
    x1, y1 = x0 + box_w, y0 + box_h
    return corner(y1, x1) - corner(y0, x1) - corner(y1, x0) + corner(y0, x0) > 0


def _chunk_rows(flat: Tensor, m_all: Tensor, c_all: Tensor, r_all: Tensor, o_all: Tensor, open_table: Optional[Tensor],
                N: int, width: int, height: int) -> dict[str, Tensor]:
    """The box rows of the Gaussians ``flat`` [G] (indices into C·N, depth order) whose box still
    holds an open pixel (all, without ``open_table``), cut to their spans: gid [R], py [R], xa [R], count [R]."""
    arange = lambda n: torch.arange(n, device=flat.device)  # noqa: E731
    m, r = m_all.index_select(0, flat), r_all.index_select(0, flat).to(m_all.dtype)
    x0, y0, box_w, box_h = _boxes(m, r, width, height)
    if open_table is not None:
        box_h = box_h * _open_in_box(open_table, flat // N, x0.clamp(max=width), y0.clamp(max=height), box_w, box_h)
    owner = torch.repeat_interleave(arange(len(flat)), box_h)
    py = arange(len(owner)) + (y0 - (torch.cumsum(box_h, 0) - box_h)).index_select(0, owner)
    gid = flat.index_select(0, owner)
    xa, count = row_spans(m.index_select(0, owner), c_all.index_select(0, gid), o_all.index_select(0, gid), py,
                          x0.index_select(0, owner), box_w.index_select(0, owner))
    return {"gid": gid, "py": py, "xa": xa, "count": count}


def _drop_done_rows(rows: dict[str, Tensor], open_prefix: Tensor, N: int, height: int, width: int) -> dict[str, Tensor]:
    """Rows with at least one pixel not yet done in their span (open_prefix [C·H, W+1]: running
    count of open pixels along each image row)."""
    line = (rows["gid"] // N) * height + rows["py"]
    xa = rows["xa"].clamp(0, width)
    xb = (rows["xa"] + rows["count"]).clamp(0, width)
    flat_prefix = open_prefix.reshape(-1)
    still_open = flat_prefix.index_select(0, line * (width + 1) + xb) > flat_prefix.index_select(0, line * (width + 1) + xa)
    keep = torch.nonzero(still_open & (rows["count"] > 0))[:, 0]
    return {key: value.index_select(0, keep) for key, value in rows.items()}


def _chunk_pairs(rows: dict[str, Tensor], m_all: Tensor, c_all: Tensor, o_all: Tensor, done: Tensor,
                 N: int, height: int, width: int) -> dict[str, Tensor]:
    """The pairs of ``rows`` with α ≥ 1/255 at pixels not yet done: row [M] (into ``rows``), px [M],
    pixel [M] (into C·H·W), alpha [M]."""
    count = rows["count"]
    row = torch.repeat_interleave(torch.arange(len(count), device=count.device), count)
    px = torch.arange(len(row), device=row.device) + (rows["xa"] - (torch.cumsum(count, 0) - count)).index_select(0, row)
    sigma = pair_sigma(m_all.index_select(0, rows["gid"]), c_all.index_select(0, rows["gid"]), rows["py"], row, px)
    alpha = o_all.index_select(0, rows["gid"]).index_select(0, row) * torch.exp(-sigma.clamp(max=60.0))
    pixel = (((rows["gid"] // N) * height + rows["py"]) * width).index_select(0, row) + px
    keep = torch.nonzero((sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done.index_select(0, pixel))[:, 0]
    return {"row": row.index_select(0, keep), "px": px.index_select(0, keep), "pixel": pixel.index_select(0, keep),
            "alpha": alpha.index_select(0, keep)}


def _log_keep(alpha: Tensor, max_alpha: float) -> Tensor:
    """log(1 − α) per pair in float64, from α clamped as the compositing clamps it."""
    return torch.log1p(-alpha.clamp(max=max_alpha)).double()


def candidate_pairs(means2d: Tensor, conics: Tensor, opacities: Tensor, radii: Tensor, order: Tensor, width: int,
                    height: int, max_alpha: float = 0.999, chunks: int = DEPTH_CHUNKS) -> dict[str, Tensor]:
    """Every pair with α ≥ 1/255 except some that lie past a pixel's transmittance cut-off, sorted
    by pixel and, within a pixel, by depth. Inputs detached: means2d [C,N,2], conics [C,N,3],
    opacities [C,N], radii [C,N,2], order [C,N] (depth order per camera).
    → row_gid [R] (index into C·N), row_py [R]; per pair: row [M], px [M], pixel [M], alpha [M]."""
    C, N = order.shape
    flat = torch.arange(C, device=order.device)[:, None] * N + order
    m_all, c_all, r_all, o_all = means2d.reshape(-1, 2), conics.reshape(-1, 3), radii.reshape(-1, 2), opacities.reshape(-1)
    log_T = torch.zeros(C * height * width, dtype=torch.float64, device=order.device)
    done = torch.zeros(C * height * width, dtype=torch.bool, device=order.device)
    parts, rows_seen = [], 0
    bounds = [round(N * k / chunks) for k in range(chunks + 1)]
    for k0, k1 in zip(bounds[:-1], bounds[1:]):
        if k1 == k0 and parts:  # (one pass even without Gaussians, so the results exist)
            continue
        open_prefix = open_table = None
        if k0 > 0:
            open_prefix = F.pad(torch.cumsum((~done).view(C * height, width).to(torch.int32), 1), (1, 0))
            open_table = F.pad(torch.cumsum(open_prefix.view(C, height, width + 1), 1), (0, 0, 1, 0))
        rows = _chunk_rows(flat[:, k0:k1].reshape(-1), m_all, c_all, r_all, o_all, open_table, N, width, height)
        if open_prefix is not None:
            rows = _drop_done_rows(rows, open_prefix, N, height, width)
        pairs = _chunk_pairs(rows, m_all, c_all, o_all, done, N, height, width)
        log_T.index_add_(0, pairs["pixel"], _log_keep(pairs["alpha"], max_alpha))
        done = log_T <= math.log(TRANSMITTANCE_MIN) - DONE_MARGIN
        pairs["row"] = pairs["row"] + rows_seen
        rows_seen += len(rows["gid"])
        parts.append((rows, pairs))
    cat = lambda group, key: torch.cat([part[group][key] for part in parts])  # noqa: E731
    # stable: depth order survives inside each pixel; int32 keys sort about 3× faster than int64
    key = cat(1, "pixel")
    pixel, perm = torch.sort(key.int() if C * height * width < 2**31 else key, stable=True)
    return {"row_gid": cat(0, "gid"), "row_py": cat(0, "py"), "pixel": pixel.long(),
            **{key: cat(1, key).index_select(0, perm) for key in ("row", "px", "alpha")}}


def live_pairs(means2d: Tensor, conics: Tensor, opacities: Tensor, radii: Tensor, order: Tensor, width: int,
               height: int, max_alpha: float = 0.999, chunks: int = DEPTH_CHUNKS) -> dict[str, Tensor]:
    """The pairs a pixel takes: α ≥ 1/255 and before the one that would bring its transmittance to
    1e-4 (past it a pair's weight and gradient are exactly 0, and such pairs come after every live
    one of their pixel, so dropping them leaves every live pair's sums as they were). Arguments as
    :func:`candidate_pairs`; → row_gid [R], row_py [R], row [M], px [M], pixel [M], first [S]
    (each pixel's first pair), segment [M] (each pair's pixel run)."""
    e = candidate_pairs(means2d, conics, opacities, radii, order, width, height, max_alpha, chunks)
    log_t = _log_keep(e["alpha"], max_alpha)
    run = segments(e["pixel"])
    live = segment_exclusive_cumsum(log_t, run["first"], run["segment"]) + log_t > math.log(TRANSMITTANCE_MIN)
    if bool(live.all()):
        return {key: e[key] for key in ("row_gid", "row_py", "row", "px", "pixel")} | run
    keep = torch.nonzero(live)[:, 0]
    kept = {key: e[key].index_select(0, keep) for key in ("row", "px", "pixel")}
    return {"row_gid": e["row_gid"], "row_py": e["row_py"], **kept, **segments(kept["pixel"])}
