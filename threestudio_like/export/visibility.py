"""Which surface points the training cameras see, and colour for the points they never see.

No training view of a run sees below its lowest elevation (``data.elevation_range``, −10°…60° in the
CPU configs), and the prior's references follow the same range, so the colour field under an object
is whatever its initialisation left: the pale, mottled underside of the refined assets. At bake time
the exporter (``exporter.fill_unseen``) renders the mesh's depth from cameras spread over the run's
camera range (:func:`covering_cameras`), marks the surface points a camera sees (:func:`seen_points`:
the point projects into the image in front of the camera, its face is turned to the camera within
an angle, and its depth is within a pixel or two of the depth the rasterizer draws there), and gives
every unseen point the colour of the nearest seen one in 3D (:func:`fill_unseen`): the bottom of a box
takes the colour of its side faces' lower band. Seen surface coloured like a solid training
background gives no colour (:func:`background_like`): where the mesh reaches beyond the object's true
outline (an underside hanging below the truth), the views painted it to vanish into the background,
and copying that would make the whole underside background-coloured. Seen points keep their colour
exactly.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from threestudio_like.data.cameras import Cameras, RandomCameraConfig, make_cameras
from threestudio_like.kernels import use_kernels
from threestudio_like.kernels.rasterize import seen_by_views
from threestudio_like.renderers.rasterize import NEAR, clip_positions, interpolate, rasterize

log = logging.getLogger(__name__)


def ring_layout(n_views: int, elevation_span: float) -> tuple[int, int]:
    """(rings, views per ring) for ``n_views`` cameras: about three times as many views around
    a ring as rings, one ring when the elevation range is a single angle."""
    if elevation_span <= 0:
        return 1, n_views
    rings = min(n_views, max(2, round(math.sqrt(n_views / 3))))
    return rings, max(1, n_views // rings)


def covering_cameras(camera_range: RandomCameraConfig, n_views: int, resolution: int) -> Cameras:
    """About ``n_views`` cameras spread over a training camera range: rings at evenly spaced
    elevations from the lowest to the highest (both included), each ring's azimuths evenly spread
    over ``azimuth_range`` (staggered by half a step on every other ring), all at the farthest
    distance and the widest field of view of the range, which see the most of an object
    (``resolution``² pixels)."""
    low, high = camera_range.elevation_range
    rings, per_ring = ring_layout(n_views, high - low)
    a_low, a_high = camera_range.azimuth_range
    full_circle = a_high - a_low >= 360.0
    elevations, azimuths = [], []
    for ring in range(rings):
        elevation = low if rings == 1 else low + (high - low) * ring / (rings - 1)
        stagger = 0.5 * (ring % 2)
        if full_circle:
            steps = (torch.arange(per_ring, dtype=torch.float32) + stagger) * (360.0 / per_ring) + a_low
        else:
            steps = torch.linspace(a_low, a_high, per_ring) if per_ring > 1 else torch.tensor([0.5 * (a_low + a_high)])
        elevations.append(torch.full((per_ring,), float(elevation)))
        azimuths.append(steps)
    elevation, azimuth = torch.cat(elevations), torch.cat(azimuths)
    count = len(elevation)
    distance = torch.full((count,), float(camera_range.camera_distance_range[1]))
    fovy = torch.full((count,), float(camera_range.fovy_range[1]))
    return make_cameras(elevation, azimuth, distance, fovy, resolution, resolution)


def view_depth(points: Tensor, w2c: Tensor) -> Tensor:
    """World points [N,3] and one world → camera matrix [4,4] (OpenGL frame) → depth along the
    viewing direction [N] (positive in front of the camera)."""
    return -(points @ w2c[2, :3] + w2c[2, 3])


def drawn_depth(vertices: Tensor, faces: Tensor, cameras: Cameras, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The cameras' world → camera matrices [B,4,4] and the depth the rasterizer draws [B,H·W] (inf
    where the mesh (vertices [V,3], faces [F,3]) leaves the pixel empty), all cameras in one pass."""
    rast = rasterize(clip_positions(vertices, cameras), faces, cameras.height, cameras.width, backend="torch")
    surface = interpolate(vertices, rast, faces, backend="torch").view(len(cameras), -1, 3)
    w2c = torch.stack([torch.linalg.inv(cameras.c2w[i].double()).to(dtype) for i in range(len(cameras))])
    drawn = torch.stack([view_depth(surface[i], w2c[i]) for i in range(len(cameras))])
    return w2c, torch.where(rast[..., 3].reshape(len(cameras), -1) > 0, drawn, torch.full_like(drawn, math.inf))


def seen_in_view(points: Tensor, normals: Tensor, vertices: Tensor, faces: Tensor, camera: Cameras,
                 max_angle: float, tolerance_px: float) -> Tensor:
    """Which points [N,3] (unit normals [N,3]) of the mesh (vertices [V,3], faces [F,3]) one camera
    sees → bool [N]: the point projects to a pixel of the image, lies in front of the near plane,
    faces the camera within ``max_angle`` degrees (more oblique, a pixel of a training view spreads
    over so much surface that it does not decide the point's colour), and its depth exceeds the
    depth the rasterizer draws at that pixel by at most ``tolerance_px`` + tan θ pixel widths at that
    depth (the depth image's own sampling error on a surface at angle θ to the view)."""
    height, width = camera.height, camera.width
    w2c, drawn = (t[0] for t in drawn_depth(vertices, faces, camera, points.dtype))
    local = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -local[:, 2]
    focal = float(camera.focal_length()[0])
    front = depth > NEAR
    safe = torch.where(front, depth, torch.ones_like(depth))
    column = torch.floor(focal * local[:, 0] / safe + 0.5 * width)  # pixel i spans [i, i + 1)
    row = torch.floor(-focal * local[:, 1] / safe + 0.5 * height)  # row 0 at the top of the image
    inside = front & (column >= 0) & (column < width) & (row >= 0) & (row < height)
    pixel = (row.clamp(0, height - 1) * width + column.clamp(0, width - 1)).long()
    toward = camera.position[0].to(points) - points
    cosine = (normals * toward).sum(-1) / toward.norm(dim=-1).clamp_min(1e-12)
    facing = cosine >= math.cos(math.radians(max_angle))
    # the point lies up to half a pixel from the pixel centre where the depth was drawn: on a surface
    # at angle θ to the view that is tan θ pixel widths of depth, on top of the tolerance itself
    slope = (1.0 - cosine.square()).clamp_min(0).sqrt() / cosine.clamp_min(math.cos(math.radians(max_angle)))
    return inside & facing & (depth <= drawn[pixel] + (tolerance_px + slope) * depth / focal)


def seen_points(points: Tensor, normals: Tensor, vertices: Tensor, faces: Tensor, cameras: Cameras,
                max_angle: float = 75.0, tolerance_px: float = 2.0, cpu_kernel: Any = "auto") -> Tensor:
    """Points [N,3] with unit normals [N,3] on the mesh (vertices [V,3], faces [F,3]) that at
    least one of the cameras sees (:func:`seen_in_view`) → bool [N]. ``cpu_kernel`` (auto | true |
    false): the per-point test compiled (kernels/csrc/visibility.cpp: one loop per point over the
    cameras, the same decisions to float rounding) or in torch, camera by camera."""
    seen = torch.zeros(len(points), dtype=torch.bool)
    points, normals, vertices = points.float(), normals.float(), vertices.float()
    if use_kernels(cpu_kernel, points, vertices):
        w2c, drawn = drawn_depth(vertices, faces, cameras, points.dtype)
        return seen_by_views(points, normals, w2c, cameras.position, cameras.focal_length(), drawn, cameras.height,
                             cameras.width, NEAR, math.cos(math.radians(max_angle)), tolerance_px)
    for i in range(len(cameras)):
        open_ = torch.nonzero(~seen)[:, 0]  # only what no camera so far has seen: most go in the first few
        seen[open_] = seen_in_view(points[open_], normals[open_], vertices, faces, cameras[i], max_angle, tolerance_px)
    return seen


def fill_unseen(colors: np.ndarray, points: np.ndarray, seen: np.ndarray, sources: np.ndarray | None = None) -> np.ndarray:
    """colors [N,3] of points [N,3] → a copy in which every unseen point (seen [N] False) has the
    colour of the nearest seen point (Euclidean, 3D; found approximately, at most 1.5× as far as the
    nearest) among ``sources`` [N] (default: every seen point; all of them again when no seen point
    is a source); seen points keep theirs exactly. When no point is seen there is nothing to copy
    from: the colours come back unchanged."""
    filled = np.array(colors, copy=True)
    seen = np.asarray(seen, dtype=bool)
    if seen.all() or not seen.any():
        if len(seen) and not seen.any():
            log.warning("no camera of the run's range sees the mesh: its colours are kept unfilled")
        return filled
    donors = seen if sources is None else seen & np.asarray(sources, dtype=bool)
    donors = donors if donors.any() else seen
    # approximate search (within 1.5× the nearest distance): an exact one takes seconds at 1024²,
    # as points far under an object have many nearly equidistant candidates
    _, nearest = cKDTree(points[donors]).query(points[~seen], eps=0.5)
    filled[~seen] = colors[donors][nearest]
    return filled


def background_rim(points: np.ndarray, seen: np.ndarray, background: np.ndarray, distance: float) -> np.ndarray:
    """points [N,3], seen [N], background [N] (background-like seen points) → bool [N]: the
    background-like points within ``distance`` (world units) of an unseen point: the rim of extra
    geometry a lowest view saw against the background, next to the surface no view sees (the
    refined assets' hanging underside). All False when ``distance`` is 0 or nothing is unseen."""
    rim = np.zeros(len(points), dtype=bool)
    seen, background = np.asarray(seen, dtype=bool), np.asarray(background, dtype=bool)
    if distance <= 0 or seen.all() or not background.any():
        return rim
    gap, _ = cKDTree(points[~seen]).query(points[background], distance_upper_bound=distance)
    rim[np.nonzero(background)[0][np.isfinite(gap)]] = True
    return rim


def background_like(colors: np.ndarray, seen: np.ndarray, background: Sequence[float] | None, fraction: float) -> np.ndarray:
    """colors [N,3], seen [N] → bool [N]: seen points whose colour is closer (RGB, Euclidean) to a
    solid training background than ``fraction`` of the seen points' median distance from it (the
    object's own contrast against it). Such surface is what the views saw as background, or blended
    into it: geometry outside the object's outline, painted to vanish, not the object's colour. All
    False without a background, a fraction or a seen point."""
    seen = np.asarray(seen, dtype=bool)
    if background is None or fraction <= 0 or not seen.any():
        return np.zeros(len(colors), dtype=bool)
    distance = np.linalg.norm(colors - np.asarray(background, dtype=colors.dtype), axis=-1)
    return seen & (distance < fraction * np.median(distance[seen]))


@dataclass
class TrainingViews:
    """What a run's training views were: its camera range (the data config) and the colour of its
    background when that is one solid colour (None otherwise)."""

    camera_range: RandomCameraConfig
    background: tuple[float, float, float] | None = None


@dataclass
class FillSettings:
    """How unseen surface is decided and filled (the exporter's ``fill_unseen_*`` keys)."""

    views: int = 48
    resolution: int = 256
    max_angle: float = 75.0
    background_fraction: float = 0.75
    rim_distance: float = 0.0


def colour_unseen(colors: np.ndarray, points: Tensor, normals: Tensor, vertices: Tensor, faces: Tensor,
                  training: TrainingViews, settings: FillSettings) -> tuple[np.ndarray, float]:
    """:func:`fill_unseen` of colors [N,3] at mesh points [N,3] (unit normals [N,3]) of the mesh
    (vertices [V,3], faces [F,3]), seen or not by cameras over ``training.camera_range``, taking no
    colour from background-like seen points → (the filled colours, the fraction of points unseen)."""
    start = time.perf_counter()
    cameras = covering_cameras(training.camera_range, settings.views, settings.resolution)
    seen = seen_points(points, normals, vertices, faces, cameras, settings.max_angle).numpy()
    sources = ~background_like(colors, seen, training.background, settings.background_fraction)
    rim = background_rim(points.numpy(), seen, ~sources, settings.rim_distance)
    # the rim is filled as unseen surface is: from the nearest seen point that is not background-like
    filled = fill_unseen(colors, points.numpy(), seen & ~rim, sources & ~rim)
    unseen = float(1.0 - seen.mean()) if len(seen) else 0.0
    log.info("%.1f%% of the surface is unseen by %d cameras over the training range (%.1f%% of the seen looks "
             "like the background, %.1f%% recoloured as the rim next to the unseen): filled from the nearest seen "
             "surface in %.1f s", 100.0 * unseen, len(cameras), 100.0 * float((seen & ~sources).sum()) / max(int(seen.sum()), 1),
             100.0 * float(rim.sum()) / max(int(seen.sum()), 1), time.perf_counter() - start)
    return filled, unseen
