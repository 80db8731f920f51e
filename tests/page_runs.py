"""Run folders for the page and export-frame tests, made without training: a Gaussian "red ball on a
blue box" (world z-up: the red cluster above the blue one) exported for real, with a config,
metrics, held-out curve, validation grid and turntable beside it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from threestudio_like.config import load_config, to_yaml
from threestudio_like.export import ExportConfig, export_geometry
from threestudio_like.geometry.gaussians import GaussianConfig, GaussianSplatting, inverse_sigmoid, rgb_to_sh
from threestudio_like.systems.trainer import MetricsLog
from threestudio_like.systems.visualize import write_image, write_video

ROOT = Path(__file__).resolve().parents[1]
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


def ball_on_box(n_ball: int = 700, n_box: int = 1300, seed: int = 0) -> GaussianSplatting:
    """Gaussians filling a red ball (centre z = 0.35, r 0.22) on a blue box (|x|,|y| ≤ 0.3, z ∈ [−0.4, 0.1])."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n_ball, 3, generator=g), dim=-1)
    ball = torch.tensor([0.0, 0.0, 0.35]) + 0.22 * direction * torch.rand(n_ball, 1, generator=g) ** (1 / 3)
    box = (torch.rand(n_box, 3, generator=g) - 0.5) * torch.tensor([0.6, 0.6, 0.5]) + torch.tensor([0.0, 0.0, -0.15])
    means = torch.cat([ball, box])
    colors = torch.cat([torch.tensor(RED).expand(n_ball, 3), torch.tensor(BLUE).expand(n_box, 3)])
    geo = GaussianSplatting(GaussianConfig(init_num_points=len(means), isosurface_threshold=1.0))
    with torch.no_grad():
        geo.means.copy_(means)
        geo.scales.fill_(float(np.log(0.03)))
        geo.opacities.fill_(float(inverse_sigmoid(torch.tensor(0.9))))
        geo.features_dc.copy_(rgb_to_sh(colors))
    return geo


def make_run(folder: Path, export_cfg: ExportConfig | None = None) -> Path:
    """A finished-looking Gaussian run folder in ``folder``; returns it."""
    (folder / "configs").mkdir(parents=True)
    cfg = load_config(ROOT / "configs/sds-gs.yaml", [f"exp_root_dir={folder.parent}", "trainer.max_steps=20"])
    (folder / "configs/parsed.yaml").write_text(to_yaml(cfg))
    metrics, curve = MetricsLog(folder / "metrics.csv"), MetricsLog(folder / "curve.csv")
    for step in (10, 20):
        metrics.write({"step": step, "loss": 100.0 / step, "loss_sds": 100.0 / step, "it_per_s": 5.0})
        curve.write({"step": step, "psnr": 10.0 + step / 2, "iou": 0.5 + step / 100, "depth_error": 0.1})
    ramp = np.linspace(0, 255, 64 * 96, dtype=np.float32).reshape(64, 96, 1).repeat(3, axis=2).astype(np.uint8)
    write_image(folder / "save/it20-val.png", ramp)
    write_video(folder / "save/it20-test.mp4", [np.roll(ramp, 8 * i, axis=1) for i in range(4)], fps=4)
    cfg = export_cfg or ExportConfig(isosurface_resolution=48, texture_size=64, progress=False)
    export_geometry(ball_on_box(), folder / "save/it20-export", cfg)
    return folder
