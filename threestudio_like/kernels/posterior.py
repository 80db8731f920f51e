"""The embedded prior's posterior mean in one streaming pass over its references (csrc/posterior.cpp)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def posterior_mean(x: Tensor, row_of: Tensor, alpha_bar: Tensor, log_weights: Tensor, refs: Tensor,
                   sq_norms: Tensor, cut: float) -> Tensor:
    """Σ_i softmax_i(L_n) r_i [N,D] with L_ni = (√ᾱ_n x_u(n)·r_i − ᾱ_n‖r_i‖²/2)/(1 − ᾱ_n) + log w_ni.

    x [U,D] the distinct (centred) noisy images, row_of [N] long which one each row is, alpha_bar [N],
    log_weights [N,K] (−∞: the reference is excluded and never read), refs [K,D] and their squared
    norms [K], all float32; references whose posterior is below ``cut`` × the row's running maximum
    are left out of the sum (not of the normaliser)."""
    a = alpha_bar.to(torch.float32)
    return torch.ops.threestudio_like_cpu.posterior_mean(
        x, row_of, a.sqrt(), 0.5 * a, 1.0 - a, log_weights, refs, sq_norms, math.log(cut))
