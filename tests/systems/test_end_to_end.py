"""The NeRF pipeline end to end, as a user drives it: train, files, quality, resume, export."""
import csv
import json
import signal

import imageio.v3 as iio
import pytest
import torch
import trimesh

from threestudio_like.cli import build, main, seed_everything
from threestudio_like.config import load_config
from threestudio_like.systems.checkpoint import load_checkpoint
from threestudio_like.systems.quality import held_out_cameras, image_quality
from threestudio_like.utils.stop import RunStopped

SMALL = [
    "trainer.progress_bar=false", "data.n_test_views=4", "data.eval_width=32", "data.eval_height=32",
    "system.exporter.isosurface_resolution=48", "system.exporter.texture_size=64", "system.exporter.progress=false",
    "system.quality.mesh_resolution=48",
]


def test_psnr_after_150_steps_beats_the_initial_render(root):
    cfg = load_config(root / "configs/sds-nerf.yaml", ["trainer.max_steps=150", *SMALL])
    seed_everything(cfg.seed)
    system, _ = build(cfg, torch.device("cpu"))
    cameras = held_out_cameras(system.sampler, 8, 20.0)
    before = image_quality(system, cameras)
    for step in range(cfg.trainer.max_steps):
        system.training_step(step, cfg.trainer.max_steps)
    after = image_quality(system, cameras)
    assert after["psnr"] > before["psnr"] + 1.0, (before, after)
    assert after["iou"] > before["iou"], (before, after)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("runs")
    args = ["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={out}",
            "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.checkpoint_interval=10",
            "trainer.log_every_n_steps=5", *SMALL]
    assert main(args) == 0
    (run_dir,) = (out / "sds-nerf").iterdir()
    return root, run_dir


def test_training_writes_the_run_folder(trained_run):
    _, run = trained_run
    assert (run / "configs/parsed.yaml").is_file() and (run / "ckpts/last.ckpt").is_file()
    grid = iio.imread(run / "save/it20-val.png")
    assert grid.shape == (4 * 32, 3 * 32, 3)  # 4 views × (rgb | opacity | normal)
    import imageio.v2 as imageio

    reader = imageio.get_reader(run / "save/it20-test.mp4", format="FFMPEG")
    assert reader.count_frames() == 4 and reader.get_data(0).shape == (32, 64, 3)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert {"loss", "loss_sds", "t", "grad_norm", "it_per_s"} <= set(rows[0])
    quality = json.loads((run / "quality.json").read_text())
    assert {"psnr", "iou", "depth_error", "chamfer"} <= set(quality) and quality["psnr"] > 5
    # held-out metrics at each validation, and the run page written at the end
    assert [int(r["step"]) for r in csv.DictReader((run / "curve.csv").open())] == [10, 20]
    page = (run / "page/index.html").read_text()
    assert "../save/it20-test.mp4" in page and "../save/it20-val.png" in page and (run / "page/curves.png").is_file()


def test_export_reads_back_in_trimesh(trained_run):
    _, run = trained_run
    export = run / "save/it20-export"
    obj = trimesh.load(export / "model.obj", force="mesh")
    assert len(obj.vertices) > 0 and len(obj.faces) > 0
    assert obj.visual.uv is not None and obj.visual.material.image is not None
    glb = trimesh.load(export / "model.glb", force="mesh")
    assert len(glb.faces) == len(obj.faces)
    assert glb.visual.material.baseColorTexture is not None


def test_export_command_and_resume(trained_run):
    root, run = trained_run
    ckpt = run / "ckpts/last.ckpt"
    # --export of a checkpoint writes a new export beside the first, never over it
    assert main(["--config", str(run / "configs/parsed.yaml"), "--export", f"resume={ckpt}", *SMALL]) == 0
    assert (run / "save/it20-export-2/model.glb").is_file() and (run / "save/it20-export/model.glb").is_file()
    # resume continues at the saved step, with the optimizer state, up to the new max
    assert main(["--config", str(run / "configs/parsed.yaml"), "--train", f"resume={ckpt}", "trainer.max_steps=25",
                 "trainer.export_at_end=false", "trainer.test_at_end=false", *SMALL]) == 0
    state = load_checkpoint(ckpt)
    assert state["step"] == 25
    steps = [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert steps[-2:] == [20, 25]


def test_resume_is_exact(root, tmp_path):
    """20 steps straight equal 10 steps, a checkpoint, and 10 more from it."""
    # the validation at the end of each fit renders at 32² (its images are not compared here)
    overrides = [f"exp_root_dir={tmp_path}", "trainer.checkpoint_interval=10", "trainer.val_check_interval=1000",
                 "trainer.progress_bar=false", "data.eval_width=32", "data.eval_height=32"]

    def fresh(steps):
        cfg = load_config(root / "configs/sds-nerf.yaml", [f"trainer.max_steps={steps}", *overrides])
        seed_everything(cfg.seed)
        system, trainer_cls = build(cfg, torch.device("cpu"))
        return cfg, system, trainer_cls

    cfg, straight, trainer_cls = fresh(20)
    trainer_cls(straight, cfg.trainer, tmp_path / "straight").fit()

    cfg10, first, _ = fresh(10)
    half = trainer_cls(first, cfg10.trainer, tmp_path / "half")
    half.fit()
    cfg, second, _ = fresh(20)
    resumed = trainer_cls(second, cfg.trainer, tmp_path / "half")
    resumed.resume(half.ckpt_path)
    assert resumed.step == 10
    resumed.fit()
    for (name, a), (_, b) in zip(straight.geometry.state_dict().items(), second.geometry.state_dict().items()):
        if torch.is_tensor(a) and torch.is_floating_point(a):
            assert torch.allclose(a, b, atol=1e-5), name
        elif torch.is_tensor(a):
            assert torch.equal(a, b), name
        else:
            assert a == b, name


def test_ctrl_c_saves_a_checkpoint_before_exiting(root, tmp_path):
    cfg = load_config(root / "configs/sds-nerf.yaml", ["trainer.max_steps=50", "trainer.progress_bar=false"])
    seed_everything(cfg.seed)
    system, trainer_cls = build(cfg, torch.device("cpu"))
    trainer = trainer_cls(system, cfg.trainer, tmp_path / "run")
    real_step = system.training_step

    def interrupted_at_5(step, max_steps):
        if step == 5:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, delivered in the middle of step 5
        return real_step(step, max_steps)

    system.training_step = interrupted_at_5
    with pytest.raises(RunStopped) as stopped:
        trainer.fit()
    # step 5 finishes, then the checkpoint is written at that step boundary
    assert stopped.value.exit_code == 130 and "SIGINT at step 6" in str(stopped.value)
    assert load_checkpoint(trainer.ckpt_path)["step"] == 6
