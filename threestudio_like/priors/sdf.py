"""Signed distance primitives, their composition into objects, and a batched sphere tracer.

Everything works on flat point batches [N,3] in world units. Each primitive is defined in its own
local frame (z up, centred at the origin) and placed by a centre and a rotation whose columns are the
local axes in world coordinates. Polyhedra (pyramid, prism) use the maximum of their face planes,
which is exact inside and a lower bound outside: still safe for sphere tracing, and exact on the
zero level set that marching cubes extracts.
"""
from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch.nn.functional as F

import torch
from torch import Tensor

from threestudio_like.kernels import sdf_trace

KINDS = ("sphere", "box", "cylinder", "cone", "torus", "capsule", "pyramid", "prism")


def _length2(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y)


def sdf_sphere(p: Tensor, r: float) -> Tensor:
    return p.norm(dim=-1) - r


def sdf_box(p: Tensor, hx: float, hy: float, hz: float) -> Tensor:
    q = p.abs() - torch.tensor([hx, hy, hz], dtype=p.dtype, device=p.device)
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


def sdf_cylinder(p: Tensor, r: float, h: float) -> Tensor:
    """Vertical cylinder of radius r and half-height h."""
    dx = _length2(p[:, 0], p[:, 1]) - r
    dz = p[:, 2].abs() - h
    return torch.maximum(dx, dz).clamp(max=0) + _length2(dx.clamp(min=0), dz.clamp(min=0))


def sdf_capsule(p: Tensor, r: float, h: float) -> Tensor:
    """Vertical segment from z=−h to z=+h, thickened by r."""
    q = p.clone()
    q[:, 2] = p[:, 2] - p[:, 2].clamp(-h, h)
    return q.norm(dim=-1) - r


def sdf_torus(p: Tensor, R: float, r: float) -> Tensor:
    """Ring in the local xy plane (a donut lying flat), major radius R, tube radius r."""
    return _length2(_length2(p[:, 0], p[:, 1]) - R, p[:, 2]) - r


def sdf_cone(p: Tensor, r: float, h: float) -> Tensor:
    """Exact cone: base radius r at z=−h/2, apex at z=+h/2 (capped-cone formula with top radius 0)."""
    qx, qy = _length2(p[:, 0], p[:, 1]), p[:, 2]
    hh = 0.5 * h
    # ca: distance to the base disk region, cb: distance to the slanted side segment
    ca_x = qx - torch.minimum(qx, torch.where(qy < 0, torch.full_like(qx, r), torch.zeros_like(qx)))
    ca_y = qy.abs() - hh
    k1x, k1y, k2x, k2y = 0.0, hh, -r, 2.0 * hh
    s = ((k1x - qx) * k2x + (k1y - qy) * k2y) / (k2x * k2x + k2y * k2y)
    s = s.clamp(0.0, 1.0)
    cb_x, cb_y = qx - k1x + k2x * s, qy - k1y + k2y * s
    sign = torch.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
    return sign * torch.sqrt(torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y))


def sdf_pyramid(p: Tensor, b: float, h: float) -> Tensor:
    """Square pyramid: base half-width b at z=−h/2, apex at z=+h/2 (max of face planes)."""
    norm = math.hypot(h, b)
    top = p[:, 2] - 0.5 * h
    side_x = (p[:, 0].abs() * h + top * b) / norm
    side_y = (p[:, 1].abs() * h + top * b) / norm
    bottom = -p[:, 2] - 0.5 * h
    return torch.stack([side_x, side_y, bottom], dim=-1).max(dim=-1).values


def sdf_prism(p: Tensor, b: float, h: float, length: float) -> Tensor:
    """Gable-roof prism: triangle (half-width b, height h) in the xz plane, extruded ±length along y."""
    norm = math.hypot(h, b)
    side = (p[:, 0].abs() * h + (p[:, 2] - 0.5 * h) * b) / norm
    bottom = -p[:, 2] - 0.5 * h
    ends = p[:, 1].abs() - length
    return torch.stack([side, bottom, ends], dim=-1).max(dim=-1).values


_SDF: dict[str, Callable[..., Tensor]] = {
    "sphere": sdf_sphere, "box": sdf_box, "cylinder": sdf_cylinder, "cone": sdf_cone, "torus": sdf_torus,
    "capsule": sdf_capsule, "pyramid": sdf_pyramid, "prism": sdf_prism,
}


def _local_half_extent(kind: str, size: tuple[float, ...]) -> tuple[float, float, float]:
    """Half extents of the primitive's local axis-aligned bounding box."""
    if kind == "sphere":
        return (size[0],) * 3
    if kind == "box":
        return tuple(size)  # type: ignore[return-value]
    if kind == "cylinder":
        return (size[0], size[0], size[1])
    if kind == "capsule":
        return (size[0], size[0], size[0] + size[1])
    if kind == "torus":
        return (size[0] + size[1], size[0] + size[1], size[1])
    if kind in ("cone", "pyramid"):
        return (size[0], size[0], 0.5 * size[1])
    if kind == "prism":
        return (size[0], size[2], 0.5 * size[1])
    raise ValueError(f"unknown primitive kind {kind!r}; use one of {', '.join(KINDS)}")


def _local_radius(kind: str, size: tuple[float, ...]) -> float:
    """Radius of a sphere about the local origin that holds the primitive."""
    if kind == "sphere":
        return size[0]
    if kind == "capsule":
        return size[0] + size[1]
    if kind == "torus":
        return size[0] + size[1]
    return math.sqrt(sum(e * e for e in _local_half_extent(kind, size)))  # its box's half-diagonal


IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@dataclass(frozen=True)
class Primitive:
    """One SDF primitive: ``kind`` with its lengths ``size``, placed at ``center`` with ``rotation``.

    rotation: 3×3 row-major matrix whose columns are the local x, y, z axes in world coordinates.
    color: linear albedo in [0,1]. ``carve``: subtracted from its object instead of added.
    """

    kind: str
    size: tuple[float, ...]
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    color: tuple[float, float, float] = (0.6, 0.6, 0.6)
    rotation: tuple[tuple[float, ...], ...] = IDENTITY
    carve: bool = False

    def distance(self, points: Tensor) -> Tensor:
        """points [N,3] world → signed distance [N]."""
        local = points - torch.tensor(self.center, dtype=points.dtype, device=points.device)
        if self.rotation != IDENTITY:
            local = local @ torch.tensor(self.rotation, dtype=points.dtype, device=points.device)
        return _SDF[self.kind](local, *self.size)

    def bounds(self) -> tuple[Tensor, Tensor]:
        """World axis-aligned bounding box (lo [3], hi [3])."""
        half = torch.tensor(_local_half_extent(self.kind, self.size))
        world_half = torch.tensor(self.rotation).abs() @ half
        center = torch.tensor(self.center)
        return center - world_half, center + world_half

    def transformed(self, scale: float, offset: tuple[float, float, float]) -> "Primitive":
        """The primitive scaled about the world origin by ``scale`` then moved by ``offset``."""
        center = tuple(scale * c + o for c, o in zip(self.center, offset))
        return replace(self, size=tuple(scale * s for s in self.size), center=center)  # type: ignore[arg-type]


@dataclass
class Shape:
    """An object: the union of ``parts`` minus the ``carve`` parts. Colors are per part."""

    parts: list[Primitive] = field(default_factory=list)

    def bounds(self) -> tuple[Tensor, Tensor]:
        boxes = [p.bounds() for p in self.parts if not p.carve]
        return torch.stack([b[0] for b in boxes]).min(0).values, torch.stack([b[1] for b in boxes]).max(0).values


def evaluate(shapes: list[Shape], points: Tensor, with_color: bool = True) -> tuple[Tensor, Tensor | None]:
    """Scene SDF and albedo: points [N,3] → (distance [N], albedo [N,3] or None).

    Each point takes the color of the part whose surface is closest (the carved part's color on
    carved faces), so colors stay crisp where parts meet.
    """
    if not with_color:
        return _distance(shapes, points), None
    best_d = torch.full((points.shape[0],), float("inf"), dtype=points.dtype, device=points.device)
    best_c = torch.zeros(points.shape[0], 3, dtype=points.dtype, device=points.device)
    for shape in shapes:
        d = torch.full_like(best_d, float("inf"))
        c = torch.zeros_like(best_c)
        for part in shape.parts:
            dp = part.distance(points)
            if part.carve:
                dp = -dp
                closer = dp > d  # intersection with the complement: the larger distance wins
            else:
                closer = dp < d
            d = torch.where(closer, dp, d)
            c = torch.where(closer[:, None], torch.tensor(part.color, dtype=points.dtype, device=points.device), c)
        closer = d < best_d
        best_d = torch.where(closer, d, best_d)
        best_c = torch.where(closer[:, None], c, best_c)
    return best_d, best_c


def _distance(shapes: list[Shape], points: Tensor) -> Tensor:
    """Scene SDF alone [N] (the sphere tracer's inner loop: no color bookkeeping)."""
    best = None
    for shape in shapes:
        d = None
        for part in shape.parts:
            if not part.carve:
                dp = part.distance(points)
                d = dp if d is None else torch.minimum(d, dp)
        for part in shape.parts:
            if part.carve:
                d = torch.maximum(d, -part.distance(points))
        best = d if best is None else torch.minimum(best, d)
    return best


def sphere_trace(
    sdf: Callable[[Tensor], Tensor], origins: Tensor, dirs: Tensor, radius: float,
    max_steps: int = 96, eps: float = 1e-3, table: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Trace rays [R,3] against ``sdf`` inside the sphere of ``radius`` around the origin.

    Returns (hit [R] bool, t [R] distance along the ray; meaningful where hit). Rays leave the
    working set as soon as they hit or exit, so the cost follows the rays still marching. With
    ``table`` (the scene's parts, threestudio_like/kernels/sdf_trace.py) the loop below runs compiled,
    one ray at a time (the same steps to float rounding).
    """
    R = origins.shape[0]
    # entry/exit of the bounding sphere: |o + t d|² = radius²
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    inside = disc > 0
    root = disc.clamp(min=0).sqrt()
    t = (-b - root).clamp(min=0)
    t_far = -b + root
    if table is not None:
        return sdf_trace.march(origins, dirs, t, t_far, inside, table, max_steps, eps)
    hit = torch.zeros(R, dtype=torch.bool, device=origins.device)
    active = torch.nonzero(inside).squeeze(-1)
    last_d = torch.full((R,), float("inf"), dtype=origins.dtype, device=origins.device)
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        ta = t[active]
        d = sdf(origins[active] + ta[:, None] * dirs[active])
        last_d[active] = d
        done = d < eps
        hit[active[done]] = True
        ta = ta + d
        t[active] = torch.where(done, t[active], ta)
        keep = ~done & (ta < t_far[active])
        active = active[keep]
    # rays that ran out of steps while grazing a surface count as hits
    if active.numel() > 0:
        hit[active[last_d[active] < 10 * eps]] = True
    return hit, t


def sdf_normals(sdf: Callable[[Tensor], Tensor], points: Tensor, h: float = 1e-3) -> Tensor:
    """Unit outward normals [N,3] by the four-point tetrahedral difference of ``sdf``."""
    k = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=points.dtype, device=points.device)
    n = torch.zeros_like(points)
    for i in range(4):
        n = n + k[i] * sdf(points + h * k[i])[:, None]
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def shade(albedo: Tensor, normal: Tensor, light_dir: Tensor, ambient: float) -> Tensor:
    """albedo × (ambient + (1 − ambient)·max(0, n·l)): [N,3]."""
    lambert = (normal * light_dir).sum(-1, keepdim=True).clamp(min=0.0)
    return albedo * (ambient + (1.0 - ambient) * lambert)


def bounding_radius(shapes: list[Shape]) -> float:
    """Radius of a sphere about the world origin that holds every (non-carved) part."""
    radius = 0.0
    for shape in shapes:
        for part in shape.parts:
            if not part.carve:
                own = _local_radius(part.kind, part.size)
                radius = max(radius, math.sqrt(sum(c * c for c in part.center)) + own)
    return radius


SdfFn = Callable[[Tensor], Tensor]


@contextmanager
def single_thread():
    """Run torch single-threaded for a while: the tracer issues thousands of small ops, for which
    intra-op threads cost more than they give (and stall badly on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _trace_and_shade(
    sdf: SdfFn, albedo: SdfFn, origins: Tensor, dirs: Tensor, radius: float, light: Tensor, ambient: float, background: float,
    table: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rays [R,3] → (hit [R,1] float, rgb [R,3], depth [R,1], normal [R,3]); misses show the background."""
    hit, t = sphere_trace(sdf, origins, dirs, radius, table=table)
    rgb = torch.full_like(origins, background)
    normal = torch.zeros_like(origins)
    depth = torch.zeros(len(origins), 1, dtype=origins.dtype)
    if hit.any():
        points = origins[hit] + t[hit, None] * dirs[hit]
        n = sdf_normals(sdf, points)
        rgb[hit] = shade(albedo(points), n, light, ambient)
        normal[hit] = n
        depth[hit] = t[hit, None]
    return hit[:, None].to(origins.dtype), rgb, depth, normal


def _max_3x3(x: Tensor) -> Tensor:
    """[B,C,H,W] → the maximum over each pixel's 3×3 neighbourhood (inside the image): F.max_pool2d(x, 3, 1, 1)'s
    values exactly (a maximum is exact in any order), as two 1-D passes of shifted maxima, several times faster."""
    rows = F.pad(x, (1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])
    cols = F.pad(rows, (0, 0, 1, 1), value=float("-inf"))
    return torch.maximum(torch.maximum(cols[..., :-2, :], cols[..., 1:-1, :]), cols[..., 2:, :])


def render_sdf(
    sdf: SdfFn, albedo: SdfFn, radius: float, cameras, light: Tensor, ambient: float, background: float,
    supersample: int = 2, edge_threshold: float = 0.1, table: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """Sphere-traced images of an SDF with albedo, lit by one directional light.

    One ray per pixel first; pixels whose 3×3 neighbourhood changes coverage or color by more than
    ``edge_threshold`` are re-traced with ``supersample``² sub-pixel rays and averaged, so that edges
    are soft like a NeRF's. Returns rgb [B,H,W,3], mask [B,H,W,1], depth [B,H,W,1], normal [B,H,W,3]
    (depth and normal coverage-weighted, 0 where empty). ``table``: the scene's parts for the
    compiled tracer (its distance also gives the normals), or None for the torch path.
    """
    B, H, W = len(cameras), cameras.height, cameras.width
    if table is not None:
        sdf = functools.partial(sdf_trace.distance, table=table)
    origins, dirs = cameras.rays()
    hit, rgb, depth, normal = _trace_and_shade(sdf, albedo, origins.reshape(-1, 3), dirs.reshape(-1, 3), radius, light, ambient, background, table)
    out = {"rgb": rgb.view(B, H, W, 3), "mask": hit.view(B, H, W, 1), "depth": depth.view(B, H, W, 1), "normal": normal.view(B, H, W, 3)}
    if supersample <= 1:
        return out
    signal = torch.cat([out["rgb"], out["mask"]], dim=-1).permute(0, 3, 1, 2)
    spread = _max_3x3(signal) + _max_3x3(-signal)  # local max − min
    edge = torch.nonzero(spread.amax(dim=1) > edge_threshold)  # [E,3] (b, row, col)
    if len(edge) == 0:
        return out
    s = supersample
    sub_origins, sub_dirs = cameras.with_resolution(W * s, H * s).rays()
    offsets = torch.arange(s)
    rows = (edge[:, 1, None] * s + offsets[None, :])[:, :, None].expand(-1, s, s)
    cols = (edge[:, 2, None] * s + offsets[None, :])[:, None, :].expand(-1, s, s)
    b = edge[:, 0, None, None].expand(-1, s, s)
    o, d = sub_origins[b, rows, cols].reshape(-1, 3), sub_dirs[b, rows, cols].reshape(-1, 3)
    results = _trace_and_shade(sdf, albedo, o, d, radius, light, ambient, background, table)
    for key, value in zip(("mask", "rgb", "depth", "normal"), results):
        out[key][edge[:, 0], edge[:, 1], edge[:, 2]] = value.view(len(edge), s * s, -1).mean(dim=1)
    return out
