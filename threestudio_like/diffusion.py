"""The DDPM arithmetic, in one place: the schedule, adding noise, ε ↔ x̂0 ↔ v, classifier-free guidance
and a deterministic DDIM step. Priors, guidance methods and benchmarks all use these.

Notation: ᾱ_t = alphas_cumprod[t]; x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε; v = √ᾱ_t ε − √(1 − ᾱ_t) x0.
``alpha_bar`` arguments are already broadcast to the images' shape (see :func:`alpha_bar_at`).
"""
from __future__ import annotations

import torch
from torch import Tensor


def ddpm_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, beta_schedule: str = "scaled_linear"
) -> Tensor:
    """[T] ᾱ_t of the DDPM schedule (Stable Diffusion's defaults)."""
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule={beta_schedule!r} is not supported; use scaled_linear or linear")
    return torch.cumprod(1.0 - betas, dim=0).float()


def alpha_bar_at(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """ᾱ_t for timesteps t [B], shaped [B,1,…] to broadcast against ``like`` [B,…], in its dtype."""
    values = alphas_cumprod.to(like.device)[t.to(like.device)]
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def add_noise(x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """x_t = √ᾱ x0 + √(1 − ᾱ) ε."""
    return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x̂0 = (x_t − √(1 − ᾱ) ε) / √ᾱ."""
    return (x_t - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """ε = (x_t − √ᾱ x0) / √(1 − ᾱ)."""
    return (x_t - alpha_bar.sqrt() * x0) / (1.0 - alpha_bar).sqrt()


def eps_from_v(v: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
    """ε = √ᾱ v + √(1 − ᾱ) x_t (a v-prediction model's output as ε)."""
    return alpha_bar.sqrt() * v + (1.0 - alpha_bar).sqrt() * x_t


def v_target(x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """v = √ᾱ ε − √(1 − ᾱ) x0 (the training target of a v-prediction model)."""
    return alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * x0


def guided(eps_cond: Tensor, eps_null: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance, diffusers' convention: ε_∅ + s (ε_y − ε_∅)."""
    return eps_null + scale * (eps_cond - eps_null)


def ddim_step(x_from: Tensor, eps: Tensor, alpha_bar_from: Tensor, alpha_bar_to: Tensor) -> Tensor:
    """One deterministic DDIM step (either direction): √ᾱ_to x̂0(x_from, ε) + √(1 − ᾱ_to) ε."""
    return add_noise(x0_from_eps(x_from, eps, alpha_bar_from), eps, alpha_bar_to)
