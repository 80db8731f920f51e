"""The conversion level for geometries that render themselves without a volume density (the Gaussians).

A splat model's density Σ oᵢ·exp(−½ dᵀΣᵢ⁻¹d) at the export level (1, DreamGaussian's) is what the
Gaussians' own renders show only where they are dense: a CPU-sized model (a few thousand splats)
gives a surface full of holes and in pieces although its renders are solid and touching. So the
level is chosen by what the model shows: among export level · 2⁻ᵏ (k = 0 … 7), the one whose
marching-tetrahedra surface has the silhouettes closest (mask IoU, 12 orbit views) to the Gaussians'
own opacity renders; candidates within ``IOU_TOLERANCE`` of the best count as ties, and ties keep the
higher level: below some level the IoU only creeps up (0.93 → 0.93 from 2⁻⁵ to 2⁻⁷ on the demo's
SDS run) while the surface takes in the splats' thin fog and its floaters. Each candidate is converted as the conversion is
configured (with the occupancy cleaning of :mod:`threestudio_like.geometry.tetrahedra_init` when it is
on), so the choice sees the surface the grid will hold.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

# ``grid`` arguments are TetrahedraSDFGrid instances; the class is not imported here because
# geometry/tetrahedra.py imports this module (one direction only)

log = logging.getLogger(__name__)

# the renderer that shows a splat geometry as the user saw it
SPLAT_RENDERER = "gaussian-rasterizer"
N_CANDIDATES = 8
IOU_TOLERANCE = 0.01
SIZE = 64


def silhouette_cameras(radius: float):
    """8 views around at elevation 15° and 4 from above (60°), framing a ball of ``radius``."""
    from threestudio_like.data.cameras import make_cameras

    elevation = torch.tensor([15.0] * 8 + [60.0] * 4)
    azimuth = torch.cat([torch.arange(8) * 45.0, torch.arange(4) * 90.0 + 45.0])
    n = len(elevation)
    return make_cameras(elevation, azimuth, torch.full((n,), 2.5 * radius), torch.full((n,), 40.0), SIZE, SIZE)


def own_masks(other, cameras) -> Tensor:
    """other's opacity renders > 0.5 → [C,H,W] bool."""
    from threestudio_like.materials.plain_albedo import PlainAlbedo, PlainAlbedoConfig
    from threestudio_like.registry import lookup
    from threestudio_like.renderers.background import SolidColorBackground, SolidColorConfig

    renderer_cls = lookup("renderer", SPLAT_RENDERER)
    renderer = renderer_cls(renderer_cls.Config())
    with torch.no_grad():
        out = renderer.render(other, PlainAlbedo(PlainAlbedoConfig()), SolidColorBackground(SolidColorConfig()), cameras)
    return out["opacity"][..., 0].cpu() > 0.5


def surface_masks(grid: "TetrahedraSDFGrid", cameras) -> Tensor:
    """Coverage of grid's current surface → [C,H,W] bool (all False for an empty surface)."""
    from threestudio_like.renderers.rasterize import clip_positions, rasterize

    with torch.no_grad():
        mesh = grid.extract()
        if mesh.n_faces == 0:
            return torch.zeros(len(cameras), cameras.height, cameras.width, dtype=torch.bool)
        cameras = cameras.to(mesh.v_pos.device)
        rast = rasterize(clip_positions(mesh.v_pos, cameras), mesh.t_pos_idx.int(), cameras.height, cameras.width)
    return rast[..., 3].cpu() > 0


def mask_iou(a: Tensor, b: Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union > 0 else 0.0


def self_rendered(other) -> bool:
    """A geometry made of splats (the Gaussians): its own renders show the surface the user saw."""
    return other.splats() is not None


def candidate_levels(export_level: float) -> list[float]:
    """The levels tried, highest first: export level · 2⁻ᵏ, k = 0 … N_CANDIDATES − 1."""
    return [export_level * 2.0**-k for k in range(N_CANDIDATES)]


def lowest_candidate(export_level: float) -> float:
    return candidate_levels(export_level)[-1]


def best_level(grid: "TetrahedraSDFGrid", other, sdf_of_level: Callable[[float], Tensor], export_level: float) -> float:
    """The candidate level (module docstring) whose surface best matches other's silhouettes.
    sdf_of_level(level) → grid's sdf [(R+1)³] (cells) at that level (the conversion as configured);
    grid's sdf is left at the last candidate."""
    cameras = silhouette_cameras(float(other.radius))
    target = own_masks(other, cameras)
    scores = []
    for k, level in enumerate(candidate_levels(export_level)):
        grid.set_sdf_cells(sdf_of_level(level))
        scores.append((mask_iou(surface_masks(grid, cameras), target), k, level))
    best = max(iou for iou, _, _ in scores)
    iou, _, level = max((score for score in scores if score[0] >= best - IOU_TOLERANCE), key=lambda score: score[2])
    log.info("conversion level of %s: %.4g (silhouette IoU %.3f against its renders; %.3f at the export level %.4g)",
             type(other).__name__, level, iou, scores[0][0], export_level)
    return level
