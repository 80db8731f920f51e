"""3D Gaussians end to end: a short SDS run with the embedded prior, export, and resuming."""
import json

import numpy as np
import torch
import trimesh

from threestudio_like.cli import build, seed_everything
from threestudio_like.config import load_config
from threestudio_like.export.splat_ply import read_splat_ply
from threestudio_like.systems.quality import held_out_cameras, image_quality


QUICK = [
    "trainer.max_steps=150", "trainer.val_check_interval=1000", "trainer.checkpoint_interval=1000",
    "trainer.progress_bar=false", "system.geometry.densify_from_step=50", "system.geometry.densify_interval=50",
    "system.exporter.isosurface_resolution=48", "system.exporter.texture_size=64", "system.exporter.progress=false",
    "data.eval_width=32", "data.eval_height=32",  # the validation grid (the held-out views use the training size)
]


def test_short_sds_run_improves_held_out_psnr_exports_and_resumes(root, tmp_path):
    cfg = load_config(root / "configs" / "sds-gs.yaml", [f"exp_root_dir={tmp_path}", *QUICK])
    seed_everything(cfg.seed)
    system, trainer_cls = build(cfg, torch.device("cpu"))
    cameras = held_out_cameras(system.sampler, 8, 20.0)
    before = image_quality(system, cameras)
    (tmp_path / "run").mkdir()
    trainer = trainer_cls(system, cfg.trainer, tmp_path / "run")
    trainer.fit()
    after = image_quality(system, cameras)
    assert after["psnr"] > before["psnr"] + 4.0, (before, after)
    assert after["iou"] > before["iou"] + 0.2, (before, after)
    count = system.geometry.num_gaussians
    assert count != cfg.system.geometry.init_num_points  # densification and pruning ran

    paths = trainer.export()
    mesh = trimesh.load(paths["obj"], force="mesh")
    assert len(mesh.faces) > 100
    splats = read_splat_ply(paths["splats"])
    assert len(splats["means"]) == count
    # splats.ply is in the export's frame (export.json), turned to the −Y up of 3DGS viewers
    frame = np.array(json.loads(paths["json"].read_text())["frames"]["splats.ply"])
    world = system.geometry.means.detach().double().numpy()
    assert np.allclose(splats["means"], world @ frame[:3, :3].T + frame[:3, 3], atol=1e-5)

    # a fresh system (init_num_points Gaussians) resumes a checkpoint with another count, and trains on
    fresh, _ = build(cfg, torch.device("cpu"))
    resumed = trainer_cls(fresh, cfg.trainer, tmp_path / "resumed")
    resumed.resume(trainer.ckpt_path)
    assert fresh.geometry.num_gaussians == count
    assert torch.equal(fresh.geometry.means, system.geometry.means)
    state = fresh.optimizers["geometry"].state[fresh.geometry.means]
    assert state["exp_avg"].shape == (count, 3)
    fresh.training_step(resumed.step, cfg.trainer.max_steps + 10)
    assert torch.isfinite(fresh.geometry.means).all()
