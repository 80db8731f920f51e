"""Backgrounds: what a ray that leaves the object sees. ``forward(dirs [B,H,W,3]) → rgb [B,H,W,3]``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import Tensor, nn

from threestudio_like.registry import register
from threestudio_like.utils.checks import check_at_least, check_between, check_learning_rates, check_length


class Background(nn.Module):
    """``forward(dirs [B,H,W,3], training) → rgb [B,H,W,3]``; a learned one offers its parameters."""

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups ({"params", "lr", "name"}); none for a fixed background."""
        return []


@dataclass
class SolidColorConfig:
    color: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def __post_init__(self) -> None:
        check_length(self, 3, "color")
        check_between(self, 0.0, 1.0, "color")


@register("background", "solid-color")
class SolidColorBackground(Background):
    Config = SolidColorConfig

    def __init__(self, cfg: SolidColorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("rgb", torch.tensor(cfg.color, dtype=torch.float32), persistent=False)

    def forward(self, dirs: Tensor, training: bool = False) -> Tensor:
        return self.rgb.to(dirs.device).expand(*dirs.shape[:-1], 3)


@dataclass
class RandomColorConfig:
    eval_color: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def __post_init__(self) -> None:
        check_length(self, 3, "eval_color")
        check_between(self, 0.0, 1.0, "eval_color")


@register("background", "random-color")
class RandomColorBackground(Background):
    """One random solid color per image while training, a fixed one for evaluation."""

    Config = RandomColorConfig

    def __init__(self, cfg: RandomColorConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, dirs: Tensor, training: bool = False) -> Tensor:
        if training:
            color = torch.rand(dirs.shape[0], 1, 1, 3, device=dirs.device)
            return color.expand(*dirs.shape[:-1], 3)
        return torch.tensor(self.cfg.eval_color, device=dirs.device).expand(*dirs.shape[:-1], 3)


@dataclass
class EnvironmentMapConfig:
    hidden_dim: int = 32
    n_frequencies: int = 4
    lr: float = 1e-3
    random_aug_prob: float = 0.5  # threestudio's: sometimes a random solid color while training

    def __post_init__(self) -> None:
        check_at_least(self, 1, "hidden_dim")
        check_at_least(self, 0, "n_frequencies")
        check_learning_rates(self, "lr")
        check_between(self, 0.0, 1.0, "random_aug_prob")


@register("background", "neural-environment-map")
class EnvironmentMapBackground(Background):
    """A small MLP from view direction (with sinusoidal encoding) to color."""

    Config = EnvironmentMapConfig

    def __init__(self, cfg: EnvironmentMapConfig) -> None:
        super().__init__()
        self.cfg = cfg
        in_dim = 3 + 6 * cfg.n_frequencies
        self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.hidden_dim), nn.ReLU(), nn.Linear(cfg.hidden_dim, 3))

    def encode(self, dirs: Tensor) -> Tensor:
        freqs = 2.0 ** torch.arange(self.cfg.n_frequencies, device=dirs.device, dtype=dirs.dtype) * torch.pi
        angles = dirs[..., None] * freqs  # [...,3,F]
        return torch.cat([dirs, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)

    def forward(self, dirs: Tensor, training: bool = False) -> Tensor:
        rgb = torch.sigmoid(self.mlp(self.encode(dirs)))
        if training and torch.rand(()).item() < self.cfg.random_aug_prob:
            rgb = torch.rand(dirs.shape[0], 1, 1, 3, device=dirs.device).expand_as(rgb)
        return rgb

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": self.cfg.lr, "name": "background"}]
