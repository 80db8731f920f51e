"""Reliability probe: what a demanding user can do to a run, and whether anything is lost.

    python bench/reliability_probe.py [--trials 3] [--seed 0] [--out /tmp/probe]

1. kill trials: a tiny run gets SIGKILL, SIGINT or SIGTERM at a random step (as a real process), is
   resumed with ``resume=`` (as a real process), and its final checkpoint is compared tensor by
   tensor with an uninterrupted run's; metrics.csv must hold each step once;
2. bad inputs: start-up with values the tests do not use; each must exit 2 with one line naming
   the key and no traceback, and leave no run folder;
3. run-folder ownership: a second run into a finished run's folder, a concurrent resume, a name
   leading out of exp_root_dir.

Prints a markdown summary (the README's RELIABILITY section) and writes probe.json under --out.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from threestudio_like.cli import main  # noqa: E402
from threestudio_like.systems.checkpoint import load_checkpoint  # noqa: E402
from threestudio_like.utils.atomic import write_text  # noqa: E402

MAX_STEPS, INTERVAL = 64, 16
TINY = [
    "trainer.progress_bar=false", "data.width=16", "data.height=16", "data.batch_size=1", "data.n_val_views=1",
    "data.eval_width=16", "data.eval_height=16", "system.geometry.pos_encoding.log2_hashmap_size=12",
    "system.geometry.pos_encoding.n_levels=4", "system.geometry.pos_encoding.start_level=4",
    "system.renderer.num_samples_per_ray=16", "system.renderer.grid_resolution=16", "system.prior.n_elevations=2",
    "system.prior.azimuth_step_deg=45", "system.quality.enabled=false", "trainer.export_at_end=false",
    "trainer.test_at_end=false", "trainer.val_check_interval=1000", f"trainer.checkpoint_interval={INTERVAL}",
    "trainer.log_every_n_steps=1", f"trainer.max_steps={MAX_STEPS}", "use_timestamp=false",
]
# (override, the key the line must name): none of these is in tests/systems/test_reliability_inputs.py
BAD_INPUTS = [
    ("data.batch_size=-2", "data.batch_size"), ("data.eval_height=0", "data.eval_height"),
    ("data.width=[16,0]", "width=[16, 0]"), ("data.resolution_milestones=[50,10]", "resolution_milestones"),
    ("data.fovy_range=[30,200]", "data.fovy_range"), ("data.light_distance_range=[0,1]", "data.light_distance_range"),
    ("data.eval_camera_distance=0", "data.eval_camera_distance"), ("data.eval_fovy=-5", "data.eval_fovy"),
    ("data.azimuth_range=[90,-90]", "azimuth_range"), ("data.light_position_perturb=-1", "data.light_position_perturb"),
    ("trainer.checkpoint_interval=-16", "trainer.checkpoint_interval"), ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps"),
    ("trainer.val_check_interval=-100", "trainer.val_check_interval"), ("trainer.max_steps=-1", "trainer.max_steps"),
    ("system.renderer.grid_update_every=-16", "system.renderer.grid_update_every"),
    ("system.renderer.eval_chunk_size=0", "system.renderer.eval_chunk_size"),
    ("system.renderer.grid_ema_decay=2", "grid_ema_decay"), ("system.renderer.grid_threshold=-1", "system.renderer.grid_threshold"),
    ("system.renderer.grid_warmup_steps=-1", "system.renderer.grid_warmup_steps"),
    ("system.geometry.pos_encoding.start_step=-5", "system.geometry.pos_encoding.start_step"),
    ("system.geometry.pos_encoding.log2_hashmap_size=40", "system.geometry.pos_encoding"),
    ("system.geometry.radius=0", "radius"), ("system.geometry.isosurface_threshold=-5", "system.geometry.isosurface_threshold"),
    ("system.geometry.lr_encoding=1e9", "system.geometry.lr_encoding"), ("system.geometry.mlp_hidden_layers=-1", "mlp_hidden_layers"),
    ("system.exporter.isosurface_resolution=4", "isosurface_resolution"), ("system.exporter.texture_padding=-1", "system.exporter.texture_padding"),
    ("system.exporter.min_component_fraction=3", "min_component_fraction"),
    ("system.guidance.min_step_percent=[0,0.5,1.2,100]", "system.guidance.min_step_percent"),
    ("system.guidance.min_step_percent=0.99", "system.guidance.min_step_percent"),
    ("system.guidance.max_step_percent=-0.5", "system.guidance.max_step_percent"),
    ("system.guidance.guidance_scale=.inf", "system.guidance.guidance_scale"), ("system.guidance.grad_clip=-1", "system.guidance.grad_clip"),
    ("system.guidance.weighting=cubic", "weighting"), ("system.loss.lambda_sparsity=-0.5", "system.loss.lambda_sparsity"),
    ("system.loss.lambda_sds=[0,1,-1,100]", "system.loss.lambda_sds"), ("system.loss.lambda_typo=1", "system.loss.lambda_typo"),
    ("system.optimizer.eps=-1", "system.optimizer.eps"), ("system.optimizer.name=sgd", "optimizer.name"),
    ("system.background.color=[1,1]", "system.background.color"), ("system.prompt_processor.overhead_threshold=100", "overhead_threshold"),
    ("system.prompt_processor.prompt=' '", "prompt"), ("system.quality.mesh_resolution=2", "system.quality.mesh_resolution"),
    ("system.quality.elevation=120", "system.quality.elevation"), ("system.prior.supersample=0", "supersample"),
    ("system.prior.azimuth_step_deg=0", "azimuth_step_deg"), ("cpu_threads=-4", "cpu_threads"), ("seed=99999999999", "seed"),
    ("name=", "name"), ("tag=..", "tag"), ("tag=x/../../y", "tag"), ("exp_root_dir=' '", "exp_root_dir"),
    ("system.geometry.finite_difference_eps=.inf", "system.geometry.finite_difference_eps"),
    ("system.geometry.density_blob_scale=.nan", "system.geometry.density_blob_scale"),
    ("system.quality.n_surface_points=100000000000", "system.quality.n_surface_points"),
    ("data.eval_height=100000", "data.eval_height"), ("data.n_val_views=100000000", "data.n_val_views"),
    ("cpu_threads=65536", "cpu_threads"), ("name='  '", "name"), ("exp_root_dir=/dev/null", "cannot create the run folder"),
]


def train_args(out: Path, tag: str, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={out}", f"tag={tag}", *TINY, *extra]


def launch(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def logged_steps(run_dir: Path) -> list[int]:
    try:
        with (run_dir / "metrics.csv").open(newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if (r.get("step") or "").isdigit()]
    except FileNotFoundError:
        return []


def same_tensors(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return set(a) == set(b) and all(same_tensors(a[k], b[k]) for k in a if k != "meta")
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def kill_trial(out: Path, reference: dict, signum: int, at_step: int, tag: str) -> dict:
    """One interrupted run and its resume, as processes; what was lost and whether it is exact."""
    run_dir = out / "sds-nerf" / tag
    proc = launch(train_args(out, tag))
    while len(logged_steps(run_dir)) < at_step and proc.poll() is None:
        time.sleep(0.002)
    seen = len(logged_steps(run_dir))
    proc.send_signal(signum)
    _, err = proc.communicate()
    ckpt = run_dir / "ckpts" / "last.ckpt"
    saved = load_checkpoint(ckpt)["step"] if ckpt.is_file() else 0
    resume = launch(train_args(out, tag, f"resume={ckpt}") if saved else train_args(out, tag + "-fresh"))
    resume.communicate()
    final_dir = run_dir if saved else out / "sds-nerf" / (tag + "-fresh")
    steps = logged_steps(final_dir)
    return {
        "signal": signal.Signals(signum).name, "asked_step": at_step, "seen_step": seen, "exit_code": proc.returncode,
        "stderr_lines": len([line for line in err.splitlines() if line.strip()]), "traceback": "Traceback" in err,
        "saved_step": saved, "steps_lost": max(seen - saved, 0), "resume_exit_code": resume.returncode,
        "exact": same_tensors(reference, load_checkpoint(final_dir / "ckpts" / "last.ckpt")),
        "metrics_each_step_once": steps == list(range(1, MAX_STEPS + 1)),
    }


def bad_input(out: Path, override: str, key: str) -> dict:
    """One start-up with a bad value, in-process: exit code, the line, and no folder left."""
    err = io.StringIO()
    folder = out / "bad"
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(train_args(folder, "bad", override))
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    left = folder.exists() and any(folder.rglob("*"))
    ok = code == 2 and len(lines) == 1 and key in lines[0] and "Traceback" not in err.getvalue() and not left
    return {"override": override[:60], "exit_code": code, "line": lines[0][:200] if lines else "", "ok": ok}


def ownership(out: Path) -> dict:
    """A finished run's folder is refused to a second run; a name cannot leave exp_root_dir."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        first = main(train_args(out, "owned", "trainer.max_steps=2"))
        ckpt = out / "sds-nerf" / "owned" / "ckpts" / "last.ckpt"
        before = ckpt.read_bytes()
        second = main(train_args(out, "owned", "trainer.max_steps=2"))
        escape = main(train_args(out, "../../escaped", "trainer.max_steps=2"))
    untouched = ckpt.read_bytes() == before
    holder = launch(train_args(out, "owned", "trainer.max_steps=100000", f"resume={ckpt}"))
    while len(logged_steps(ckpt.parents[1])) < 4 and holder.poll() is None:
        time.sleep(0.01)
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        concurrent = main(train_args(out, "owned", f"resume={ckpt}"))
    holder.send_signal(signal.SIGTERM)
    holder.communicate()
    return {"first": first, "second_refused": second == 2 and ckpt.is_file(), "escape_refused": escape == 2,
            "concurrent_refused": concurrent == 2 and "another run" in err.getvalue(),
            "finished_run_untouched": untouched}


def summary(result: dict) -> str:
    trials, bad = result["kill_trials"], result["bad_inputs"]
    rows = ["| signal | trials | exit codes | one line, no traceback | steps lost (max) | resumed bit-identical | metrics.csv each step once |",
            "|---|---|---|---|---|---|---|"]
    for name in ("SIGKILL", "SIGINT", "SIGTERM"):
        group = [t for t in trials if t["signal"] == name]
        if not group:
            continue
        codes = sorted({t["exit_code"] for t in group})
        one_line = "n/a (killed)" if name == "SIGKILL" else f"{sum(t['stderr_lines'] == 1 and not t['traceback'] for t in group)}/{len(group)}"
        rows.append(f"| {name} | {len(group)} | {codes} | {one_line} | {max(t['steps_lost'] for t in group)} | "
                    f"{sum(t['exact'] for t in group)}/{len(group)} | {sum(t['metrics_each_step_once'] for t in group)}/{len(group)} |")
    rows.append("")
    rows.append(f"Bad inputs: {sum(b['ok'] for b in bad)}/{len(bad)} stopped at start-up with exit code 2, one line naming the key, "
                "no traceback and no run folder.")
    own = result["ownership"]
    rows.append(f"Ownership: second run into a finished run refused {own['second_refused']} (its checkpoint untouched "
                f"{own['finished_run_untouched']}), concurrent resume refused {own['concurrent_refused']}, "
                f"name outside exp_root_dir refused {own['escape_refused']}.")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="trials per signal (SIGKILL, SIGINT, SIGTERM)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the steps the signals arrive at")
    parser.add_argument("--out", default=None, help="working folder (default: a temp folder)")
    return parser.parse_args()


def main_probe() -> int:
    args = parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="reliability-probe-"))
    draw = random.Random(args.seed)
    straight = launch(train_args(out, "straight"))
    straight.communicate()
    reference = load_checkpoint(out / "sds-nerf" / "straight" / "ckpts" / "last.ckpt")
    trials = []
    for signum in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
        for i in range(args.trials):
            at_step = draw.randrange(2, MAX_STEPS - 8)
            trials.append(kill_trial(out, reference, signum, at_step, f"{signal.Signals(signum).name}-{i}"))
            print(json.dumps(trials[-1]), flush=True)
    result = {"kill_trials": trials, "bad_inputs": [bad_input(out, o, k) for o, k in BAD_INPUTS], "ownership": ownership(out)}
    for failed in (b for b in result["bad_inputs"] if not b["ok"]):
        print(f"bad input not handled: {failed}", flush=True)
    write_text(out / "probe.json", json.dumps(result, indent=2) + "\n")
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main_probe())
