"""The DiffusionPrior contract: what a guidance method may ask of a frozen 2D diffusion model.

Guidance never knows which prior it talks to. Conditions are tensors whose first dimension is the
batch, so a guidance can concatenate a conditional and a null condition and run one batched forward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from threestudio_like.data.cameras import Cameras


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


class DiffusionPrior(nn.Module):
    """A frozen text-conditioned diffusion model seen through the operations guidance needs.

    Subclasses set ``num_train_timesteps`` and the buffer ``alphas_cumprod`` [T] and implement the
    methods below. ``predict_noise`` always returns ε, whatever the model predicts internally.
    """

    num_train_timesteps: int = 1000
    alphas_cumprod: Tensor

    def __init__(self, cfg, device: torch.device, sampler=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.device_ = torch.device(device)

    def prepare(self, text: str) -> None:
        """Check (and pre-compute what it can for) prompt ``text`` at start-up, so a prompt the
        prior cannot use fails before training starts. Raises ValueError with one line."""

    # --- image space <-> model space ---------------------------------------------------------
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B,3,H,W] in [0,1] → model inputs x [B,C,h,w] (keeps autograd)."""
        raise NotImplementedError

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Model inputs [B,C,h,w] → rgb [B,3,H,W] in [0,1] (for visualisation)."""
        raise NotImplementedError

    # --- conditioning ------------------------------------------------------------------------
    def condition(self, text: str, cameras: Cameras, views: Optional[list[str]] = None) -> Tensor:
        """Condition [B,...] for prompt ``text`` seen by ``cameras``.

        ``views`` holds one front/side/back/overhead label per camera when the caller wants
        view-dependent conditioning, or None for the plain prompt.
        """
        raise NotImplementedError

    def null_condition(self, text: str, cameras: Cameras) -> Tensor:
        """Condition [B,...] of the negative/empty prompt ``text`` (the ∅ of classifier-free guidance)."""
        raise NotImplementedError

    # --- the model -----------------------------------------------------------------------------
    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """ε̂(x_t; cond, t): x_t [N,C,h,w], t [N] integer timesteps, cond [N,...] → [N,C,h,w]."""
        raise NotImplementedError

    def variational_copy(self, rank: int) -> nn.Module:
        """A trainable camera-conditioned score model ε_φ for VSD/ESD (LoRA copy, or a small UNet)."""
        raise NotImplementedError(f"{type(self).__name__} offers no variational copy")
