"""The geometry contract shared by the NeRF and the Gaussians.

Export and the quality metrics work on any geometry through ``density`` and ``color`` alone; a
geometry made of Gaussians also declares them through :meth:`Geometry.splats`, so the export writes
them as a splat file too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from threestudio_like.geometry.mesh import Mesh


@dataclass
class Splats:
    """3D Gaussians in the world frame, as the standard splat file stores them (no activations):
    means [N,3], quats [N,4] (wxyz, not necessarily unit), log_scales [N,3] (ln σ),
    opacity_logits [N], sh [N,K,3] with K = (d+1)² (degree-0 coefficient first; colour of
    direction d = 0.5 + Σ_k Y_k(d)·sh_k)."""

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor


class Geometry(nn.Module):
    """A trainable 3D representation inside a sphere of radius ``radius`` around the origin."""

    radius: float = 1.0
    # rows of ``network``'s output that are albedo logits, for geometries whose colour field is a hash
    # grid + MLP that a refinement stage can copy (``None``: no such field, its colour is fitted instead)
    albedo_rows: Optional[slice] = None

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
        """Called after the backward pass, before the optimizer step (learning-rate schedules…)."""

    def isosurface(self) -> Optional["Mesh"]:
        """The geometry's own triangle mesh (world frame) when it is one (DMTet): export writes it and
        the mesh rasterizer renders it. None for a field whose surface is a level set of ``density``
        (export finds it by marching cubes)."""
        return None

    @classmethod
    def create_from(cls, other: "Geometry", cfg: Any, copy_net: bool = True, views: Any = None) -> "Geometry":
        """A geometry of this kind initialised from a finished stage's geometry (refinement stages,
        ``system.geometry_convert_from``); ``views``: the new run's training camera range (a
        RandomCameraConfig) where the conversion needs it. Kinds that cannot be made from another say so."""
        raise ValueError(f"{cls.__name__} cannot be created from another run's geometry; use e.g. "
                         f"system.geometry_type=tetrahedra-sdf-grid with system.geometry_convert_from")

    def splats(self) -> Optional[Splats]:
        """The geometry's Gaussians, for a geometry made of them; None for fields (NeRF, SDF)."""
        return None

    def densify_strategy(self) -> Optional[Any]:
        """A strategy that adds and removes primitives during training (the Gaussians' densification,
        ``geometry/gaussian_densify.py``), or None for a geometry of fixed size."""
        return None
