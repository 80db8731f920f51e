"""3D Gaussian splatting as a geometry: parameters, initialisation, colours, density for export.

Each Gaussian i has a mean μ_i, a log-scale s_i (σ = exp s), a rotation quaternion q_i (wxyz,
normalised on use), a logit opacity and a colour: either spherical-harmonic coefficients up to
degree 3 (colour = max(SH(d) + 0.5, 0), d = view direction, as in 3DGS) or a plain sigmoid RGB.
Densification and pruning are a strategy the system calls (``geometry/gaussian_densify.py``,
offered by :meth:`GaussianSplatting.densify_strategy`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threestudio_like.config import check_choice
from threestudio_like.geometry.base import Geometry, Splats
from threestudio_like.geometry.gaussian_densify import DefaultStrategy, DensifyConfig
from threestudio_like.geometry.gaussian_ops import (
    SH_C0, covariance_3d, eval_sh, inverse_sigmoid, quaternion_to_matrix, rgb_to_sh, sh_basis_count,
)
from threestudio_like.registry import register
from threestudio_like.utils.checks import check_above, check_at_least, check_between, check_learning_rates

PARAM_NAMES = ("means", "scales", "rotations", "opacities", "features_dc", "features_rest")


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------
def splat_sums(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, points: Tensor,
    values: Optional[Tensor] = None, cutoff: float = 3.0,
) -> tuple[Tensor, Optional[Tensor]]:
    """Σ_i w_i(p) [P] and Σ_i w_i(p)·values_i [P,D] (or None) with w_i(p) = opacity_i·exp(−½ dᵀΣ_i⁻¹d),
    d = p − μ_i, for points [P,3]; terms beyond ``cutoff`` standard deviations count as zero.

    Points are binned into cubic cells and each cell only meets the Gaussians whose box
    (μ ± cutoff·max σ) overlaps it, so a 128³ grid costs (points near Gaussians) × (Gaussians near a
    cell), not P × N.
    """
    P = len(points)
    total = points.new_zeros(P)
    weighted = points.new_zeros(P, values.shape[-1]) if values is not None else None
    if P == 0 or len(means) == 0:
        return total, weighted
    inv = torch.linalg.inv(covariance_3d(quats, scales))
    # the six entries of Σ⁻¹ (off-diagonals doubled), so dᵀΣ⁻¹d is a few elementwise products
    quad = torch.stack([inv[:, 0, 0], inv[:, 1, 1], inv[:, 2, 2], 2 * inv[:, 0, 1], 2 * inv[:, 0, 2], 2 * inv[:, 1, 2]], -1)
    reach = cutoff * scales.max(-1).values[:, None]
    # cubic cells about as wide as a typical Gaussian's reach: a cell then meets few Gaussians, and
    # cells in empty space meet none and cost nothing
    lo = points.min(0).values
    extent = (points.max(0).values - lo).clamp_min(1e-6)
    size = torch.maximum(reach.median(), extent.max() / 64) * (1 + 1e-6)
    dims = torch.ceil(extent / size).long().clamp(1, 64)
    cell = torch.minimum(((points - lo) / size).floor().long(), dims - 1)
    flat = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    order = torch.argsort(flat)
    ids, counts = torch.unique_consecutive(flat[order], return_counts=True)
    g_lo, g_hi = ((means - reach - lo) / size).floor(), ((means + reach - lo) / size).floor()
    start, d1, d2 = 0, int(dims[1]), int(dims[2])
    for cid, count in zip(ids.tolist(), counts.tolist()):
        members, start = order[start : start + count], start + count
        c = torch.tensor([cid // (d1 * d2), (cid // d2) % d1, cid % d2], device=points.device)
        near = ((g_lo <= c) & (g_hi >= c)).all(-1).nonzero()[:, 0]
        if len(near) == 0:
            continue
        step = max(1, (1 << 21) // len(near))
        for chunk in members.split(step):
            dx, dy, dz = (points[chunk, None, i] - means[None, near, i] for i in range(3))  # [p,g] each
            q = quad[near].unbind(-1)
            maha = q[0] * dx * dx + q[1] * dy * dy + q[2] * dz * dz + q[3] * dx * dy + q[4] * dx * dz + q[5] * dy * dz
            # clamped before exp: far points would otherwise give subnormal floats, which are very slow
            w = opacities[near] * torch.exp(-0.5 * maha.clamp(max=cutoff * cutoff)) * (maha <= cutoff * cutoff)
            total[chunk] = w.sum(1)
            if values is not None:
                weighted[chunk] = w @ values[near]
    return total, weighted


def ball_points(n: int, radius: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """[n,3] points uniform in the ball of ``radius`` around the origin."""
    direction = F.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    r = radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    return direction * r


def knn_scale(points: Tensor, k: int = 3) -> Tensor:
    """[N,3] → [N] root mean squared distance to the ``k`` nearest neighbours (3DGS's initial σ)."""
    from scipy.spatial import cKDTree

    if len(points) <= 1:
        return torch.full((len(points),), 0.01)
    k = min(k, len(points) - 1)
    dist, _ = cKDTree(points.double().numpy()).query(points.double().numpy(), k=k + 1)
    mean_sq = (dist[:, 1:] ** 2).mean(axis=1)
    return torch.from_numpy(np.sqrt(np.maximum(mean_sq, 1e-14))).float()


def load_point_source(path: str, n_points: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Points [M,3] and colours [M,3] in [0,1] from a PLY/OBJ point cloud or mesh (meshes are sampled
    on their surface; clouds larger than ``n_points`` are subsampled). One-line ValueError on a bad file."""
    import trimesh

    where = f"geometry.init_from={path!r}"
    try:
        loaded = trimesh.load(path)
    except Exception as error:  # trimesh raises many kinds; keep one line
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{where} cannot be read as a PLY/OBJ point cloud or mesh: {first}") from None
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.to_geometry() if hasattr(loaded, "to_geometry") else loaded.dump(concatenate=True)
    grey = lambda m: np.full((m, 3), 0.5)  # noqa: E731
    if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces) > 0:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        points, face_index = trimesh.sample.sample_surface(loaded, n_points, seed=seed)
        try:
            colors = np.asarray(loaded.visual.to_color().face_colors)[face_index, :3] / 255.0
        except Exception:  # textured or colourless meshes: start grey
            colors = grey(len(points))
    elif isinstance(loaded, (trimesh.PointCloud, trimesh.Trimesh)) and len(loaded.vertices) > 0:
        points = np.asarray(loaded.vertices)
        raw = getattr(loaded, "colors", None) if isinstance(loaded, trimesh.PointCloud) else None
        colors = np.asarray(raw)[:, :3] / 255.0 if raw is not None and len(raw) == len(points) else grey(len(points))
        if len(points) > n_points:
            keep = torch.randperm(len(points), generator=generator)[:n_points].numpy()
            points, colors = points[keep], colors[keep]
    else:
        raise ValueError(f"{where} holds no points or faces; give a PLY/OBJ point cloud or mesh")
    return torch.as_tensor(np.asarray(points), dtype=torch.float32), torch.as_tensor(colors, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# The geometry
# --------------------------------------------------------------------------------------------------
@dataclass
class GaussianConfig:
    radius: float = 1.0  # bounding sphere (export grid, quality metrics)
    color_mode: str = "sh"  # "sh": spherical harmonics (3DGS); "rgb": one sigmoid RGB per Gaussian
    sh_degree: int = 0  # 0–3; every peer used 0 for text-to-3D
    # initialisation: "random" (uniform in a ball) or a PLY/OBJ point cloud or mesh file
    init_from: str = "random"
    init_num_points: int = 2048
    init_radius: float = 0.6
    init_opacity: float = 0.1
    init_color: float = 0.5  # grey for random init (file colours are used when present)
    init_max_scale: float = 0.05  # clamp of the nearest-neighbour initial σ (world units)
    # learning rates (DreamGaussian / threestudio-3dgs)
    lr_position: float = 1e-3
    lr_position_final: float = 2e-5
    position_lr_steps: int = 0  # exponential decay over this many steps; 0 = the whole run
    lr_color: float = 0.01
    lr_color_rest: float = 0.0005  # SH degrees ≥ 1 (3DGS: colour lr / 20)
    lr_opacity: float = 0.05
    lr_scale: float = 0.005
    lr_rotation: float = 0.005
    # densification (clone small / split large Gaussians with a large view-space gradient)
    densify_from_step: int = 100
    densify_until_step: int = 1000
    densify_interval: int = 100
    # on the NDC-scaled view-space gradient of the means (gsplat's convention); depends on the loss scale
    densify_grad_threshold: float = 0.1
    split_scale_threshold: float = 0.02  # world σ above which a Gaussian is split rather than cloned
    split_factor: float = 1.6  # split children get σ / split_factor (3DGS: 0.8·2)
    max_gaussians: int = 6000  # CPU-sized; GPU runs with gsplat take 10⁵–10⁶
    # pruning, done at each densification step
    prune_opacity_threshold: float = 0.01
    prune_scale_threshold: float = 0.4  # world σ; larger Gaussians are removed
    # opacity reset (0 = off): opacity ← min(opacity, reset value)
    opacity_reset_interval: int = 0
    opacity_reset_value: float = 0.01
    # export
    isosurface_threshold: float = 1.0  # density level for marching cubes (DreamGaussian 1, threestudio-3dgs 0.8)
    density_min_opacity: float = 0.005  # Gaussians under this opacity are left out of density()
    density_cutoff_sigma: float = 3.0  # a Gaussian only reaches points within this many σ

    def __post_init__(self) -> None:
        check_choice(self.color_mode, ("sh", "rgb"), "geometry.color_mode")
        check_choice(self.sh_degree, (0, 1, 2, 3), "geometry.sh_degree")
        if self.color_mode == "rgb" and self.sh_degree != 0:
            raise ValueError(f"geometry.sh_degree={self.sh_degree} needs color_mode='sh' (rgb colours have no view dependence)")
        if not 0.0 < self.init_opacity < 1.0:
            raise ValueError(f"geometry.init_opacity={self.init_opacity} must lie strictly between 0 and 1")
        if self.init_from != "random" and not os.path.isfile(self.init_from):
            raise ValueError(f"geometry.init_from={self.init_from!r} is not a file; use 'random' or a PLY/OBJ point cloud or mesh")
        if self.init_from != "random" and Path(self.init_from).suffix.lower() not in (".ply", ".obj"):
            raise ValueError(f"geometry.init_from={self.init_from!r} has an unsupported format; use a .ply or .obj file")
        check_at_least(self, 1, "max_gaussians", "init_num_points", "densify_interval")
        check_learning_rates(self, "lr_position", "lr_position_final", "lr_color", "lr_color_rest", "lr_opacity", "lr_scale", "lr_rotation")
        check_at_least(self, 0, "position_lr_steps", "densify_from_step", "densify_until_step", "opacity_reset_interval",
                       "densify_grad_threshold", "prune_opacity_threshold", "prune_scale_threshold")
        check_above(self, 0.0, "radius", "init_radius", "init_max_scale", "split_scale_threshold", "split_factor",
                    "isosurface_threshold", "density_cutoff_sigma")
        check_between(self, 0.0, 1.0, "init_color", "opacity_reset_value", "density_min_opacity")


@register("geometry", "gaussian-splatting")
class GaussianSplatting(Geometry):
    """A set of anisotropic 3D Gaussians; renderers read :meth:`activated` and :meth:`albedo`."""

    Config = GaussianConfig

    def __init__(self, cfg: GaussianConfig, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.radius = cfg.radius
        if cfg.init_from == "random":
            points = ball_points(cfg.init_num_points, cfg.init_radius, generator)
            colors = torch.full_like(points, cfg.init_color)
        else:
            points, colors = load_point_source(cfg.init_from, cfg.init_num_points, generator)
        self.init_from_points(points, colors)
        self.step, self.max_steps = 0, 1

    # --- parameters ---------------------------------------------------------------------------
    def init_from_points(self, points: Tensor, colors: Tensor) -> None:
        """(Re)initialise every parameter from points [N,3] and colours [N,3] in [0,1]."""
        cfg, n = self.cfg, len(points)
        sigma = knn_scale(points).clamp(1e-4, cfg.init_max_scale)
        colors = colors.clamp(0.01, 0.99)
        self.means = nn.Parameter(points.clone())
        self.scales = nn.Parameter(sigma.log()[:, None].repeat(1, 3))
        self.rotations = nn.Parameter(torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1))
        self.opacities = nn.Parameter(inverse_sigmoid(torch.full((n,), cfg.init_opacity)))
        self.features_dc = nn.Parameter(rgb_to_sh(colors) if cfg.color_mode == "sh" else inverse_sigmoid(colors))
        rest = sh_basis_count(cfg.sh_degree) - 1
        self.features_rest = nn.Parameter(torch.zeros(n, rest, 3)) if rest > 0 else None

    def param_names(self) -> list[str]:
        return [name for name in PARAM_NAMES if getattr(self, name, None) is not None]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def activated(self) -> dict[str, Tensor]:
        """means [N,3], quats [N,4] (unit, wxyz), scales [N,3] (σ), opacities [N] in (0,1)."""
        return {
            "means": self.means,
            "quats": F.normalize(self.rotations, dim=-1),
            "scales": self.scales.exp(),
            "opacities": torch.sigmoid(self.opacities),
        }

    def albedo(self, camera_positions: Optional[Tensor] = None) -> Tensor:
        """Colour of each Gaussian: [N,3] (view-independent part) or [C,N,3] seen from camera_positions [C,3]."""
        if self.cfg.color_mode == "rgb":
            rgb = torch.sigmoid(self.features_dc)
            return rgb if camera_positions is None else rgb.expand(len(camera_positions), -1, -1)
        if camera_positions is None or self.features_rest is None:
            rgb = (SH_C0 * self.features_dc + 0.5).clamp(0.0, 1.0)
            return rgb if camera_positions is None else rgb.expand(len(camera_positions), -1, -1)
        coeffs = torch.cat([self.features_dc[:, None], self.features_rest], dim=1)  # [N,K,3]
        dirs = F.normalize(self.means[None] - camera_positions[:, None], dim=-1)  # [C,N,3]
        return (eval_sh(self.cfg.sh_degree, coeffs[None], dirs) + 0.5).clamp(0.0, 1.0)

    def normals(self, camera_positions: Tensor) -> Tensor:
        """[C,N,3] unit normals: each Gaussian's shortest axis, turned toward camera_positions [C,3]."""
        R = quaternion_to_matrix(self.rotations)
        axis = torch.gather(R, 2, self.scales.argmin(-1)[:, None, None].expand(-1, 3, 1))[..., 0]  # [N,3]
        facing = ((camera_positions[:, None] - self.means[None]) * axis[None]).sum(-1, keepdim=True)
        return axis[None] * torch.where(facing < 0, -1.0, 1.0)

    # --- the Geometry contract ---------------------------------------------------------------------
    @torch.no_grad()
    def density(self, points: Tensor) -> Tensor:
        """points [P,3] → Σ_i opacity_i·exp(−½ dᵀΣ_i⁻¹d) [P] (no autograd; Gaussians beyond the cutoff ignored)."""
        return self.splat_sums(points)[0]

    @torch.no_grad()
    def color(self, points: Tensor) -> Tensor:
        """points [P,3] → contribution-weighted view-independent colour [P,3]; the nearest Gaussian's
        colour where no Gaussian reaches."""
        total, weighted = self.splat_sums(points, values=self.albedo())
        rgb = weighted / total.clamp_min(1e-12)[:, None]
        empty = total < 1e-8
        if empty.any():
            from scipy.spatial import cKDTree

            _, nearest = cKDTree(self.means.detach().cpu().numpy()).query(points[empty].cpu().numpy())
            rgb[empty] = self.albedo()[torch.as_tensor(nearest, device=points.device)]
        return rgb.clamp(0.0, 1.0)

    def splat_sums(self, points: Tensor, values: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """:func:`splat_sums` over the Gaussians opaque enough to matter for export."""
        p = self.activated()
        keep = p["opacities"] > self.cfg.density_min_opacity
        values = values[keep] if values is not None else None
        return splat_sums(p["means"][keep], p["quats"][keep], p["scales"][keep], p["opacities"][keep],
                          points.to(self.means.device), values, self.cfg.density_cutoff_sigma)

    def isosurface_threshold(self) -> float:
        return self.cfg.isosurface_threshold

    def parameter_groups(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        lrs = {"means": self.position_lr(), "scales": cfg.lr_scale, "rotations": cfg.lr_rotation,
               "opacities": cfg.lr_opacity, "features_dc": cfg.lr_color, "features_rest": cfg.lr_color_rest}
        return [{"params": [getattr(self, name)], "lr": lrs[name], "name": name} for name in self.param_names()]

    def position_lr(self, step: Optional[int] = None) -> float:
        """Log-linear decay from lr_position to lr_position_final (3DGS's exponential schedule)."""
        step = self.step if step is None else step
        total = self.cfg.position_lr_steps or self.max_steps
        fraction = min(max(step / max(total, 1), 0.0), 1.0)
        start, end = self.cfg.lr_position, self.cfg.lr_position_final
        if start <= 0 or end <= 0:
            return start
        return math.exp((1 - fraction) * math.log(start) + fraction * math.log(end))

    def update_step(self, step: int, max_steps: int) -> None:
        self.step, self.max_steps = step, max_steps

    def after_backward(self, render_out: dict[str, Tensor], step: int, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Set the means' learning rate of this step (the position schedule)."""
        for group in optimizer.param_groups if optimizer is not None else ():
            if group.get("name") == "means":
                group["lr"] = self.position_lr(step)

    def densify_strategy(self) -> DefaultStrategy:
        return DefaultStrategy(DensifyConfig.of(self.cfg))

    # --- checkpoints and export ------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accepts a checkpoint with another Gaussian count: parameters are resized before loading."""
        for name in self.param_names():
            incoming = state_dict.get(name)
            if incoming is None:
                continue
            current = getattr(self, name)
            if incoming.shape[1:] != current.shape[1:]:
                raise ValueError(
                    f"checkpoint Gaussians have {name} of shape {tuple(incoming.shape)}, this geometry "
                    f"{tuple(current.shape)}; set geometry.sh_degree/color_mode as in the checkpoint"
                )
            if incoming.shape != current.shape:
                setattr(self, name, nn.Parameter(torch.empty_like(incoming, device=current.device)))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def splats(self) -> Splats:
        """The Gaussians as stored values, detached; RGB colours become the SH coefficient of the same colour."""
        if self.cfg.color_mode == "rgb":
            dc = (torch.sigmoid(self.features_dc) - 0.5) / SH_C0
        else:
            dc = self.features_dc
        sh = dc[:, None] if self.features_rest is None else torch.cat([dc[:, None], self.features_rest], dim=1)
        return Splats(means=self.means.detach(), quats=self.rotations.detach(), log_scales=self.scales.detach(),
                      opacity_logits=self.opacities.detach(), sh=sh.detach())
