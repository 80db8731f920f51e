"""What the sweep machinery costs per job, apart from the job: N jobs that do nothing but start a
Python process, through the ledger, once with Ray (one job at a time, so the times add up) and once
with the sequential executor, against the same N processes started in a plain loop.

    python bench/sweep_overhead.py --jobs 8

Prints one Markdown row per way: wall time, per job, and the per-job overhead over the plain loop
(Ray's start-up is reported apart).
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threestudio_like.sweep.driver import Driver, RetryPolicy  # noqa: E402
from threestudio_like.sweep.executors import SequentialExecutor, make_executor  # noqa: E402
from threestudio_like.sweep.grid import JobSpec  # noqa: E402

NOOP = ("-c", "pass")


def noop_jobs(n: int, folder: Path) -> list[JobSpec]:
    return [JobSpec(f"{i:016x}", "noop", f"job {i}", 0, "coarse", str(folder / "runs" / str(i)), NOOP) for i in range(n)]


def timed_sweep(folder: Path, n: int, executor) -> float:
    start = time.perf_counter()
    counts = Driver(folder, noop_jobs(n, folder), executor, RetryPolicy(), out=io.StringIO()).run()
    assert counts["done"] == n, counts
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args(argv)
    n = args.jobs
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for _ in range(n):
            subprocess.run([sys.executable, *NOOP], check=True)
        loop = time.perf_counter() - start
        sequential = timed_sweep(Path(tmp) / "seq", n, SequentialExecutor())
        start = time.perf_counter()
        ray_executor = make_executor("ray", None, cpus_per_run=float(os.cpu_count() or 1), gpus_per_run=1.0)
        ray_start = time.perf_counter() - start
        ray = timed_sweep(Path(tmp) / "ray", n, ray_executor)  # closes (shuts Ray down) at the end
    print(f"| way | wall (s), {n} no-op jobs | per job (s) | overhead per job over the loop (s) |")
    print("|---|---|---|---|")
    for name, wall in (("plain loop of processes", loop), ("sweep, sequential executor", sequential),
                       (f"sweep, Ray, one job at a time (+ {ray_start:.1f} s Ray start-up)", ray)):
        print(f"| {name} | {wall:.2f} | {wall / n:.3f} | {(wall - loop) / n:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
