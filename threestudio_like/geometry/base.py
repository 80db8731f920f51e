"""The geometry contract shared by the NeRF and the Gaussians.

Export and the quality metrics work on any geometry through ``density`` and ``color`` alone.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Geometry(nn.Module):
    """A trainable 3D representation inside a sphere of radius ``radius`` around the origin."""

    radius: float = 1.0

    def density(self, points: Tensor) -> Tensor:
        """points [N,3] (world) → volume density σ [N] ≥ 0."""
        raise NotImplementedError

    def color(self, points: Tensor) -> Tensor:
        """points [N,3] (world) → albedo [N,3] in [0,1]."""
        raise NotImplementedError

    def isosurface_threshold(self) -> float:
        """The density level marching cubes uses by default for this geometry."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups ({"params", "lr", "name"}) with this geometry's learning rates."""
        raise NotImplementedError

    def update_step(self, step: int, max_steps: int) -> None:
        """Called before each training step (coarse-to-fine schedules, occupancy grid updates…)."""

    def after_backward(self, render_out: dict[str, Tensor], step: int, optimizer: torch.optim.Optimizer) -> None:
        """Called after the backward pass, before the optimizer step (densification statistics…)."""
