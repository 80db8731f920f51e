"""Quality against ground truth: held-out views and the surface of the embedded prior's scene, of
the field (the run's own renders, a mesh at a fixed level) and of the asset (the exported GLB)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import trimesh

from threestudio_like import metrics
from threestudio_like.data.cameras import Cameras, orbit_cameras


def held_out_cameras(sampler, n_views: int, elevation: float) -> Cameras:
    """``n_views`` views between the reference azimuths (offset by half a step), at the training
    distance, field of view and resolution."""
    cfg = sampler.cfg
    width, height = sampler.resolution()
    distance, fovy = 0.5 * sum(cfg.camera_distance_range), 0.5 * sum(cfg.fovy_range)
    return orbit_cameras(n_views, elevation, distance, fovy, width, height, azimuth_offset=0.5)


@torch.no_grad()
def image_quality(system, cameras: Cameras) -> dict[str, float]:
    """PSNR, mask IoU and depth error of the system's renders against the scene's true renders."""
    scene = system.prior.scene(system.prompt.text)
    truth = scene.render(cameras)
    out = system.render(cameras)
    return {
        "psnr": float(metrics.psnr(out["rgb"].cpu(), truth["rgb"].cpu())),
        "iou": float(metrics.mask_iou(out["opacity"].cpu(), truth["mask"].cpu())),
        "depth_error": float(metrics.depth_error(out["depth"].cpu(), truth["depth"].cpu(), truth["mask"].cpu())),
    }


def knows_ground_truth(system) -> bool:
    return system.prior.knows_ground_truth


def count_components(mesh: trimesh.Trimesh) -> int:
    """Connected pieces of a mesh, vertices merged by position first (UV seams split them in files)."""
    merged = mesh.copy()
    merged.merge_vertices(merge_tex=True, merge_norm=True)
    labels = trimesh.graph.connected_component_labels(merged.face_adjacency, node_count=len(merged.faces))
    return int(labels.max()) + 1 if len(labels) else 0


@torch.no_grad()
def measure_asset(mesh: trimesh.Trimesh, scene, cameras: Cameras, n_points: int = 20000) -> dict[str, float]:
    """The asset against the true scene: Chamfer, mean normal angle error (the asset's face normals vs
    the true normals at the closest surface points), PSNR and mask IoU of its textured renders
    against the true views, and its connected components beside the true scene's."""
    from threestudio_like.export import render_mesh

    points, faces = trimesh.sample.sample_surface(mesh, n_points, seed=0)
    points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    ours_normals = torch.as_tensor(np.asarray(mesh.face_normals)[faces], dtype=torch.float32)
    truth = scene.render(cameras)
    render = render_mesh(mesh, cameras, supersample=2)
    true_vertices, true_faces = scene.surface_mesh(96)
    return {
        "chamfer": float(metrics.chamfer_distance(points, scene.surface_points(n_points))),
        "normal_error_deg": metrics.normal_angle_error(ours_normals, scene.normals(points)),
        "psnr": float(metrics.psnr(render["rgb"], truth["rgb"])),
        "iou": float(metrics.mask_iou(render["mask"], truth["mask"])),
        "components": count_components(mesh),
        "true_components": count_components(trimesh.Trimesh(true_vertices, true_faces, process=False)),
        "faces": int(len(mesh.faces)),
    }


def asset_quality(system, export_dir: Path) -> dict[str, float]:
    """``measure_asset`` of the run's export read back from its GLB, at ``quality.asset_resolution``;
    ``field_psnr`` is the run's own render on the same views (the asset must not lose to it)."""
    from threestudio_like.export import load_export

    cfg = system.cfg.quality
    cameras = held_out_cameras(system.sampler, cfg.n_views, cfg.elevation).with_resolution(cfg.asset_resolution, cfg.asset_resolution)
    result = measure_asset(load_export(export_dir), system.prior.scene(system.prompt.text), cameras, cfg.n_surface_points)
    result["field_psnr"] = image_quality(system, cameras)["psnr"]
    result["resolution"] = cfg.asset_resolution
    return result


@torch.no_grad()
def evaluate_quality(system, with_chamfer: bool = True, export_dir: Optional[Path] = None) -> Optional[dict]:
    """quality.json's content, or None when the prior has no ground truth (Stable Diffusion)."""
    cfg = system.cfg.quality
    if not (cfg.enabled and knows_ground_truth(system)):
        return None
    cameras = held_out_cameras(system.sampler, cfg.n_views, cfg.elevation)
    result = image_quality(system, cameras)
    result["chamfer"] = float("nan")
    if with_chamfer:
        from threestudio_like.export import ExportError, extract_mesh

        export_cfg = dataclasses.replace(system.cfg.exporter, isosurface_resolution=cfg.mesh_resolution)
        try:
            mesh = extract_mesh(system.geometry, export_cfg)
            ours = torch.as_tensor(mesh.sample(cfg.n_surface_points, seed=cfg.seed), dtype=torch.float32)
            truth = system.prior.scene(system.prompt.text).surface_points(cfg.n_surface_points, seed=cfg.seed)
            result["chamfer"] = float(metrics.chamfer_distance(ours, torch.as_tensor(truth, dtype=torch.float32)))
        except ExportError:
            pass  # no surface yet: Chamfer stays NaN
    if export_dir is not None:
        result["asset"] = asset_quality(system, Path(export_dir))
    return result
