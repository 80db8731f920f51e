"""bench/quality.py's matrix as sweep jobs: each run of the matrix is one job of the sweep machinery
(SQLite ledger in --out, Ray tasks or one after another, retries), executed as
``python bench/quality.py <budget> --run-one METHOD REPR SEED SCENE``, so the runs can spread over
a Ray cluster (``--address``) and a rerun with ``--resume`` skips what is done."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from threestudio_like.sweep.cli import execute
from threestudio_like.sweep.driver import RetryPolicy
from threestudio_like.sweep.grid import JobSpec, payload_hash, resolved_config
from threestudio_like.sweep.ledger import Ledger

SCRIPT = Path(__file__).resolve().parent / "quality.py"
BUDGET_FLAGS = ("steps", "resolution", "eval_every", "mesh_resolution", "surface_points", "log_every", "threads")


def worker_argv(job, args: argparse.Namespace, command: str) -> tuple[str, ...]:
    """The command of one run: the same budget, the one job, the original command line for the record."""
    argv = [str(SCRIPT), "--out", str(Path(args.out).resolve()), "--device", args.device, "--command", command]
    for key in BUDGET_FLAGS:
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for target, item in args.set:
        argv += ["--set", f"{target}:{item}" if target else item]
    return (*argv, "--run-one", job.method, job.repr, str(job.seed), job.scene)


def job_spec(job, args: argparse.Namespace, overrides: Sequence[str], command: str) -> JobSpec:
    """A sweep job for a run of the matrix, hashed by its config and the benchmark's own budget."""
    budget = {key: getattr(args, key) for key in BUDGET_FLAGS if key != "threads"}
    digest = payload_hash({"bench": job.method, "config": resolved_config(job.config_path(), overrides), "budget": budget})
    run_dir = Path(args.out).resolve() / job.name / job.tag
    # a benchmark run measures its curve in-process, so a retry starts it again rather than resuming
    return JobSpec(digest, job.name, job.scene, job.seed, "bench", str(run_dir), worker_argv(job, args, command),
                   resumable=False, gpu_args=("--device", "cuda"))


def run_matrix(specs: Sequence[JobSpec], args: argparse.Namespace) -> dict[str, int]:
    """Run the specs through the sweep in ``--out``; without ``--resume`` finished ones run again."""
    out = Path(args.out).resolve()
    if not args.resume:
        ledger = Ledger.of(out)
        ledger.add(specs)
        ledger.reset([s.hash for s in specs])
        ledger.close()
    return execute(specs, out, args.executor, args.address, 1.0, args.gpus_per_run, RetryPolicy(max_attempts=2))
