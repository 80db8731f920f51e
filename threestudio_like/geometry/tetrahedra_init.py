"""Initialising a DMTet grid from a stage-1 geometry (``TetrahedraSDFGrid.create_from``).

Surface: ``other.density()`` is sampled over the lattice box and the level is the export's ("auto":
the geometry's ``isosurface_threshold()``, or half the peak when the field never reaches it), so marching
tetrahedra reproduce the surface the coarse export's marching cubes would give. For geometries that
render themselves (the Gaussians) the level is chosen by their silhouettes instead
(``level_from_silhouettes``, see :mod:`threestudio_like.geometry.tetrahedra_level`). With ``fit_grid_to_surface``
the lattice first shrinks to the bounding cube of the surface at that level (for the silhouette
choice: at the lowest candidate, which holds every other) plus a margin, sampled on the lattice
itself; only then is the density sampled at the conversion's resolution.

The level becomes a signed distance in cells in one of two ways:

- plain (``convert_closing_radius`` 0): the density minus the level over
  its own gradient magnitude (central differences on the lattice), a first-order distance with the same
  zero set and signs; it keeps the crossings where the field is steep (threestudio clamps the raw level
  to ±1 instead, which pulls every crossing toward the edge midpoint on a steep field);
- cleaned: the density is sampled ``convert_supersample``× finer than the lattice, its occupancy
  {density > level} is closed by a ball of ``convert_closing_radius`` (world units) and its enclosed
  cavities filled (:mod:`threestudio_like.geometry.morphology`), and the exact Euclidean signed distance
  of the result (sub-voxel where the occupancy kept the field's own surface) is read at the lattice
  vertices. The closing joins parts of a splat model that its renders show touching (the ball that
  floats a few hundredths above the box at the export level) with a fillet, not a neck, and fills
  cracks and holes narrower than the ball, without fattening convex outlines.

Either way the lattice's signs are then made one solid in marching tetrahedra's own connectivity
(``KUHN_NEIGHBOURS``, :func:`solid_topology`): enclosed outside regions become inside
(``convert_fill_cavities``: a NeRF hollow inside its ball would otherwise become an inner shell, a
second piece of the asset that no view sees) and inside parts with fewer vertices than
``convert_min_part_fraction`` of the largest become outside (floaters).

With ``convert_cap_unseen`` (and the run's camera range, ``views``), the surface no training view
faces is then capped by the plane through its seen rim (:mod:`threestudio_like.geometry.tetrahedra_cap`:
the NeRF's unseen underside hangs as a dome below the object) and the signs made one solid again.

Colour: copied when ``other`` carries the same kind of colour field (the NeRF's hash grid + MLP with
the same encoding config, network shape and radius; the NeRF's density output row is dropped);
otherwise (the Gaussians, or a NeRF of another shape) the field is FITTED to ``other.color()`` at
points on and near the new surface by a short Adam regression (``color_fit_steps``).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from threestudio_like.export.isosurface import resolve_threshold
from threestudio_like.geometry import marching_tets as mt
from threestudio_like.geometry import morphology, tetrahedra_cap, tetrahedra_level
from threestudio_like.geometry.base import Geometry

# ``grid`` arguments are TetrahedraSDFGrid instances; the class is not imported here because
# geometry/tetrahedra.py imports this module (one direction only)

log = logging.getLogger(__name__)


def query(fn: Callable[[Tensor], Tensor], points: Tensor, chunk: int = 131072) -> Tensor:
    """fn over points [N,3] in chunks without autograd → concatenated results [N,...]."""
    with torch.no_grad():
        return torch.cat([fn(points[i : i + chunk]) for i in range(0, len(points), chunk)])


def cleaning(cfg) -> bool:
    """Whether the conversion closes the occupancy on a finer grid and takes its true distance."""
    return cfg.convert_closing_radius > 0


def sampling_resolution(grid: "TetrahedraSDFGrid") -> int:
    """Cells per axis the density is sampled at: the lattice's, × convert_supersample when cleaning."""
    return grid.resolution * (grid.cfg.convert_supersample if cleaning(grid.cfg) else 1)


def sample_density(grid: "TetrahedraSDFGrid", other: Geometry, resolution: Optional[int] = None) -> Tensor:
    """other's density on a grid of ``resolution`` cells (default sampling_resolution, S) over the
    lattice box → [(S+1)³] on the grid's device (every lattice vertex is a sample)."""
    resolution = resolution or sampling_resolution(grid)
    ids = torch.arange((resolution + 1) ** 3, device=grid.sdf.device)
    points = mt.lattice_points(ids, resolution, grid.origin, grid.cell * grid.resolution / resolution)
    device = _device_of(other, points.device)
    return query(lambda p: other.density(p.to(device)).reshape(-1).float(), points).to(points.device)


def clean_occupancy(inside: np.ndarray, cfg, voxel: float) -> np.ndarray:
    """inside [S+1]³ bool → closed by convert_closing_radius (world → voxels) and cavities filled."""
    if cfg.convert_closing_radius > 0:
        inside = morphology.close(inside, cfg.convert_closing_radius / voxel)
    return morphology.fill_cavities(inside) if cfg.convert_fill_cavities else inside


def sdf_in_cells(grid: "TetrahedraSDFGrid", density: Tensor, level: float) -> Tensor:
    """density [(S+1)³] from :func:`sample_density` and a level → sdf [(R+1)³] in lattice cells.

    Without cleaning, the first-order estimate (density − level) / |∇density|. With it, the level's
    occupancy is cleaned on the S grid and its signed distance (sub-voxel next to kept surface) is
    read at the lattice vertices."""
    cfg, resolution = grid.cfg, sampling_resolution(grid)
    voxel = grid.cell * grid.resolution / resolution
    estimate = mt.distance_in_cells(density - level, resolution, voxel, cfg.sdf_clamp * resolution / grid.resolution)
    if not cleaning(cfg):
        return solid_topology(estimate, grid.resolution, cfg)
    n, step = resolution + 1, resolution // grid.resolution
    inside = clean_occupancy((density > level).view(n, n, n).cpu().numpy(), cfg, voxel)
    distance = morphology.signed_distance(inside, estimate.view(n, n, n).cpu().numpy())
    at_vertices = np.ascontiguousarray(distance[::step, ::step, ::step]).reshape(-1) / step
    return solid_topology(torch.from_numpy(at_vertices).to(density.device), grid.resolution, cfg)


def solid_topology(sdf: Tensor, resolution: int, cfg) -> Tensor:
    """sdf [(R+1)³] (cells, positive inside) → the same with enclosed outside regions set to
    +sdf_clamp (``convert_fill_cavities``) and inside parts smaller than ``convert_min_part_fraction``
    of the largest set to −sdf_clamp, regions as marching tetrahedra join them (the lattice's outer
    layer counts as outside, as it is for the surface)."""
    if not cfg.convert_fill_cavities and cfg.convert_min_part_fraction <= 0:
        return sdf
    n = resolution + 1
    inside = (sdf > 0).view(n, n, n).cpu().numpy()
    inside[[0, -1]], inside[:, [0, -1]], inside[:, :, [0, -1]] = False, False, False
    solid = inside
    if cfg.convert_fill_cavities:
        solid = morphology.fill_cavities(solid, mt.KUHN_NEIGHBOURS)
    solid = morphology.drop_small_parts(solid, cfg.convert_min_part_fraction, mt.KUHN_NEIGHBOURS)
    filled = torch.from_numpy((solid & ~inside).reshape(-1)).to(sdf.device)
    dropped = torch.from_numpy((inside & ~solid).reshape(-1)).to(sdf.device)
    if bool(filled.any()) or bool(dropped.any()):
        log.info("conversion: %d lattice vertices of enclosed cavities filled, %d of small parts dropped",
                 int(filled.sum()), int(dropped.sum()))
    limit = torch.full_like(sdf, cfg.sdf_clamp)
    return torch.where(filled, limit, torch.where(dropped, -limit, sdf))


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return default


def fit_lattice_box(grid: "TetrahedraSDFGrid", inside: Tensor) -> None:
    """Shrink the lattice to the bounding cube of the inside vertices [(R+1)³] (+1 cell, + margin)."""
    points = grid.lattice_points(inside.nonzero()[:, 0])
    lo, hi = points.min(0).values - grid.cell, points.max(0).values + grid.cell
    half = float((hi - lo).max()) * (0.5 + grid.cfg.grid_margin)
    grid.set_lattice_box((lo + hi) / 2, min(half, float(grid.grid_half)))


def surface_samples(grid: "TetrahedraSDFGrid", count: int, generator: torch.Generator) -> Tensor:
    """count points [count,3]: area-weighted on the grid's surface, jittered by half a cell."""
    with torch.no_grad():
        mesh = grid.extract()
        tri = mesh.v_pos[mesh.t_pos_idx]  # [F,3,3]
        area = mesh.face_areas_normals().norm(dim=-1)
        faces = torch.multinomial(area.cpu() + 1e-12, count, replacement=True, generator=generator)
        uv = torch.rand(count, 2, generator=generator)
        flip = uv.sum(-1) > 1
        uv[flip] = 1 - uv[flip]
        bary = torch.cat([1 - uv.sum(-1, keepdim=True), uv], dim=-1).to(tri.device)
        points = (tri[faces.to(tri.device)] * bary[..., None]).sum(1)
        jitter = torch.randn(count, 3, generator=generator).to(points.device) * (0.5 * grid.cell)
        return points + jitter


def fit_color(grid: "TetrahedraSDFGrid", other: Geometry, seed: int = 0) -> float:
    """Regress the grid's colour field onto other.color() near the surface; returns the final MSE."""
    cfg = grid.cfg
    generator = torch.Generator().manual_seed(seed)
    points = surface_samples(grid, cfg.color_fit_points, generator)
    device = _device_of(other, points.device)
    target = query(lambda p: other.color(p.to(device)).float(), points).to(points.device)
    params = list(grid.encoding.parameters()) + list(grid.network.parameters())
    optimizer = torch.optim.Adam(params, lr=max(cfg.lr_encoding, cfg.lr_network), betas=(0.9, 0.99), eps=1e-15)
    # the field's own logits, not grid.color(): a geometry_only grid evaluates color() without
    # autograd, and its colour is fitted here all the same (the stage after it trains on it)
    fitted = lambda: torch.sigmoid(grid.color_logits(points))  # noqa: E731
    with torch.enable_grad():  # callers may build the new geometry under no_grad
        for _ in range(cfg.color_fit_steps):
            loss = (fitted() - target).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        final = float((fitted() - target).square().mean())
    log.info("fitted the colour field to %s.color() at %d points: MSE %.4g", type(other).__name__, len(points), final)
    return final


def copy_color_field(grid: "TetrahedraSDFGrid", source: nn.Module) -> bool:
    """Copy source's hash grid + MLP into grid when they have the same shape; True when copied."""
    rows = source.albedo_rows if isinstance(source, Geometry) else None
    if rows is None:
        return False
    mine = [m for m in grid.network if isinstance(m, nn.Linear)]
    theirs = [m for m in source.network if isinstance(m, nn.Linear)]
    weights = [t.weight for t in theirs[:-1]] + [theirs[-1].weight[rows]]
    differs = [f"{key}: {theirs_value} here {mine_value}" for key, theirs_value, mine_value in (
        ("radius", float(source.radius), grid.radius),
        ("pos_encoding", source.encoding.cfg, grid.encoding.cfg),
        ("mlp layer shapes", [tuple(w.shape) for w in weights], [tuple(m.weight.shape) for m in mine]),
    ) if theirs_value != mine_value]
    if differs:
        log.warning("the colour field of %s is not copied (set system.geometry as in the source run): %s; "
                    "fitting it to its colours instead", type(source).__name__, "; ".join(differs))
        return False
    with torch.no_grad():
        grid.encoding.load_state_dict(source.encoding.state_dict())
        for m, w in zip(mine, weights):
            m.weight.copy_(w)
    grid.inherited_levels.fill_(int(source.encoding.active_levels))
    return True


def initialise_from(grid: "TetrahedraSDFGrid", other: Geometry, copy_net: bool = True, views=None) -> None:
    """Set grid's sdf (and box, and colour when copy_net) from a stage-1 geometry (module docstring);
    ``views`` (a RandomCameraConfig, the run's camera range) for ``convert_cap_unseen``."""
    if isinstance(other, type(grid)) and other.resolution == grid.resolution:
        with torch.no_grad():  # a grid of the same lattice: take it as it is, deformation included
            grid.set_lattice_box(other.grid_center, float(other.grid_half))
            grid.sdf.copy_(other.sdf)
            if grid.deformation is not None and other.deformation is not None:
                grid.deformation.copy_(other.deformation)
    else:
        # the box is fitted on the lattice itself; only the fitted box is sampled finer (what costs)
        density = sample_density(grid, other, grid.resolution)
        level = resolve_threshold(density.cpu().numpy(), "auto", other)
        by_silhouette = grid.cfg.level_from_silhouettes and tetrahedra_level.self_rendered(other)
        if not bool((density > level).any()):
            raise ValueError(
                f"the stage-1 geometry has no surface to convert: its density never exceeds {level:.4g} "
                f"(max {float(density.max()):.4g}) on the grid over [-{grid.radius:g}, {grid.radius:g}]^3"
            )
        if grid.cfg.fit_grid_to_surface:  # around the lowest level that may be chosen (cleaning stays inside its hull)
            fit_lattice_box(grid, density > (tetrahedra_level.lowest_candidate(level) if by_silhouette else level))
        if grid.cfg.fit_grid_to_surface or sampling_resolution(grid) != grid.resolution:
            density = sample_density(grid, other)
        if by_silhouette:
            level = tetrahedra_level.best_level(grid, other, lambda candidate: sdf_in_cells(grid, density, candidate), level)
        grid.set_sdf_cells(sdf_in_cells(grid, density, level))
        grid.source_level = level
        if grid.cfg.convert_cap_unseen and views is not None and tetrahedra_cap.cap_unseen(grid, views):
            grid.set_sdf_cells(solid_topology(grid.sdf.detach(), grid.resolution, grid.cfg))  # a cap may cut a part off
        log.info("tetrahedral grid %d^3 from %s at density %.4g: box centre %s, half side %.3g", grid.resolution,
                 type(other).__name__, level, np.round(grid.grid_center.cpu().numpy(), 3).tolist(), float(grid.grid_half))
    if copy_net and not copy_color_field(grid, other):
        fit_color(grid, other)
