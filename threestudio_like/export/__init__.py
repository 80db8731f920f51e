"""Mesh export of any geometry: isosurface → cleanup → texture or vertex colours → OBJ/MTL/PNG + GLB.

Typical use (the training system calls this at the end of a run)::

    paths = export_geometry(geometry, run_dir / "save" / "it1500-export", ExportConfig())
    paths["glb"]  # Path of model.glb

``extract_mesh`` (world-frame mesh, e.g. for Chamfer distance) and ``colour_mesh`` work without
writing anything; ``render_mesh`` renders a mesh (textured or vertex-coloured) from ``Cameras`` to
compare it with the run's own renders.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from threestudio_like.config import check_choice

from threestudio_like.export.isosurface import (
    ExportError, decimate, density_grid, fill_enclosed, marching_cubes, remove_floaters, resolve_threshold,
)
from threestudio_like.export.preview import load_export, render_mesh
from threestudio_like.export.splat_ply import splat_file_matrix, write_splat_ply
from threestudio_like.export.texture import auto_texture_size, bake_texture, texture_image, vertex_colors
from threestudio_like.export.visibility import FillSettings, TrainingViews, colour_unseen
from threestudio_like.export.writers import to_view_frame, write_glb, write_json, write_obj
from threestudio_like.utils.atomic import TEMP_PREFIX, current_umask
from threestudio_like.utils.checks import check_at_least, check_between

__all__ = [
    "ExportConfig", "ExportError", "export_geometry", "extract_mesh", "colour_mesh", "free_directory",
    "render_mesh", "load_export", "bake_texture", "vertex_colors", "TrainingViews",
]

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    isosurface_resolution: int = 256  # grid points per axis over [−radius, radius]
    isosurface_threshold: Any = "auto"  # a density level > 0, or "auto" (see export/isosurface.py)
    auto_threshold_fraction: float = 0.5  # "auto" fallback: this fraction of the max density
    chunk_size: int = 262144  # points per density/colour query (bounds memory)
    min_component_fraction: float = 0.05  # drop components with fewer faces than this × the largest's
    fill_cavities: bool = True  # marching cubes: hollows enclosed by the surface are filled (no inner shell)
    decimate_target_faces: int = 0  # 0 = keep every face; needs the fast-simplification package
    texture: bool = True  # bake a texture (xatlas UVs); False = vertex colours in OBJ and GLB (COLOR_0)
    texture_size: Any = "auto"  # side in texels, or "auto": from the surface area and texture_texels_per_unit
    texture_texels_per_unit: float = 512.0  # "auto": texels per unit length, the asset's largest side being 1
    texture_padding: int = 2  # texels between UV charts
    texture_brute_force: bool = True  # xatlas tries every chart position: a tighter atlas, a slower pack
    texture_dilation: int = 8  # iterations of gap filling around the charts
    texture_format: str = "png"  # png | jpg: the OBJ's texture_kd.<format> (the GLB embeds a PNG)
    texture_jpeg_quality: int = 90  # 1–95, for texture_format jpg
    vertex_colors: bool = False  # with a texture: also write per-vertex colours into the OBJ
    # surface no camera of the run's training range sees (the underside, below the lowest elevation)
    # takes the colour of the nearest seen surface (export/visibility.py); seen texels are unchanged.
    # Needs the run's training views (``seen_by``; the trainer's export passes them, a bare
    # export_geometry call without them fills nothing)
    fill_unseen: bool = True
    fill_unseen_views: int = 48  # depth renders over the training range that decide what is seen
    fill_unseen_resolution: int = 256  # their side in pixels
    # a point is seen only by a camera it faces within this angle: more obliquely, one pixel of a
    # training view spreads over so much surface that it does not decide the point's colour
    fill_unseen_max_angle: float = 75.0
    # seen surface closer to a solid training background than this fraction of the seen surface's
    # median distance from it gives the fill no colour: geometry outside the object's outline, which
    # the views painted to vanish into the background (export/visibility.py); 0 = every seen texel gives
    fill_unseen_background_fraction: float = 0.75
    # seen background-like surface within this distance (world units) of unseen surface is filled as
    # unseen surface is (the pale rim a hanging underside shows to the lowest views); 0 = kept as seen
    fill_unseen_rim_distance: float = 0.0
    y_up: bool = True  # files in +Y up / front +Z (viewers' convention); False keeps the z-up world
    unit_box: bool = True  # scale the asset's largest side to 1
    placement: str = "center"  # center: bounding box on the origin | ground: resting on y = 0 | world
    splat_up: str = "-y"  # splats.ply of Gaussian geometries: -y, the 3DGS viewers' convention, or +y as the mesh
    splat_sh_degree: int = 3  # SH degree written to splats.ply (zero-padded: several viewers want 3)
    progress: bool = True  # tqdm bars for the density grid and colour queries

    def __post_init__(self) -> None:
        threshold = self.isosurface_threshold
        if threshold != "auto" and not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold > 0):
            raise ValueError(f"isosurface_threshold={threshold!r} is not accepted; use 'auto' or a density level > 0")
        if not 8 <= self.isosurface_resolution <= 2048:
            raise ValueError(f"isosurface_resolution={self.isosurface_resolution} must be between 8 and 2048")
        size = self.texture_size
        if size != "auto" and not (isinstance(size, int) and not isinstance(size, bool) and 16 <= size <= 16384):
            raise ValueError(f"texture_size={size!r} is not accepted; use 'auto' or a side between 16 and 16384")
        if not self.texture_texels_per_unit > 0:
            raise ValueError(f"texture_texels_per_unit={self.texture_texels_per_unit} must be > 0")
        check_choice(self.texture_format, ("png", "jpg"), "texture_format")
        if not 1 <= self.texture_jpeg_quality <= 95:
            raise ValueError(f"texture_jpeg_quality={self.texture_jpeg_quality} must be between 1 and 95")
        check_choice(self.placement, ("center", "ground", "world"), "placement")
        check_choice(self.splat_up, ("-y", "+y"), "splat_up")
        if not 0 <= self.splat_sh_degree <= 3:
            raise ValueError(f"splat_sh_degree={self.splat_sh_degree} must be between 0 and 3")
        if not 0.0 <= self.min_component_fraction <= 1.0:
            raise ValueError(f"min_component_fraction={self.min_component_fraction} must be in [0, 1]")
        if not 0.0 < self.auto_threshold_fraction < 1.0:
            raise ValueError(f"auto_threshold_fraction={self.auto_threshold_fraction} must be in (0, 1)")
        check_at_least(self, 1, "chunk_size")
        check_at_least(self, 0, "decimate_target_faces", "texture_padding", "texture_dilation")
        check_between(self, 1, 10000, "fill_unseen_views")
        check_between(self, 16, 4096, "fill_unseen_resolution")
        check_between(self, 1.0, 90.0, "fill_unseen_max_angle")
        check_between(self, 0.0, 1.0, "fill_unseen_background_fraction")
        check_between(self, 0.0, 10.0, "fill_unseen_rim_distance")

    def fill_settings(self) -> FillSettings:
        return FillSettings(self.fill_unseen_views, self.fill_unseen_resolution, self.fill_unseen_max_angle,
                            self.fill_unseen_background_fraction, self.fill_unseen_rim_distance)


def extract_mesh(geometry: torch.nn.Module, cfg: ExportConfig = ExportConfig()) -> trimesh.Trimesh:
    """The geometry's surface as a world-frame (z-up) mesh with outward normals, floaters removed and
    optionally decimated. ``mesh.metadata["isosurface_threshold"]`` holds the level used.
    Raises :class:`ExportError` when the field has no surface.

    A geometry that is a mesh already (it offers ``isosurface()``, e.g. DMTet) gives that mesh, not
    marching cubes of its density; its ``isosurface_threshold`` metadata is then None."""
    with torch.no_grad():
        own = geometry.isosurface()
    if own is not None:
        mesh, level = own_surface(geometry, own), None
    else:
        grid = density_grid(geometry, cfg.isosurface_resolution, cfg.chunk_size, cfg.progress)
        level = resolve_threshold(grid, cfg.isosurface_threshold, geometry, cfg.auto_threshold_fraction)
        mesh = marching_cubes(fill_enclosed(grid, level) if cfg.fill_cavities else grid, level, float(geometry.radius))
    mesh = remove_floaters(mesh, cfg.min_component_fraction)
    if cfg.decimate_target_faces:
        # decimation leaves a few slivers of 2–10 faces beside the surface (8 on the demo): drop them too
        mesh = remove_floaters(decimate(mesh, cfg.decimate_target_faces), cfg.min_component_fraction)
    mesh.metadata["isosurface_threshold"] = level
    log.info("mesh (density level %s): %d vertices, %d faces, watertight=%s", level, len(mesh.vertices),
             len(mesh.faces), mesh.is_watertight)
    return mesh


def own_surface(geometry: torch.nn.Module, surface) -> trimesh.Trimesh:
    """The world-frame trimesh of the ``Mesh`` a mesh geometry holds (detached), merged at shared vertices."""
    mesh = surface.to_trimesh()
    if len(mesh.faces) == 0:
        raise ExportError(f"{type(geometry).__name__} has no surface (its isosurface is empty): nothing to export")
    mesh.merge_vertices()
    return mesh


def training_views_for(cfg: ExportConfig, seen_by: TrainingViews | None) -> TrainingViews | None:
    """The training views that decide which surface is seen (``cfg.fill_unseen``), or None when not filling."""
    if not cfg.fill_unseen:
        return None
    if seen_by is None:
        log.info("no training views given: the surface they did not see is not filled (exporter.fill_unseen)")
    return seen_by


def colour_mesh(geometry: torch.nn.Module, mesh: trimesh.Trimesh, cfg: ExportConfig = ExportConfig(),
                seen_by: TrainingViews | None = None) -> trimesh.Trimesh:
    """A copy of ``mesh`` coloured from ``geometry.color``: a baked texture (``cfg.texture``) or vertex
    colours; with ``cfg.fill_unseen``, what no view of ``seen_by``'s range sees is filled from what they see."""
    seen_by = training_views_for(cfg, seen_by)
    if cfg.texture:
        size = auto_texture_size(mesh, cfg.texture_texels_per_unit) if cfg.texture_size == "auto" else cfg.texture_size
        return bake_texture(geometry, mesh, size, cfg.chunk_size, cfg.texture_padding, cfg.texture_dilation,
                            cfg.progress, cfg.texture_brute_force, seen_by, cfg.fill_settings())
    colors, unseen = vertex_colors(geometry, mesh, cfg.chunk_size, cfg.progress), None
    if seen_by is not None:
        vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
        normals = torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float32)
        colors, unseen = colour_unseen(colors, vertices, normals, vertices, torch.as_tensor(np.asarray(mesh.faces)),
                                       seen_by, cfg.fill_settings())
    rgba = np.concatenate([np.round(colors * 255.0), np.full((len(colors), 1), 255.0)], axis=1).astype(np.uint8)
    coloured = mesh.copy()
    coloured.visual = trimesh.visual.ColorVisuals(coloured, vertex_colors=rgba)
    coloured.metadata["unseen_fraction"] = unseen
    return coloured


def texture_side(mesh: trimesh.Trimesh) -> int | None:
    """The side in texels of a textured mesh's base-colour image, or None."""
    image = texture_image(mesh)
    return None if image is None else int(image.size[0])


def free_directory(out_dir: str | Path) -> Path:
    """``out_dir`` if it does not exist yet, else the first free ``out_dir-2``, ``out_dir-3`` …"""
    out_dir = Path(out_dir)
    candidate, n = out_dir, 1
    while candidate.exists():
        n += 1
        candidate = out_dir.with_name(f"{out_dir.name}-{n}")
    return candidate


def export_geometry(geometry: torch.nn.Module, out_dir: str | Path, cfg: ExportConfig = ExportConfig(),
                    seen_by: TrainingViews | None = None) -> dict[str, Path]:
    """Write model.obj, model.mtl, texture_kd.png|jpg (textured), model.glb, splats.ply (geometries
    made of Gaussians) and export.json into a new directory: ``out_dir``, or ``out_dir-2``, ``-3`` …
    when it exists (an export is never overwritten). Every file is in one frame and placement.
    ``seen_by`` (the run's camera range and background) says what the training views saw, for ``cfg.fill_unseen``.

    Everything is built in a temporary directory beside it and renamed at the end, so a failure
    leaves nothing behind. Returns {"obj", "mtl"?, "texture"?, "glb", "splats"?, "json", "dir"} → paths.
    """
    mesh = extract_mesh(geometry, cfg)  # fails before anything touches the disk
    coloured = colour_mesh(geometry, mesh, cfg, seen_by)
    extra_colors = vertex_colors(geometry, coloured, cfg.chunk_size, cfg.progress) if cfg.texture and cfg.vertex_colors else None
    in_file, matrix = to_view_frame(coloured, cfg.y_up, cfg.unit_box, cfg.placement)
    target = free_directory(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=f"-{target.name}", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the export is an ordinary folder
    try:
        files = write_obj(in_file, tmp, texture_format=cfg.texture_format, jpeg_quality=cfg.texture_jpeg_quality,
                          vertex_colors=extra_colors)
        files.update(write_glb(in_file, tmp))
        frames = {path.name: matrix for path in files.values()}
        splats = geometry.splats()  # declared by the Geometry interface: None for fields
        if splats is not None:
            frames["splats.ply"] = splat_file_matrix(matrix, cfg.splat_up)
            files["splats"] = write_splat_ply(splats, tmp / "splats.ply", frames["splats.ply"], cfg.splat_sh_degree)
        info = {
            "surface": "isosurface" if mesh.metadata["isosurface_threshold"] is None else "marching cubes",
            "isosurface_threshold": mesh.metadata["isosurface_threshold"],
            "isosurface_resolution": cfg.isosurface_resolution, "radius": float(geometry.radius),
            "vertices": len(in_file.vertices), "faces": len(in_file.faces), "watertight": bool(mesh.is_watertight),
            "texture_size": texture_side(in_file), "atlas_coverage": coloured.metadata.get("atlas_coverage"),
            "unseen_fraction": coloured.metadata.get("unseen_fraction"),
            "up": "+y" if cfg.y_up else "+z", "placement": cfg.placement, "unit_box": cfg.unit_box,
            "world_to_file": matrix.tolist(), "files": sorted(p.name for p in files.values()) + ["export.json"],
            # each file's own 4×4 world → file matrix: the mesh files share one; splats.ply is turned to −Y up by default
            "frames": {name: m.tolist() for name, m in sorted(frames.items())},
        }
        if splats is not None:
            info["splat_up"] = cfg.splat_up
        files.update(write_json(tmp, info))
        target = _move_into_place(tmp, target, Path(out_dir))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target != Path(out_dir):
        log.warning("%s already exists; export written to %s instead", out_dir, target)
    log.info("exported %s", ", ".join(str(target / p.name) for p in files.values()))
    paths = {key: target / path.name for key, path in files.items()}
    paths["dir"] = target
    return paths


def _move_into_place(tmp: Path, target: Path, out_dir: Path) -> Path:
    """Rename the finished temp directory to ``target`` (the next free name if one appeared meanwhile)."""
    while True:
        try:
            target.mkdir()  # claims the name; fails if someone else holds it
        except FileExistsError:
            target = free_directory(out_dir)
            continue
        tmp.replace(target)  # replaces the empty directory we just claimed, atomically
        return target
