"""NeRF volume rendering (threestudio's ``nerf-volume-renderer``): nerfacc on CUDA, plain PyTorch elsewhere.

Both paths march with threestudio's fixed step Δ = 2·√3·radius / num_samples_per_ray (the box
diagonal in ``num_samples_per_ray`` steps), so a ray through the ball's centre gets at most
⌈2·radius/Δ⌉ samples, and occupancy = σ·Δ for the grid.

Torch path, per ray: near/far where the ray crosses the geometry's ball; intervals
[near + kΔ, near + (k+1)Δ] clipped at far, one sample in each (jittered while training, the
midpoint otherwise); samples in cells the occupancy grid marks empty are dropped and the geometry
is evaluated only on the rest, which stay packed (sorted by ray) for the transmittance:
α_i = 1 − exp(−σ_i δ_i), T_i = Π_{j<i} (1 − α_j) (computed as exp of an exclusive cumulative sum
over the ray's kept samples, a dropped one adding σδ = 0), w_i = T_i α_i. The pixel is Σ w_i c_i + (1 − Σ w_i)·background.

On a CPU the torch path's marching, weights and compositing run, by default, as compiled loops
(threestudio_like/kernels: the same samples, and weights to float rounding); ``cpu_kernel: false``
keeps the PyTorch code, which also runs where the kernels cannot be built.

CUDA path (nerfacc): ``OccGridEstimator.sampling`` marches the same step through the same
occupancy bits, ``render_weight_from_density`` gives the weights, and the compositing is shared.

The geometry is queried as ``geometry(points [N,3]) -> dict(density [N], albedo [N,3])`` (or through
``density``/``color`` when it has no ``forward``), and ``geometry.normal(points) -> [N,3]`` where
normals are needed: only at samples whose weight exceeds ``normal_min_weight``, since a finite-
difference normal costs six more density evaluations and a negligible sample contributes nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from threestudio_like import kernels
from threestudio_like.data.cameras import Cameras
from threestudio_like.kernels import volume as fused
from threestudio_like.registry import register
from threestudio_like.renderers.base import Renderer
from threestudio_like.renderers.occupancy import OccupancyGrid
from threestudio_like.renderers.segments import segment_exclusive_cumsum, segments
from threestudio_like.utils.checks import check_at_least

_NERFACC_CHOICES = {"auto": "auto", True: True, False: False, "true": True, "false": False}


@dataclass
class VolumeRendererConfig:
    num_samples_per_ray: int = 64  # sets the step: the box diagonal 2·√3·radius in this many steps
    randomized: bool = True  # jitter samples inside their intervals while training
    eval_chunk_size: int = 8192  # rays per chunk when not training (bounds memory)
    grid_prune: bool = True  # skip samples in empty occupancy-grid cells
    grid_resolution: int = 32
    grid_update_every: int = 16  # steps between occupancy refreshes
    grid_threshold: float = 0.01  # a cell is occupied when σ·step_size exceeds this (or the mean)
    grid_ema_decay: float = 0.95
    grid_warmup_steps: int = 256  # refresh every cell (not a sample of them) before this step
    normal_min_weight: float = 1e-4  # finite-difference normals (6 density passes) only where w exceeds this
    use_nerfacc: Any = "auto"  # auto (nerfacc when on CUDA and importable) | true | false
    cpu_kernel: Any = "auto"  # auto (the compiled CPU loops when they build) | true | false (the PyTorch path)

    def __post_init__(self) -> None:
        self.cpu_kernel = kernels.kernel_choice(self.cpu_kernel, "cpu_kernel")
        key = self.use_nerfacc.lower() if isinstance(self.use_nerfacc, str) else self.use_nerfacc
        if key not in _NERFACC_CHOICES:
            raise ValueError(f"use_nerfacc={self.use_nerfacc!r} is not accepted; use one of auto, true, false")
        self.use_nerfacc = _NERFACC_CHOICES[key]
        check_at_least(self, 1, "num_samples_per_ray", "eval_chunk_size", "grid_resolution", "grid_update_every")
        check_at_least(self, 0, "grid_threshold", "grid_warmup_steps", "normal_min_weight")
        if not 0.0 <= self.grid_ema_decay <= 1.0:
            raise ValueError(f"grid_ema_decay={self.grid_ema_decay} must lie in [0, 1]")


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------
def ray_sphere(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Where unit-direction rays [R,3] cross the ball of ``radius``: near [R] (≥ 0), far [R], hit [R] bool."""
    b = (origins * dirs).sum(-1)
    c = origins.square().sum(-1) - radius**2
    disc = b * b - c
    root = disc.clamp_min(0.0).sqrt()
    near, far = (-b - root).clamp_min(0.0), -b + root
    return near, far, (disc > 0) & (far > near)


def marching_intervals(near: Tensor, far: Tensor, step: float, n_max: int, jitter: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Intervals [near + kΔ, near + (k+1)Δ] ∩ [near, far], k < n_max, one sample in each.

    near, far [R] → sample distances t [R,n_max], interval lengths δ [R,n_max] (0 past far) and
    valid [R,n_max] (the interval starts before far). The sample is uniform in its interval when
    ``jitter`` (stratified sampling), else the midpoint.
    """
    k = torch.arange(n_max, device=near.device, dtype=near.dtype)
    starts = near[:, None] + k * step
    delta = (torch.minimum(starts + step, far[:, None]) - starts).clamp_min(0.0)
    offset = torch.rand_like(starts) if jitter else torch.full_like(starts, 0.5)
    return starts + offset * delta, delta, starts < far[:, None]


def weights_from_density(sigma: Tensor, delta: Tensor) -> Tensor:
    """w_i = T_i α_i along the last axis, α = 1 − exp(−σδ), T_i = exp(−Σ_{j<i} σ_j δ_j). [...,S] → [...,S]."""
    tau = sigma * delta
    trans = torch.exp(-(torch.cumsum(tau, dim=-1) - tau))
    return trans * (1.0 - torch.exp(-tau))


def packed_weights(sigma: Tensor, delta: Tensor, runs: dict[str, Tensor]) -> Tensor:
    """:func:`weights_from_density` over packed samples: sigma, delta [M] sorted by ray, ``runs``
    their rays' runs (:func:`segments`) → w [M]. The exclusive sum of σδ restarts at each ray."""
    tau = sigma * delta
    optical = segment_exclusive_cumsum(tau.double(), runs["first"], runs["segment"]).to(tau.dtype)
    return torch.exp(-optical) * (1.0 - torch.exp(-tau))


def query_geometry(geometry: nn.Module, points: Tensor) -> tuple[Tensor, Tensor]:
    """density [N] and albedo [N,3] of the geometry at points [N,3] (one network pass when it has ``forward``)."""
    if type(geometry).forward is not nn.Module.forward:
        fields = geometry(points, with_normal=False)
        return fields["density"], fields["albedo"]
    return geometry.density(points), geometry.color(points)


def composite(ray: Tensor, w: Tensor, t: Tensor, color: Tensor, normal: Optional[Tensor], dirs: Tensor, n_rays: int,
              compiled: bool = False) -> dict[str, Tensor]:
    """Sum per-sample values into their rays.

    ray [M] (long), w [M], t [M], color [M,3], normal [M,3] or None,
    dirs [R,3] → rgb [R,3] (no background yet), opacity [R,1], depth [R,1], and normal [R,3] and
    orient [R,1] when normals are given. orient is DreamFusion's Σ stop_grad(w)·max(0, n·d)²: zero
    for normals facing the camera. ``compiled``: rgb, opacity and depth in one compiled loop.
    """
    def accumulate(values: Tensor) -> Tensor:
        return values.new_zeros(n_rays, values.shape[1]).index_add(0, ray, values)

    if compiled:
        out = dict(zip(("rgb", "opacity", "depth"), fused.composite_rays(ray, w, t, color, n_rays)))
    else:
        out = {
            "rgb": accumulate(w[:, None] * color),
            "opacity": accumulate(w[:, None]),
            "depth": accumulate((w * t)[:, None]),
        }
    if normal is not None:
        out["normal"] = accumulate(w[:, None] * normal)
        facing = (normal * dirs[ray]).sum(-1).clamp_min(0.0)
        out["orient"] = accumulate((w.detach() * facing.square())[:, None])
    return out


# --------------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------------
@register("renderer", "nerf-volume-renderer")
class VolumeRenderer(Renderer):
    Config = VolumeRendererConfig

    def __init__(self, cfg: VolumeRendererConfig, radius: float = 1.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = OccupancyGrid(cfg.grid_resolution, radius)
        self._nerfacc: dict[str, Any] = {}  # the estimator, kept out of the state_dict (CPU/GPU checkpoints match)
        self.last_num_samples = 0  # samples the geometry was evaluated on in the last render

    def step_size(self) -> float:
        """threestudio's marching step (also the σ→occupancy factor): box diagonal / samples per ray."""
        return 2.0 * math.sqrt(3.0) * self.grid.radius / self.cfg.num_samples_per_ray

    def use_nerfacc(self, device: torch.device) -> bool:
        choice = self.cfg.use_nerfacc
        if choice is False or device.type != "cuda":
            if choice is True and device.type != "cuda":
                raise ValueError("use_nerfacc=true needs a CUDA device; set renderer.use_nerfacc=auto or false")
            return False
        try:
            import nerfacc  # noqa: F401
        except ImportError:
            if choice is True:
                raise ValueError("use_nerfacc=true but nerfacc is not installed; pip install nerfacc, or set use_nerfacc=auto") from None
            return False
        return True

    # --- occupancy ------------------------------------------------------------------------
    def _match_geometry(self, geometry: nn.Module) -> None:
        radius = float(geometry.radius)
        if radius != self.grid.radius:  # the grid spans the geometry's box; a new radius starts it afresh
            device = self.grid.occs.device
            self.grid = OccupancyGrid(self.cfg.grid_resolution, radius).to(device)

    @torch.no_grad()
    def refresh_grid(self, step: int, geometry: nn.Module) -> None:
        """Re-evaluate the occupancy grid from the geometry's density (nerfacc's EMA rule)."""
        cfg = self.cfg
        self._match_geometry(geometry)
        self.grid.update(step, geometry.density, self.step_size(), cfg.grid_threshold, cfg.grid_ema_decay, cfg.grid_warmup_steps)

    def update_step(self, step: int, max_steps: int, geometry) -> None:
        if self.cfg.grid_prune and (step % self.cfg.grid_update_every == 0 or not bool(self.grid.updated)):
            self.refresh_grid(step, geometry)

    # --- rendering --------------------------------------------------------------------------
    def render(self, geometry, material, background, cameras: Cameras, shading: str = "albedo", training: bool = False, with_normal: bool = False) -> dict:
        """Images of ``geometry`` seen by ``cameras``: rgb/normal [B,H,W,3], opacity/depth/orient [B,H,W,1]."""
        B, H, W = len(cameras), cameras.height, cameras.width
        origins, dirs = cameras.rays()
        self._match_geometry(geometry)
        if self.cfg.grid_prune and not bool(self.grid.updated):
            self.refresh_grid(0, geometry)  # a fresh or just-loaded renderer: fill the grid once
        need_normal = with_normal or material.requires_normal(shading)
        light = cameras.light_position.repeat_interleave(H * W, dim=0)  # [R,3]
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        chunk = len(o) if training else self.cfg.eval_chunk_size
        compiled = kernels.use_kernels(self.cfg.cpu_kernel, o)
        march = self._march_nerfacc if self.use_nerfacc(o.device) else self._march_compiled if compiled else self._march_torch
        parts, self.last_num_samples = [], 0
        for start in range(0, len(o), chunk):
            part = slice(start, start + chunk)
            ray, t, points, albedo, w = march(geometry, o[part], d[part], training)
            normal = self._normals(geometry, points, w) if need_normal else None
            rgb = material(albedo, normal, points, light[part][ray], shading)
            parts.append(composite(ray, w, t, rgb, normal, d[part], len(o[part]), compiled))
            self.last_num_samples += len(points)
        out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        bg = background(dirs, training=training).reshape(-1, 3)
        out["rgb"] = out["rgb"] + (1.0 - out["opacity"]) * bg
        return {key: value.view(B, H, W, -1) for key, value in out.items()}

    def _normals(self, geometry, points: Tensor, w: Tensor, chunk: int = 32768) -> Tensor:
        """Geometry normals [M,3] at samples [M,3], computed only where the weight exceeds normal_min_weight.

        In chunks: a finite-difference normal evaluates the geometry at 6 points per sample.
        """
        def normals(p: Tensor) -> Tensor:
            return torch.cat([geometry.normal(part) for part in p.split(chunk)]) if len(p) else p.new_zeros(0, 3)

        if self.cfg.normal_min_weight <= 0:
            return normals(points)
        chosen = torch.nonzero(w.detach() > self.cfg.normal_min_weight)[:, 0]
        return points.new_zeros(len(points), 3).index_put((chosen,), normals(points[chosen]))

    def _chords(self, o: Tensor, d: Tensor) -> tuple[float, int, Tensor, Tensor, Tensor]:
        """What both CPU marchings start from: rays o, d [R,3] → the step Δ, the most candidates a
        ray can have S (the longest chord, a diameter, in steps), and near, far, hit [R] on the ball."""
        step = self.step_size()
        near, far, hit = ray_sphere(o, d, self.grid.radius)
        return step, int(math.ceil(2.0 * self.grid.radius / step)), near, far, hit

    def _march_torch(self, geometry, o: Tensor, d: Tensor, training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Fixed-step samples between the ball's near/far, culled by the occupancy grid (see module doc).

        rays o, d [R,3] → per kept sample: ray index [M], distance t [M], point [M,3], albedo [M,3], weight [M].
        Only the kept samples go further: the candidates' coordinates are taken per axis ([R,S]
        each, not [R,S,3]: a trailing axis of 3 makes every elementwise op slow), and the
        transmittance is a running sum over the packed samples of each ray (float64), which is
        the dense [R,S] one with its zeros left out.
        """
        step, S, near, far, hit = self._chords(o, d)
        t, delta, keep = marching_intervals(near, far, step, S, jitter=training and self.cfg.randomized)
        axes = [o[:, k, None] + t * d[:, k, None] for k in range(3)]  # 3 × [R,S]: o + t·d per axis
        keep = keep & hit[:, None]
        if self.cfg.grid_prune:
            keep = keep & self.grid.query_axes(*axes)
        flat = torch.nonzero(keep.reshape(-1))[:, 0]  # [M] indices into the R·S samples, ray-major
        points = torch.stack([axis.reshape(-1)[flat] for axis in axes], dim=-1)
        sigma, albedo = query_geometry(geometry, points)
        ray = torch.div(flat, S, rounding_mode="floor")
        w = packed_weights(sigma, delta.reshape(-1)[flat], segments(ray))
        return ray, t.reshape(-1)[flat], points, albedo, w

    def _march_compiled(self, geometry, o: Tensor, d: Tensor, training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``_march_torch`` as two compiled loops around the geometry query: the same uniform draws
        (one per candidate, in the same order), the same kept samples, weights to float rounding."""
        step, S, near, far, hit = self._chords(o, d)
        jitter = None
        if training and self.cfg.randomized:  # torch.rand's numbers, drawn in blocks for float32
            jitter = fused.uniform(len(o), S) if o.dtype == torch.float32 else torch.rand(len(o), S, dtype=o.dtype)
        binaries = self.grid.binaries if self.cfg.grid_prune else None
        ray, t, delta, points = fused.march(o, d, near, far, hit, self.grid.radius, step, S, jitter, binaries)
        sigma, albedo = query_geometry(geometry, points)
        return ray, t, points, albedo, fused.packed_weights(sigma, delta, ray)

    def _march_nerfacc(self, geometry, o: Tensor, d: Tensor, training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """nerfacc's marching through the same occupancy bits and its weights; same outputs as ``_march_torch``."""
        import nerfacc

        estimator = self._estimator(o.device)
        if self.cfg.grid_prune:
            estimator.binaries.copy_(self.grid.binaries[None])
        else:
            estimator.binaries.fill_(True)
        near, far, hit = ray_sphere(o, d, self.grid.radius)
        far = torch.where(hit, far, near)  # a missed ray gets an empty interval
        ray_indices, t_starts, t_ends = estimator.sampling(
            o, d, t_min=near, t_max=far, render_step_size=self.step_size(),
            stratified=training and self.cfg.randomized, alpha_thre=0.0, cone_angle=0.0,
        )
        ray = ray_indices.long()
        t = 0.5 * (t_starts + t_ends)
        points = o[ray] + t[:, None] * d[ray]
        sigma, albedo = query_geometry(geometry, points)
        w, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma, ray_indices=ray_indices, n_rays=len(o))
        return ray, t, points, albedo, w

    def _estimator(self, device: torch.device):
        from nerfacc import OccGridEstimator

        estimator = self._nerfacc.get("estimator")
        r = self.grid.radius
        if estimator is None or estimator.binaries.device != device or float(estimator.aabbs[0, 3]) != r:
            estimator = OccGridEstimator(roi_aabb=[-r, -r, -r, r, r, r], resolution=self.cfg.grid_resolution, levels=1).to(device)
            self._nerfacc["estimator"] = estimator
        return estimator
