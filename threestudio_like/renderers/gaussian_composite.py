"""Front-to-back compositing of packed (Gaussian, pixel) pairs, with its backward written out.

The pairs come sorted by pixel and, within a pixel, by depth (renderers/gaussian_pairs.py). Pair j
of a pixel has weight w_j = α_j T_j with T_j = Π_{k<j} (1 − α_k); the pixel's colour is Σ_j w_j f_j
and its opacity A = 1 − Π_j (1 − α_j). The backward is 3DGS's:

    ∂L/∂f_j = w_j g,   ∂L/∂α_j = T_j (g·f_j) − (Σ_{k>j} w_k (g·f_k) − g_A (1 − A)) / (1 − α_j)

(g the pixel's colour gradient, g_A its opacity gradient) — what autograd gives through the log
transmittance, without its graph: one gather of g per pair and one reverse running sum, in float64
like the forward's. α must already be clamped below 1 (the renderer's max_alpha).
"""
from __future__ import annotations

import torch
from torch import Tensor

from threestudio_like.renderers.segments import segment_exclusive_cumsum, segment_exclusive_sum_after


class CompositePairs(torch.autograd.Function):
    """alpha [M], colors [M,D] (each pair's Gaussian features), pixel [M] (into P pixels), first [S],
    segment [M] (the pixel runs) → image [P,D] = Σ w f, alpha image [P] = 1 − Π (1 − α)."""

    @staticmethod
    def forward(ctx, alpha: Tensor, colors: Tensor, pixel: Tensor, first: Tensor, segment: Tensor, n_pixels: int):
        log_t = torch.log1p(-alpha).double()
        T = torch.exp(segment_exclusive_cumsum(log_t, first, segment)).to(alpha.dtype)
        weight = alpha * T
        image = colors.new_zeros(n_pixels, colors.shape[1]).index_add_(0, pixel, weight[:, None] * colors)
        final_T = torch.exp(log_t.new_zeros(n_pixels).index_add_(0, pixel, log_t))
        ctx.save_for_backward(alpha, colors, pixel, first, segment, T, weight, final_T)
        return image, (1 - final_T).to(alpha.dtype)

    @staticmethod
    def backward(ctx, g_image: Tensor, g_alpha_image: Tensor):
        alpha, colors, pixel, first, segment, T, weight, final_T = ctx.saved_tensors
        g_pair = g_image.index_select(0, pixel)
        dot = (g_pair * colors).sum(1)
        behind = segment_exclusive_sum_after((weight * dot).double(), first, segment)
        behind = behind - (g_alpha_image.double() * final_T).index_select(0, pixel)
        g_alpha = T * dot - (behind / (1 - alpha.double())).to(alpha.dtype)
        g_colors = g_pair * weight[:, None] if ctx.needs_input_grad[1] else None
        return g_alpha, g_colors, None, None, None, None
