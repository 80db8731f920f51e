"""A small prompt grammar → a procedural scene of colored SDF primitives (the embedded prior's world).

Grammar (case-insensitive; commas and full stops are ignored)::

    scene  := phrase (relation phrase)*            relations group left to right
    phrase := [article] (size | color)* noun
    noun   := shape | named object

"A on B" stacks A on top of B; "A under B" is "B on A"; "A next to B" (also "beside", "and") puts
A on the left (−y) and B on the right (+y) as seen from the front camera, bottoms level. The whole
scene is centred and scaled so that it fits in a sphere of radius ``FIT_RADIUS`` about the origin.

Named objects house, mug, chair, duck and snowman look different from the front (+x, azimuth 0) and
the back (a door, a label / a handle, a backrest, a beak, a face), so front/back confusion ("Janus")
can be measured on them; a tree is symmetric. A color word recolors an object's main body. The same
scene is the ground truth of the quality benchmark.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from threestudio_like.data.cameras import Cameras
from threestudio_like.kernels import sdf_trace, use_kernels
from threestudio_like.priors.sdf import Primitive, Shape, bounding_radius, evaluate, render_sdf, sdf_normals, single_thread

FIT_RADIUS = 0.72  # the NeRF's bounding radius is 1.0; keep the scene well inside it
LIGHT_DIRECTION = (0.4, 0.3, 1.0)  # one fixed world light (normalised below), baked into the colors
AMBIENT = 0.45
BACKGROUND = 1.0  # white

COLORS = {
    "red": (0.85, 0.15, 0.15), "green": (0.2, 0.7, 0.25), "blue": (0.2, 0.35, 0.85),
    "yellow": (0.95, 0.85, 0.2), "orange": (0.95, 0.55, 0.15), "purple": (0.55, 0.25, 0.7),
    "pink": (0.95, 0.55, 0.7), "white": (0.93, 0.93, 0.93), "black": (0.1, 0.1, 0.1),
    "gray": (0.55, 0.55, 0.55), "grey": (0.55, 0.55, 0.55), "brown": (0.5, 0.32, 0.18),
    "cyan": (0.2, 0.8, 0.85), "magenta": (0.85, 0.2, 0.7),
}
SIZES = {"tiny": 0.5, "small": 0.7, "medium": 1.0, "large": 1.35, "big": 1.35, "huge": 1.7}
SHAPES = {
    "sphere": "sphere", "ball": "sphere", "cube": "cube", "box": "cube", "block": "cube",
    "cylinder": "cylinder", "cone": "cone", "torus": "torus", "donut": "torus", "doughnut": "torus",
    "ring": "torus", "capsule": "capsule", "pill": "capsule", "pyramid": "pyramid",
}
NAMED = ("house", "mug", "chair", "duck", "snowman", "tree")
ARTICLES = ("a", "an", "the")
# multi-word relations are matched first
RELATIONS = {("on", "top", "of"): "on", ("next", "to"): "next to", ("on",): "on", ("under",): "under",
             ("below",): "under", ("beneath",): "under", ("above",): "on", ("beside",): "next to", ("and",): "next to"}
DEFAULT_COLOR = (0.6, 0.6, 0.6)


def vocabulary() -> str:
    """The accepted words, as one line (for error messages)."""
    relations = sorted({" ".join(k) for k in RELATIONS})
    return (
        f"articles: {', '.join(ARTICLES)}; sizes: {', '.join(SIZES)}; colors: {', '.join(COLORS)}; "
        f"shapes: {', '.join(SHAPES)}; objects: {', '.join(NAMED)}; relations: {', '.join(relations)}"
    )


# --------------------------------------------------------------------------------------------------
# Objects in their own frame (base on z=0, front facing +x), before layout
# --------------------------------------------------------------------------------------------------
ROT_RING_XZ = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0))  # torus axis along world y
ROT_AXIS_X = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # local z (cone apex) along world +x
ROT_AXIS_NEG_X = ((0.0, 0.0, -1.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # local z along world −x


def _shape_parts(shape: str, color: tuple) -> list[Primitive]:
    """A plain shape of height about 1."""
    table = {
        "sphere": Primitive("sphere", (0.5,), (0, 0, 0.5), color),
        "cube": Primitive("box", (0.45, 0.45, 0.45), (0, 0, 0.45), color),
        "cylinder": Primitive("cylinder", (0.4, 0.5), (0, 0, 0.5), color),
        "cone": Primitive("cone", (0.5, 1.0), (0, 0, 0.5), color),
        "torus": Primitive("torus", (0.38, 0.16), (0, 0, 0.16), color),
        "capsule": Primitive("capsule", (0.3, 0.35), (0, 0, 0.65), color),
        "pyramid": Primitive("pyramid", (0.5, 0.9), (0, 0, 0.45), color),
    }
    return [table[shape]]


def _house(color: tuple) -> list[Primitive]:
    walls = color or (0.92, 0.85, 0.68)
    return [
        Primitive("box", (0.4, 0.45, 0.3), (0, 0, 0.3), walls),
        Primitive("prism", (0.48, 0.4, 0.5), (0, 0, 0.8), (0.65, 0.2, 0.15)),
        Primitive("box", (0.02, 0.1, 0.17), (0.41, 0, 0.17), (0.35, 0.2, 0.1)),  # door, front only
        Primitive("box", (0.015, 0.08, 0.07), (0.41, 0.28, 0.36), (0.55, 0.75, 0.95)),
        Primitive("box", (0.015, 0.08, 0.07), (0.41, -0.28, 0.36), (0.55, 0.75, 0.95)),
        Primitive("box", (0.06, 0.06, 0.15), (-0.22, 0.2, 0.9), (0.45, 0.45, 0.45)),  # chimney, back slope
    ]


def _mug(color: tuple) -> list[Primitive]:
    body = color or (0.93, 0.93, 0.93)
    inside = tuple(0.6 * c for c in body)
    return [
        Primitive("cylinder", (0.35, 0.4), (0, 0, 0.4), body),
        Primitive("torus", (0.2, 0.05), (-0.38, 0, 0.42), body, ROT_RING_XZ),  # handle at the back
        Primitive("box", (0.03, 0.13, 0.12), (0.34, 0, 0.42), (0.85, 0.15, 0.15) if color is None else (0.1, 0.1, 0.1)),  # front label
        Primitive("cylinder", (0.3, 0.4), (0, 0, 0.5), inside, carve=True),
    ]


def _chair(color: tuple) -> list[Primitive]:
    wood = color or (0.55, 0.35, 0.2)
    legs = [Primitive("box", (0.035, 0.035, 0.21), (sx * 0.25, sy * 0.25, 0.21), wood) for sx in (-1, 1) for sy in (-1, 1)]
    return legs + [
        Primitive("box", (0.3, 0.3, 0.04), (0, 0, 0.45), wood),
        Primitive("box", (0.03, 0.3, 0.3), (-0.27, 0, 0.79), wood),  # backrest at the back (−x)
        Primitive("box", (0.22, 0.22, 0.015), (0.03, 0, 0.5), (0.75, 0.2, 0.2)),  # cushion
    ]


def _duck(color: tuple) -> list[Primitive]:
    body = color or (0.95, 0.85, 0.2)
    return [
        Primitive("sphere", (0.35,), (-0.05, 0, 0.35), body),
        Primitive("sphere", (0.2,), (0.2, 0, 0.72), body),
        Primitive("cone", (0.08, 0.2), (0.46, 0, 0.7), (0.95, 0.55, 0.15), ROT_AXIS_X),  # beak, front
        Primitive("sphere", (0.035,), (0.36, 0.09, 0.79), (0.1, 0.1, 0.1)),
        Primitive("sphere", (0.035,), (0.36, -0.09, 0.79), (0.1, 0.1, 0.1)),
        Primitive("cone", (0.1, 0.22), (-0.42, 0, 0.45), body, ROT_AXIS_NEG_X),  # tail, back
    ]


def _snowman(color: tuple) -> list[Primitive]:
    snow = color or (0.93, 0.93, 0.93)
    return [
        Primitive("sphere", (0.3,), (0, 0, 0.3), snow),
        Primitive("sphere", (0.22,), (0, 0, 0.78), snow),
        Primitive("cone", (0.05, 0.22), (0.3, 0, 0.8), (0.95, 0.55, 0.15), ROT_AXIS_X),  # carrot nose
        Primitive("sphere", (0.03,), (0.19, 0.08, 0.87), (0.1, 0.1, 0.1)),
        Primitive("sphere", (0.03,), (0.19, -0.08, 0.87), (0.1, 0.1, 0.1)),
        Primitive("cylinder", (0.14, 0.1), (0, 0, 1.05), (0.1, 0.1, 0.1)),  # hat
    ]


def _tree(color: tuple) -> list[Primitive]:
    return [Primitive("cylinder", (0.08, 0.2), (0, 0, 0.2), (0.5, 0.32, 0.18)),
            Primitive("cone", (0.4, 0.8), (0, 0, 0.8), color or (0.2, 0.6, 0.25))]


_NAMED_BUILDERS = {"house": _house, "mug": _mug, "chair": _chair, "duck": _duck, "snowman": _snowman, "tree": _tree}
_ASYMMETRIC = {"house", "mug", "chair", "duck", "snowman"}


@dataclass
class SceneObject:
    """One noun phrase: ``noun`` (canonical shape or object name), optional color/size words, its parts."""

    noun: str
    color: str | None
    size: str | None
    shape: Shape

    @property
    def asymmetric(self) -> bool:
        return self.noun in _ASYMMETRIC

    def describe(self) -> str:
        return " ".join(w for w in (self.size, self.color, self.noun) if w)


def _build_object(noun: str, color: str | None, size: str | None) -> SceneObject:
    rgb = COLORS[color] if color else None
    parts = _NAMED_BUILDERS[noun](rgb) if noun in _NAMED_BUILDERS else _shape_parts(noun, rgb or DEFAULT_COLOR)
    scale = SIZES[size] if size else 1.0
    return SceneObject(noun, color, size, Shape([p.transformed(scale, (0.0, 0.0, 0.0)) for p in parts]))


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------
def _tokens(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,.;:!?]+", text.lower()) if w]


def _match_relation(words: list[str], i: int) -> tuple[str, int] | None:
    for key in sorted(RELATIONS, key=len, reverse=True):
        if tuple(words[i:i + len(key)]) == key:
            return RELATIONS[key], len(key)
    return None


def _parse_phrase(words: list[str], i: int, text: str) -> tuple[SceneObject, int]:
    color = size = None
    while i < len(words):
        word = words[i]
        if word in ARTICLES:
            pass
        elif word in SIZES:
            size = word
        elif word in COLORS:
            if color is not None:
                raise ValueError(f"prompt {text!r} gives one object two colors ({color}, {word}); give each object one color")
            color = "gray" if word == "grey" else word
        elif word in SHAPES or word in NAMED:
            return _build_object(SHAPES.get(word, word), color, size), i + 1
        elif _match_relation(words, i) is not None:
            break
        else:
            raise ValueError(f"unknown word {word!r} in prompt {text!r}; accepted words: {vocabulary()}")
        i += 1
    where = f"before {words[i]!r}" if i < len(words) else "at the end"
    raise ValueError(f"prompt {text!r} lacks a shape or object {where}; e.g. 'a red ball on a blue box' ({vocabulary()})")


def parse_prompt(text: str) -> "Scene":
    """Prompt text → :class:`Scene`; a word outside the vocabulary raises a one-line ValueError."""
    words = _tokens(text)
    if not words:
        raise ValueError(f"prompt {text!r} is empty; e.g. 'a red ball on a blue box' ({vocabulary()})")
    objects, relations = [], []
    first, i = _parse_phrase(words, 0, text)
    objects.append(first)
    while i < len(words):
        match = _match_relation(words, i)
        if match is None:
            word = words[i]
            known = word in ARTICLES or word in SIZES or word in COLORS or word in SHAPES or word in NAMED
            if not known:
                raise ValueError(f"unknown word {word!r} in prompt {text!r}; accepted words: {vocabulary()}")
            raise ValueError(f"prompt {text!r}: expected a relation before {word!r}; relations: on, under, next to, beside, and")
        relation, n = match
        obj, i = _parse_phrase(words, i + n, text)
        objects.append(obj)
        relations.append(relation)
    return Scene(text, objects, relations)


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------
def _bounds(shapes: list[Shape]) -> tuple[Tensor, Tensor]:
    boxes = [s.bounds() for s in shapes]
    return torch.stack([b[0] for b in boxes]).min(0).values, torch.stack([b[1] for b in boxes]).max(0).values


def _move(shapes: list[Shape], offset: Tensor, scale: float = 1.0) -> list[Shape]:
    off = tuple(float(v) for v in offset)
    return [Shape([p.transformed(scale, off) for p in s.parts]) for s in shapes]


def _combine(moving: list[tuple[int, Shape]], relation: str, fixed: list[tuple[int, Shape]]) -> list[tuple[int, Shape]]:
    """Move group ``moving`` so that it stands ``relation`` ("on" or "next to") group ``fixed``."""
    (mlo, mhi), (flo, fhi) = _bounds([s for _, s in moving]), _bounds([s for _, s in fixed])
    mc, fc = 0.5 * (mlo + mhi), 0.5 * (flo + fhi)
    if relation == "on":
        offset = torch.stack([fc[0] - mc[0], fc[1] - mc[1], fhi[2] - mlo[2]])
    else:  # next to: the moving group on the left (−y), a small gap, bottoms level
        gap = 0.15 * float(torch.maximum(mhi - mlo, fhi - flo).max())
        offset = torch.stack([fc[0] - mc[0], flo[1] - gap - mhi[1], flo[2] - mlo[2]])
    off = tuple(float(v) for v in offset)
    return [(k, Shape([p.transformed(1.0, off) for p in s.parts])) for k, s in moving] + fixed


def _layout(objects: list[SceneObject], relations: list[str]) -> list[Shape]:
    """Shapes of the objects (prompt order) placed by the relations, grouped left to right, then
    centred and scaled to fit a sphere of ``FIT_RADIUS``."""
    group = [(0, objects[0].shape)]
    for k, (relation, obj) in enumerate(zip(relations, objects[1:]), start=1):
        new = [(k, obj.shape)]
        group = _combine(new, "on", group) if relation == "under" else _combine(group, relation, new)
    shapes = [s for _, s in sorted(group, key=lambda item: item[0])]
    lo, hi = _bounds(shapes)
    centred = _move(shapes, -0.5 * (lo + hi))
    scale = FIT_RADIUS / bounding_radius(centred)
    return _move(centred, torch.zeros(3), scale)


@dataclass
class Scene:
    """A parsed prompt: objects (in prompt order), the relations between consecutive phrases, and
    the laid-out shapes. Implements the ground-truth geometry, albedo and renders."""

    text: str
    objects: list[SceneObject]
    relations: list[str]
    shapes: list[Shape] = field(init=False)
    radius: float = field(init=False)

    def __post_init__(self) -> None:
        self.shapes = _layout(self.objects, self.relations)
        self.radius = bounding_radius(self.shapes)

    @property
    def asymmetric(self) -> bool:
        """True when some object looks different from the front (+x) and the back (−x)."""
        return any(o.asymmetric for o in self.objects)

    @property
    def key(self) -> str:
        """Canonical description: equal for prompts that make the same scene."""
        words = [self.objects[0].describe()]
        for relation, obj in zip(self.relations, self.objects[1:]):
            words += [relation, obj.describe()]
        return " ".join(words)

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance [N] at points [N,3] (negative inside)."""
        return evaluate(self.shapes, points, with_color=False)[0]

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo [N,3] of the part nearest to each point [N,3]."""
        return evaluate(self.shapes, points)[1]

    def render(self, cameras: Cameras, supersample: int = 2, rays_per_chunk: int = 1 << 17, cpu_kernel: Any = "auto") -> dict[str, Tensor]:
        """Sphere-traced views: rgb [B,H,W,3] (fixed light, white background), mask [B,H,W,1]
        (pixel coverage), depth [B,H,W,1] (distance along the ray, 0 where empty, coverage-weighted
        like a volume renderer's), normal [B,H,W,3] (world, coverage-weighted). Pixels on edges are
        averaged over ``supersample``² sub-pixel rays, so masks have soft edges. ``cpu_kernel``
        (auto | true | false): the compiled tracer (threestudio_like/kernels/sdf_trace.py) or the torch one."""
        cameras = cameras.to("cpu")
        light = light_direction()
        table = sdf_trace.part_table(self.shapes) if use_kernels(cpu_kernel) else None
        chunk = max(1, rays_per_chunk // (cameras.width * cameras.height))  # few large ops: the tracer loops in python
        with single_thread():
            outs = [
                render_sdf(self.sdf, self.albedo, self.radius + 0.02, cameras[i:i + chunk], light, AMBIENT, BACKGROUND, supersample,
                           table=table)
                for i in range(0, len(cameras), chunk)
            ]
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def surface_mesh(self, resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """The true surface as (vertices [V,3], faces [F,3]): marching cubes of the SDF on a
        ``resolution``³ grid just larger than the scene."""
        import mcubes

        r = self.radius + 0.05
        axis = torch.linspace(-r, r, resolution)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        with single_thread():
            values = torch.cat([self.sdf(chunk) for chunk in grid.split(262144)])
        volume = (-values).reshape(resolution, resolution, resolution).numpy().astype(np.float64)
        verts, faces = mcubes.marching_cubes(volume, 0.0)
        return verts * (2 * r / (resolution - 1)) - r, faces

    def surface_points(self, n: int, resolution: int = 128, seed: int = 0) -> Tensor:
        """n points [n,3] sampled uniformly (by area) on the surface (marching cubes of the SDF)."""
        verts, faces = self.surface_mesh(resolution)
        tri = verts[faces]  # [F,3,3]
        areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(faces), size=n, p=areas / areas.sum())
        u, v = rng.random((2, n))
        flip = u + v > 1  # fold the unit square onto the triangle
        u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
        t = tri[pick]
        points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
        return torch.from_numpy(points).float()

    def normals(self, points: Tensor, projections: int = 2) -> Tensor:
        """True outward unit normals [N,3] at the surface points closest to ``points`` [N,3]: each
        point is moved onto the surface along the SDF gradient (p ← p − sdf(p)·∇sdf), then the
        gradient there is taken."""
        with single_thread():
            for _ in range(projections):
                points = points - self.sdf(points)[:, None] * sdf_normals(self.sdf, points)
            return sdf_normals(self.sdf, points)


def light_direction() -> Tensor:
    """[3] the unit world light direction baked into every reference."""
    d = torch.tensor(LIGHT_DIRECTION)
    return d / d.norm()
