"""Density field → triangle mesh: grid sampling, marching cubes and cleanup.

Works on any :class:`~threestudio_like.geometry.base.Geometry` through ``density`` alone. The mesh
stays in the world frame (z-up, metres of the scene), so it can be compared with ground truth.

Threshold rule (``threshold="auto"``): use ``geometry.isosurface_threshold()``; when the grid never
reaches that level (a short run whose densities are still low), fall back to ``auto_fraction`` × the
grid's maximum density, i.e. the surface where the field reaches that fraction of its peak. A number
is used as given. A field whose maximum does not exceed the level has no surface: :class:`ExportError`.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import mcubes
import numpy as np
import torch
import trimesh
from tqdm import tqdm

log = logging.getLogger(__name__)

# the config key users set to change the level (named in error messages)
THRESHOLD_KEY = "system.exporter.isosurface_threshold"


class ExportError(ValueError):
    """Export cannot produce a mesh (e.g. an empty density field); the message is one line."""


def geometry_device(geometry: torch.nn.Module) -> torch.device:
    """The device of the geometry's parameters (CPU for a parameter-free geometry)."""
    for tensor in geometry.parameters():
        return tensor.device
    for tensor in geometry.buffers():
        return tensor.device
    return torch.device("cpu")


def grid_points(resolution: int, radius: float, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """World positions [stop−start, 3] of flat indices ``start:stop`` of a ``resolution``³ grid.

    Grid point (i, j, k) (flat index (i·R + j)·R + k) sits at −radius + (i, j, k)·2·radius/(R−1).
    """
    index = torch.arange(start, stop, device=device)
    r = resolution
    ijk = torch.stack([index // (r * r), (index // r) % r, index % r], dim=-1).float()
    return ijk * (2.0 * radius / (r - 1)) - radius


def density_grid(
    geometry: torch.nn.Module, resolution: int = 256, chunk_size: int = 262144, progress: bool = True,
    radius: Optional[float] = None,
) -> np.ndarray:
    """Density sampled on a ``resolution``³ grid over [−radius, radius]³ → float32 [R,R,R] (x, y, z order).

    Evaluated in chunks of ``chunk_size`` points under ``torch.no_grad`` so memory stays bounded.
    """
    radius = float(geometry.radius if radius is None else radius)
    device = geometry_device(geometry)
    total = resolution ** 3
    values = np.empty(total, dtype=np.float32)
    starts = range(0, total, chunk_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=f"density grid {resolution}^3", disable=not progress, leave=False):
            stop = min(start + chunk_size, total)
            sigma = geometry.density(grid_points(resolution, radius, start, stop, device))
            values[start:stop] = sigma.reshape(-1).float().cpu().numpy()
    return values.reshape(resolution, resolution, resolution)


def resolve_threshold(grid: np.ndarray, threshold: Any, geometry: Any, auto_fraction: float = 0.5) -> float:
    """The density level to extract (see the module docstring for the ``"auto"`` rule)."""
    peak = float(grid.max())
    if threshold != "auto":
        return float(threshold)
    try:
        level = float(geometry.isosurface_threshold())
    except NotImplementedError:
        level = float("inf")
    if peak > level:
        return level
    fallback = auto_fraction * peak
    if np.isfinite(level) and peak > 0:
        log.warning(
            "density never reaches the geometry's isosurface threshold %.4g (max %.4g); using %.4g = %.2f x max",
            level, peak, fallback, auto_fraction,
        )
    return fallback


def marching_cubes(grid: np.ndarray, level: float, radius: float) -> trimesh.Trimesh:
    """Surface {σ = level} of a density grid over [−radius, radius]³, outward normals, world frame.

    The grid is padded with one layer of zero density so that a field reaching the box boundary is
    still closed (watertight) there. Raises :class:`ExportError` when the level is crossed nowhere.
    """
    peak = float(grid.max())
    resolution = grid.shape[0]
    where = f"inside [-{radius:g}, {radius:g}]^3 at resolution {resolution}"
    if not peak > 0:
        raise ExportError(f"the density field has no surface: max density {peak:.4g} {where} (an empty field); "
                          f"train longer or check that the right checkpoint was loaded")
    if not peak > level:
        raise ExportError(f"the density field has no surface at threshold {level:.4g}: max density {peak:.4g} {where}; "
                          f"train longer or set {THRESHOLD_KEY} below {peak:.4g} (or to 'auto')")
    padded = np.pad(grid.astype(np.float64), 1, mode="constant", constant_values=0.0)
    vertices, faces = mcubes.marching_cubes(padded, float(level))
    spacing = 2.0 * radius / (resolution - 1)
    vertices = (vertices - 1.0) * spacing - radius  # undo the padding, index → world
    mesh = trimesh.Trimesh(vertices, faces, process=True)  # merges duplicate vertices
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        raise ExportError(f"the density field has no surface at threshold {level:.4g} (max {peak:.4g}); set {THRESHOLD_KEY} lower")
    # marching cubes on a field that is high inside winds faces outward; keep that, whatever the input
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    return mesh


def fill_enclosed(grid: np.ndarray, level: float) -> np.ndarray:
    """density [R,R,R] → the same with every enclosed cavity of {σ > level} raised to the grid's peak.

    A hollow that no path through empty voxels joins to the grid's border (a NeRF's ball can be a
    shell around one) would otherwise become a second, inner surface of the mesh: hidden, but a piece
    of its own that takes texture space. Only voxels inside the cavity change, so the outer surface's
    crossings — between inside and truly outside voxels — are the same as before."""
    from threestudio_like.geometry.morphology import fill_cavities  # geometry imports this module

    inside = grid > level
    cavity = fill_cavities(inside) & ~inside
    if not cavity.any():
        return grid
    log.info("filling %d voxels of enclosed cavities below the level %.4g", int(cavity.sum()), level)
    return np.where(cavity, grid.max(), grid).astype(grid.dtype)


def remove_floaters(mesh: trimesh.Trimesh, min_fraction: float) -> trimesh.Trimesh:
    """Keep the connected components whose face count is at least ``min_fraction`` × the largest's."""
    if min_fraction <= 0:
        return mesh
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    counts = np.bincount(labels)
    keep = counts >= min_fraction * counts.max()
    if keep.all():
        return mesh
    log.info("removing %d of %d mesh components below %.3g x the largest", int((~keep).sum()), len(counts), min_fraction)
    mesh = mesh.copy()
    mesh.update_faces(keep[labels])
    mesh.remove_unreferenced_vertices()
    return mesh


def decimate(mesh: trimesh.Trimesh, target_faces: int) -> trimesh.Trimesh:
    """Quadric decimation to about ``target_faces`` faces (no-op when 0 or already smaller).

    Needs the ``fast-simplification`` package; without it decimation is skipped with a warning.
    """
    if target_faces <= 0 or len(mesh.faces) <= target_faces:
        return mesh
    try:
        import fast_simplification  # noqa: F401  (trimesh's backend for quadric decimation)
    except ImportError:
        log.warning("mesh decimation skipped: `pip install fast-simplification` to enable decimate_target_faces")
        return mesh
    simplified = mesh.simplify_quadric_decimation(face_count=int(target_faces))
    simplified.remove_unreferenced_vertices()
    if simplified.is_watertight and simplified.volume < 0:
        simplified.invert()
    log.info("decimated mesh from %d to %d faces", len(mesh.faces), len(simplified.faces))
    return simplified
