"""The command line as a user meets it: bad input gives one line and a non-zero exit, no traceback."""
import subprocess
import sys

import pytest


def launch(root, *args, cwd=None):
    return subprocess.run([sys.executable, str(root / "launch.py"), *args], capture_output=True, text=True, cwd=cwd or root, timeout=300)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["system.guidance.guidance_scal=3"], "unknown config key"),
        (["system.geometry_type=octree"], "unknown geometry type 'octree'; known:"),
        (["trainer.max_steps=lots"], "trainer.max_steps"),
        (["system.prompt_processor.prompt=a purple dragon"], "dragon"),
        (["resume=/nonexistent/last.ckpt"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(root, tmp_path, args, needle):
    result = launch(root, "--config", "configs/sds-nerf.yaml", "--train", f"exp_root_dir={tmp_path}", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir()), "a failed start must not create a run folder"


def test_export_without_checkpoint_is_refused(root, tmp_path):
    result = launch(root, "--config", "configs/sds-nerf.yaml", "--export", f"exp_root_dir={tmp_path}")
    assert result.returncode == 2 and "resume=" in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file(root):
    result = launch(root, "--config", "configs/nope.yaml", "--train")
    assert result.returncode == 2 and "configs/nope.yaml" in result.stderr and "Traceback" not in result.stderr
