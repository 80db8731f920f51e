"""Leaving out, before the posterior pass, the references whose posterior provably cannot reach float32
resolution: an exact pruning by a lower bound on the distances.

The embedded prior's logit of reference i for a (centred) noisy image x is
L_i = log w_i − ‖x − √ᾱ r_i‖² / 2(1 − ᾱ). With V [m,D] an orthonormal basis of a subspace that holds
most of the references' energy (their leading principal directions, found once per reference set),
Pythagoras and the triangle inequality in the orthogonal complement give, for every i,

    ‖x − √ᾱ r_i‖² ≥ ‖Vx − √ᾱ Vr_i‖² + (‖(I − VᵀV)x‖ − √ᾱ ‖(I − VᵀV)r_i‖)²,

so an upper bound U_i ≥ L_i costs m numbers per reference instead of D. The reference with the
largest bound is read in full; its logit L* is at most the row's largest. Every reference with
U_i < L* + log cut then has a posterior below ``cut`` times the row's largest: the posterior pass
would leave it out of its weighted sum anyway (embedded.exact_x0), and all of them together change the
normaliser by less than K·cut = 2⁻²⁴ of it. Such references get log-weight −∞ for that row; a
reference pruned for every row of a chunk is never read. The bound is computed in float32 and
loosened by a relative margin far above that arithmetic's rounding; a NaN row prunes nothing (NaN
compares false), so the pass still gives it NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MARGIN = 1e-3  # of ‖x‖² + ᾱ‖r‖²: the float32 bound's rounding is below 1e-5 of it
# Below this ᾱ (t ≳ 400 of 1000) the bound keeps most references (the prompt's noise dominates the
# distances, the camera weights decide) and the pre-pass costs more than it saves (docs/BENCHMARKS.md)
MIN_ALPHA_BAR = 0.4


@dataclass
class ReferenceBasis:
    """V [m,D] orthonormal rows (float32); coords [K,m] = r_i·V, their squared norms [K] and
    residual [K] = ‖(I − VᵀV) r_i‖."""

    V: Tensor
    coords: Tensor
    coord_sq: Tensor
    residual: Tensor


def reference_basis(refs: Tensor, rank: int, seed: int = 0) -> ReferenceBasis:
    """The leading ``rank`` directions of the rows of ``refs`` [K,D] (a randomised range finder with
    one power iteration; only the basis's orthonormality matters for the bound, not how close it is to
    the principal directions, so the products are float32 and the two orthonormalisations float64),
    with the references' coordinates and residual norms."""
    K, D = refs.shape
    m = max(1, min(rank, K, D))
    generator = torch.Generator().manual_seed(seed)
    refs = refs.float()
    probe = torch.randn(D, min(m + 8, K, D), generator=generator)
    sample = refs @ (refs.T @ (refs @ probe))  # [K,m+8]: the range of refs·refsᵀ, sharpened once
    left = torch.linalg.qr(sample.double()).Q.float()
    V = torch.linalg.qr((left.T @ refs).T.double()).Q.T[:m].float().contiguous()  # [m,D] orthonormal rows
    r64 = refs.double()  # the residuals are a difference of nearly equal norms: float64
    coords = r64 @ V.double().T
    coord_sq = (coords * coords).sum(dim=1)
    residual = ((r64 * r64).sum(dim=1) - coord_sq).clamp_min(0.0).sqrt()
    return ReferenceBasis(V, coords.float().contiguous(), coord_sq.float(), residual.float())


def prune_log_weights(x: Tensor, row_of: Tensor, a: Tensor, log_w: Tensor, refs: Tensor, sq_norms: Tensor,
                      basis: ReferenceBasis, log_cut: float) -> Tensor:
    """``log_w`` [n,K] with −∞ where reference i cannot reach ``exp(log_cut)`` of row n's largest
    posterior. x [U,D] the distinct centred noisy images, row_of [n] which one each row is, a [n] ᾱ,
    refs [K,D] centred and their squared norms [K] (all float32)."""
    proj = x @ basis.V.T  # [U,m]
    x64, p64 = x.double(), proj.double()
    x_sq, p_sq = (x64 * x64).sum(dim=1), (p64 * p64).sum(dim=1)
    x_res = (x_sq - p_sq).clamp_min(0.0).sqrt().float()
    x_sq, p_sq = x_sq.float(), p_sq.float()
    root = a.sqrt()[:, None]  # [n,1]
    # ‖Vx − √ᾱVr‖² = ‖Vx‖² − 2√ᾱ Vx·Vr + ᾱ‖Vr‖², and the complement's term, per row
    cross = (proj @ basis.coords.T).index_select(0, row_of)  # [n,K]
    inside = p_sq.index_select(0, row_of)[:, None] - 2.0 * root * cross + a[:, None] * basis.coord_sq
    outside = (x_res.index_select(0, row_of)[:, None] - root * basis.residual) ** 2
    scale = x_sq.index_select(0, row_of)[:, None] + a[:, None] * sq_norms
    bound = (inside.clamp_min(0.0) + outside - MARGIN * scale).clamp_min(0.0)
    two_var = 2.0 * (1.0 - a)[:, None]
    upper = log_w - bound / two_var  # ≥ every logit L_ni
    best = upper.argmax(dim=1)  # [n]: read in full, in float64
    diff = x.index_select(0, row_of).double() - root.double() * refs.index_select(0, best).double()
    exact = log_w.gather(1, best[:, None]).double() - (diff * diff).sum(dim=1, keepdim=True) / two_var.double()
    pruned = upper.double() < exact + log_cut  # NaN anywhere in a row: False, nothing pruned
    return log_w.masked_fill(pruned, float("-inf"))
