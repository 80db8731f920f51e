"""Quality against ground truth: held-out views and the surface of the embedded prior's scene."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

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
    return hasattr(system.prior, "scene")


@torch.no_grad()
def evaluate_quality(system, with_chamfer: bool = True) -> Optional[dict[str, float]]:
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
            ours = torch.as_tensor(mesh.sample(cfg.n_surface_points), dtype=torch.float32)
            truth = system.prior.scene(system.prompt.text).surface_points(cfg.n_surface_points)
            result["chamfer"] = float(metrics.chamfer_distance(ours, torch.as_tensor(truth, dtype=torch.float32)))
        except ExportError:
            pass  # no surface yet: Chamfer stays NaN
    return result
