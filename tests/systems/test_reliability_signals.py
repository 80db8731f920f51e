"""Real processes, real signals: SIGKILL, SIGINT and SIGTERM at random steps of a tiny run, each
resumed and compared tensor by tensor with an uninterrupted run; a full disk; temp leftovers;
non-finite weights. The checkpoint interval (16) is the occupancy grid's update period, the case
where a resume used to refresh the grid twice."""
import csv
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch

from threestudio_like.cli import main
from threestudio_like.systems.checkpoint import load_checkpoint

MAX_STEPS = 60
TINY = [
    "trainer.progress_bar=false", "data.width=16", "data.height=16", "data.batch_size=1", "data.n_val_views=1",
    "data.eval_width=16", "data.eval_height=16", "system.geometry.pos_encoding.log2_hashmap_size=12",
    "system.geometry.pos_encoding.n_levels=4", "system.geometry.pos_encoding.start_level=4",
    "system.renderer.num_samples_per_ray=16", "system.renderer.grid_resolution=16", "system.renderer.grid_update_every=16",
    "system.prior.n_elevations=2", "system.prior.azimuth_step_deg=45",
    "system.quality.enabled=false", "trainer.export_at_end=false", "trainer.test_at_end=false",
    "trainer.val_check_interval=1000", "trainer.checkpoint_interval=16", "trainer.log_every_n_steps=1",
    f"trainer.max_steps={MAX_STEPS}", "use_timestamp=false",
]
# the seed of the signal steps: printed on failure, so a failing draw can be rerun
SEED = int(os.environ.get("RELIABILITY_SEED", "16"))


def train_args(root, out, tag, *extra):
    return ["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={out}", f"tag={tag}", *TINY, *extra]


def assert_same_tensors(a, b, where=""):
    """Every tensor of two checkpoint states equal, bit for bit (weights, Adam moments, RNG, grid)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def comparable(state):
    """The checkpoint without the name of the config file (the resumed run may record another)."""
    return {k: v for k, v in state.items() if k != "meta"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("straight")
    assert main(train_args(root, out, "straight")) == 0
    return root, out / "sds-nerf" / "straight"


def rows_written(run_dir):
    try:
        with (run_dir / "metrics.csv").open() as f:
            return sum(1 for _ in f) - 1
    except FileNotFoundError:
        return 0


def run_until(root, out, tag, at_step, signum):
    """Start a training process, send ``signum`` once it has logged ``at_step`` steps; its result."""
    run_dir = out / "sds-nerf" / tag
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(root / "launch.py"), *train_args(root, out, tag)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # generous: on a loaded machine the start-up alone (imports, a kernel build check) can take minutes
    deadline = time.monotonic() + 600
    while rows_written(run_dir) < at_step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, f"the run ended before step {at_step}: {proc.communicate()}"
    if rows_written(run_dir) < at_step:
        proc.kill()
        pytest.fail(f"the run did not reach step {at_step} within 600 s: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, run_dir


@pytest.mark.parametrize("signum, low, expected_code", [
    (signal.SIGKILL, 20, -signal.SIGKILL),  # after the first checkpoint (16)
    (signal.SIGINT, 2, 130),
    (signal.SIGTERM, 2, 143),
])
def test_interrupted_run_resumes_exactly(straight, tmp_path, capsys, signum, low, expected_code):
    root, reference = straight
    at_step = random.Random(SEED * 100 + signum).randrange(low, MAX_STEPS - 12)
    tag = f"sig{signum}"
    code, err, run_dir = run_until(root, tmp_path, tag, at_step, signum)
    context = f"signal {signum} at step >= {at_step} (RELIABILITY_SEED={SEED})"
    assert code == expected_code, (context, err)
    assert "Traceback" not in err, err
    saved = load_checkpoint(run_dir / "ckpts" / "last.ckpt")["step"]
    if signum == signal.SIGKILL:
        assert saved % 16 == 0 and saved >= 16, context
        # a kill between writing the temp checkpoint and renaming it leaves this behind
        (run_dir / "ckpts" / f".tmp-{uuid.uuid4().hex[:8]}-last.ckpt").write_bytes(b"\0" * 1024)
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and f"at step {saved}: checkpoint saved" in lines[0], err
        assert saved >= at_step, context
    assert main(train_args(root, tmp_path, tag, f"resume={run_dir / 'ckpts' / 'last.ckpt'}")) == 0, capsys.readouterr().err
    assert not list((run_dir / "ckpts").glob(".tmp-*")), "stale temp files survive the resume"
    assert_same_tensors(comparable(load_checkpoint(reference / "ckpts/last.ckpt")), comparable(load_checkpoint(run_dir / "ckpts/last.ckpt")), context)
    steps = [int(r["step"]) for r in csv.DictReader((run_dir / "metrics.csv").open())]
    assert steps == list(range(1, MAX_STEPS + 1)), context
    assert sorted(p.name for p in (run_dir / "configs").iterdir()) == ["parsed.yaml"], "the same config, recorded once"


def test_resume_with_other_overrides_keeps_the_original_config(straight, tmp_path):
    root, _ = straight
    assert main(train_args(root, tmp_path, "first", "trainer.max_steps=16")) == 0
    run_dir = tmp_path / "sds-nerf" / "first"
    original = (run_dir / "configs" / "parsed.yaml").read_text()
    assert main(train_args(root, tmp_path, "first", "trainer.max_steps=20", f"resume={run_dir / 'ckpts/last.ckpt'}")) == 0
    assert (run_dir / "configs" / "parsed.yaml").read_text() == original
    assert "max_steps: 20" in (run_dir / "configs" / "parsed-16.yaml").read_text()
    assert load_checkpoint(run_dir / "ckpts/last.ckpt")["meta"]["config"] == "configs/parsed-16.yaml"


def test_non_finite_weights_are_never_checkpointed(straight, tmp_path):
    from threestudio_like.cli import build, seed_everything
    from threestudio_like.config import load_config
    from threestudio_like.utils.stop import RunStopped

    root, reference = straight
    cfg = load_config(root / "configs/sds-nerf.yaml", TINY)
    seed_everything(cfg.seed)
    system, trainer_cls = build(cfg, torch.device("cpu"))
    trainer = trainer_cls(system, cfg.trainer, tmp_path / "run")
    trainer.resume(reference / "ckpts/last.ckpt")
    trainer.save()
    good = (tmp_path / "run/ckpts/last.ckpt").read_bytes()
    with torch.no_grad():
        next(system.geometry.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(RunStopped, match="non-finite") as stopped:
        trainer.save()
    assert stopped.value.exit_code == 1 and f"step {MAX_STEPS}" in str(stopped.value)
    assert (tmp_path / "run/ckpts/last.ckpt").read_bytes() == good


def test_diverging_run_stops_with_one_line(straight, tmp_path, capsys):
    root, _ = straight
    code = main(train_args(root, tmp_path, "inf", "system.guidance.guidance_scale=1e30"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "non-finite loss or gradient" in lines[0], err


@pytest.fixture
def small_disk(tmp_path, straight):
    """A real tmpfs just big enough for the first checkpoint, not for the second one's temp file."""
    _, reference = straight
    size = (reference / "ckpts/last.ckpt").stat().st_size
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root to mount")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.6) // 4096 * 4096}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_keeps_the_last_checkpoint_and_no_partial_file(straight, small_disk, capsys):
    root, _ = straight
    code = main(train_args(root, small_disk, "full"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err, err
    run_dir = small_disk / "sds-nerf" / "full"
    assert load_checkpoint(run_dir / "ckpts/last.ckpt")["step"] == 16
    assert not [p for p in run_dir.rglob(".tmp-*")], "a partial temp file was left on the full disk"
    # the same folder, now read-only: a resume says so in one line
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code = main(train_args(root, small_disk, "full", f"resume={run_dir / 'ckpts/last.ckpt'}"))
    err = capsys.readouterr().err
    assert code == 2 and "Read-only file system" in err and len(err.strip().splitlines()) == 1, err


def test_chamfer_is_the_same_for_the_same_run(root):
    """quality.json's Chamfer samples both surfaces with a fixed seed: whatever the global RNGs did
    before, the same weights give the same number."""
    import numpy as np

    from threestudio_like.cli import build, seed_everything
    from threestudio_like.config import load_config
    from threestudio_like.systems.quality import evaluate_quality

    cfg = load_config(root / "configs/sds-nerf.yaml", [*TINY, "system.quality.enabled=true", "system.quality.mesh_resolution=32",
                                                       "system.quality.n_surface_points=2000", "system.quality.n_views=1",
                                                       "system.exporter.progress=false"])
    seed_everything(cfg.seed)
    system, _ = build(cfg, torch.device("cpu"))
    first = evaluate_quality(system)["chamfer"]
    np.random.seed(12345)
    torch.manual_seed(12345)
    second = evaluate_quality(system)["chamfer"]
    assert first == first and first == second
