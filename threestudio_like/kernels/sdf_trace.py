"""The embedded prior's sphere tracer compiled (csrc/sdf_trace.cpp): a scene's primitives as a table
of rows, the scene's signed distance and the marching loop over it."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).parent / "csrc" / "sdf_trace.cpp"
KINDS = ("sphere", "box", "cylinder", "cone", "torus", "capsule", "pyramid", "prism")  # the C++ enum's order


def kind_constants(kind: str, size: tuple[float, ...]) -> tuple[float, ...]:
    """The constants threestudio_like/priors/sdf.py's sdf_<kind> derives from ``size``, in the C++ order."""
    if kind == "cone":
        r, hh = size[0], 0.5 * size[1]
        k2x, k2y = -r, 2.0 * hh
        return (r, hh, k2x, k2y, k2x * k2x + k2y * k2y)
    if kind == "pyramid":
        b, h = size
        return (b, h, math.hypot(h, b), 0.5 * h)
    if kind == "prism":
        b, h, length = size
        return (b, h, math.hypot(h, b), 0.5 * h, length)
    return tuple(size)


def part_table(shapes: list) -> Tensor:
    """[P, 22] float64: one row per primitive (shape, kind, carve, rotated, centre 3, rotation 9,
    constants 6), each shape's added parts before its carved ones, as sdf._distance composes them."""
    rows = []
    for index, shape in enumerate(shapes):
        for part in [p for p in shape.parts if not p.carve] + [p for p in shape.parts if p.carve]:
            identity = part.rotation == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
            constants = kind_constants(part.kind, part.size)
            rows.append([index, KINDS.index(part.kind), float(part.carve), float(not identity), *part.center,
                         *[v for row in part.rotation for v in row], *constants, *[0.0] * (6 - len(constants))])
    return torch.tensor(rows, dtype=torch.float64)


def distance(points: Tensor, table: Tensor) -> Tensor:
    """points [N,3] float32 → the scene's signed distance [N]."""
    return torch.ops.threestudio_like_cpu.sdf_distance(points.contiguous(), table)


def march(origins: Tensor, dirs: Tensor, t: Tensor, t_far: Tensor, inside: Tensor, table: Tensor,
          max_steps: int, eps: float) -> tuple[Tensor, Tensor]:
    """sphere_trace's loop: rays [R,3] from t [R] to t_far [R] where ``inside`` [R] → (hit [R], t [R])."""
    return torch.ops.threestudio_like_cpu.sdf_march(origins.contiguous(), dirs.contiguous(), t, t_far, inside, table,
                                                     int(max_steps), float(eps))
