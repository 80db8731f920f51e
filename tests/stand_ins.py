"""Small analytic stand-ins for tests: a prior whose predictions are a known function of its inputs."""
from __future__ import annotations

import torch
from torch import Tensor

from threestudio_like.diffusion import ddpm_alphas_cumprod
from threestudio_like.priors.base import DiffusionPrior


class LinearPrior(DiffusionPrior):
    """ε̂(x_t; cond, t) = a·x_t + cond·(1 + t/T): deterministic, cheap, and different for cond and ∅.

    Conditions are [B,1,1,1] scalars: the prompt's is +0.5 (front views +0.7), the null one −0.25.
    """

    def __init__(self, a: float = 0.3) -> None:
        super().__init__(cfg=None, device="cpu")
        self.a = a
        self.register_buffer("alphas_cumprod", ddpm_alphas_cumprod())

    def encode_images(self, rgb: Tensor) -> Tensor:
        return rgb * 2.0 - 1.0

    def decode_latents(self, latents: Tensor) -> Tensor:
        return (latents + 1.0) / 2.0

    def condition(self, text, cameras, views=None) -> Tensor:
        values = [0.7 if v == "front" else 0.5 for v in views] if views else [0.5] * len(cameras)
        return torch.tensor(values).view(-1, 1, 1, 1)

    def null_condition(self, text, cameras) -> Tensor:
        return torch.full((len(cameras), 1, 1, 1), -0.25)

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.a * x_t + cond * (1.0 + t.view(-1, 1, 1, 1).float() / self.num_train_timesteps)
