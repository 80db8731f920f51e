"""trainer.tensorboard=true: scalars and validation grids in TensorBoard event files, beside metrics.csv."""
import pytest

from threestudio_like.cli import main

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install -e '.[tensorboard]')")


def test_tensorboard_logs_scalars_and_validation_images(root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={tmp_path}", "trainer.tensorboard=true",
            "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=2", "trainer.progress_bar=false",
            "trainer.export_at_end=false", "trainer.test_at_end=false", "trainer.page_at_end=false",
            "data.eval_width=16", "data.eval_height=16", "system.quality.mesh_resolution=32"]
    assert main(args) == 0
    (run,) = [p.parent for p in (tmp_path / "sds-nerf").glob("*/tensorboard")]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert "held_out/psnr" in tags["scalars"] and (run / "metrics.csv").is_file()
    assert [e.step for e in events.Images("validation")] == [2, 4]
    assert events.Images("validation")[0].width == 3 * 16  # rgb | opacity | normals
