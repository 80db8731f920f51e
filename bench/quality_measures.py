"""What bench/quality.py measures on a run: held-out views of the true scene and their front/back
reflections, the image measures, the guidance gradient's size and noise, and how steadily a run improved."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from threestudio_like import metrics, plots
from threestudio_like.data.cameras import Cameras, make_cameras

HELD_OUT_ELEVATIONS = (5.0, 35.0)
HELD_OUT_AZIMUTHS = 8


@dataclass
class HeldOut:
    cameras: Cameras
    truth: dict  # scene.render of the cameras: rgb, mask, depth [V,H,W,·]
    opposite: torch.Tensor  # [V,H,W,3] each view of the object reflected front to back


def mirrored_cameras(cameras: Cameras) -> Cameras:
    """The cameras reflected through the object's front/back plane (x = 0): azimuth a → 180° − a.

    A camera's image of the reflected world is the left-right mirror of its reflection's image, so
    ``render(mirrored_cameras(c)).flip(W)`` is what ``c`` would see of the object reflected front to
    back: from behind, its front (a Janus face); from the front, its back.
    """
    fovy_deg = torch.rad2deg(cameras.fovy)  # Cameras keep radians, make_cameras takes degrees
    return make_cameras(cameras.elevation, 180.0 - cameras.azimuth, cameras.distance, fovy_deg, cameras.width, cameras.height)


def held_out_views(scene, width: int, height: int, distance: float, fovy: float) -> HeldOut:
    """16 views between the prior's reference azimuths (offset half a step) at two elevations."""
    n = HELD_OUT_AZIMUTHS
    azimuth = ((torch.arange(n, dtype=torch.float32) + 0.5) * (360.0 / n)).repeat(len(HELD_OUT_ELEVATIONS))
    elevation = torch.tensor(HELD_OUT_ELEVATIONS).repeat_interleave(n)
    full = torch.ones_like(azimuth)
    cameras = make_cameras(elevation, azimuth, full * distance, full * fovy, width, height)
    opposite = scene.render(mirrored_cameras(cameras))["rgb"].flip(2)
    return HeldOut(cameras, scene.render(cameras), opposite)


@torch.no_grad()
def evaluate(system, views: HeldOut) -> dict[str, float]:
    """Every image measure of the system's current renders of the held-out views."""
    out = {k: v.detach().cpu() for k, v in system.render(views.cameras).items() if k in ("rgb", "opacity", "depth")}
    truth = views.truth
    janus = metrics.front_back_confusion(out["rgb"], truth["rgb"], views.opposite)
    return {
        "psnr": metrics.psnr(out["rgb"], truth["rgb"]),
        "iou": metrics.mask_iou(out["opacity"], truth["mask"]),
        "depth_error": metrics.depth_error(out["depth"], truth["depth"], truth["mask"]),
        "saturation_error": metrics.saturation_error(out["rgb"], truth["rgb"], truth["mask"]),
        "hf_excess": metrics.high_frequency_excess(out["rgb"], truth["rgb"], truth["mask"]),
        "janus_fraction": janus["fraction"],
        "janus_margin_db": janus["margin_db"],
    }


@torch.no_grad()
def gradient_stats(system, views: HeldOut, draws: int = 16) -> dict[str, float]:
    """The guidance's gradient on the current renders of 4 fixed views, drawn ``draws`` times
    (fresh timesteps and noise each time): ``grad_rms`` its root mean square per pixel, and
    ``grad_snr_db`` = 10·log10(signal / noise), signal = ‖mean‖² (less its expected share of the
    noise), noise = Σ‖g_k − mean‖²/(draws − 1). Adam's step follows roughly mean/√(mean² + noise)
    per parameter, so the SNR says how much of each update points the same way; it is nan where
    the gradient is exactly zero.
    """
    cameras = views.cameras[torch.arange(len(views.cameras))[-HELD_OUT_AZIMUTHS::2]]  # 4 views, 90° apart
    guidance, rng = system.guidance, torch.get_rng_state()
    x = system.prior.encode_images(system.render(cameras)["rgb"].permute(0, 3, 1, 2))
    conds, grads = guidance.conditions(system.prompt, cameras), []
    for _ in range(draws):
        t = guidance.sample_timesteps(len(x), x.device)
        grads.append(guidance.weight(t, x) * guidance.direction(x, t, conds))
    torch.set_rng_state(rng)  # measuring must not change the training's random draws
    g = torch.stack(grads).double()
    mean = g.mean(dim=0)
    noise = ((g - mean) ** 2).sum() / (draws - 1)
    signal = (mean**2).sum() - noise / draws
    rms = float(g.pow(2).mean().sqrt())
    if not bool(torch.isfinite(noise)) or float(noise) <= 0:
        return {"grad_rms": rms, "grad_snr_db": float("nan")}
    return {"grad_rms": rms, "grad_snr_db": 10.0 * float(torch.log10(signal.clamp_min(1e-12 * noise) / noise))}


def stability(curve: list[dict], metrics_csv: Path) -> dict[str, float]:
    """How steadily a run improved: ``psnr_drop`` = best held-out PSNR along the curve minus the
    final one (0 if it never lost ground), ``grad_cv`` = std / mean of the logged gradient norm
    over the second half of training (how much the update size jumps around)."""
    psnr = [c["psnr"] for c in curve]
    grad = [g for g in plots.read_csv_columns(metrics_csv).get("grad_norm", []) if g == g]  # drop nan (skipped steps)
    second = torch.tensor(grad[len(grad) // 2:], dtype=torch.float64)
    cv = float(second.std() / second.mean()) if len(second) > 1 and float(second.mean()) > 0 else float("nan")
    return {"psnr_drop": max(psnr) - psnr[-1], "grad_cv": cv}
