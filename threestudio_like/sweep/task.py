"""One launch of one job: the job's command as a subprocess, resumed from its checkpoint when it
has one. The same function runs as a Ray task or in the sequential executor; it never touches
the ledger, it reports back to the driver.

Per job, ``<sweep>/jobs/<hash>/`` keeps ``launches.jsonl`` (one line per launch: time, host, pid and its
parent's, whether it resumed) and ``attempt-<n>.log`` (the command's output), apart from the run folder,
which a fresh start empties.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from threestudio_like.sweep.grid import JobSpec

USER_ERROR = 2  # launch.py's exit status for a mistake in what was asked (one "error: ..." line)
STOP_GRACE_S = 30.0  # a stopped job gets this long to write its checkpoint after SIGTERM


def die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when its parent dies (Linux), so a lost Ray
    worker never leaves its launch.py running beside the retry. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def launches(log_dir: Path) -> list[dict]:
    path = log_dir / "launches.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prepare_run_dir(job: JobSpec) -> bool:
    """True when this launch resumes; otherwise an earlier partial run folder (no checkpoint yet)
    is emptied, since a fresh run must start in a folder of its own."""
    if job.resumable and job.checkpoint.is_file():
        return True
    run_dir = Path(job.run_dir)
    if run_dir.exists():
        if any(run_dir.iterdir()) and not (run_dir / "configs").is_dir():
            raise ValueError(f"run folder {run_dir} exists and is not a run folder; it was not removed")
        shutil.rmtree(run_dir)
    return False


def run_attempt(job: JobSpec, log_dir: str, use_gpu: bool = False) -> dict:
    """Launch ``job`` once and wait for it.

    Returns ``{"kind", "rc", "error", "wall_s", "launches", "metrics"}``, ``kind`` as
    :func:`outcome_kind` says; ``error`` is the one line that says why.
    """
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    try:
        resume = prepare_run_dir(job)
    except ValueError as error:
        return {"kind": "user", "rc": None, "error": str(error), "wall_s": 0.0, "launches": len(launches(logs)), "metrics": {}}
    argv = [sys.executable, *job.argv, *([f"resume={job.checkpoint}"] if resume else []), *(job.gpu_args if use_gpu else ())]
    number = len(launches(logs)) + 1
    log_path = logs / f"attempt-{number}.log"
    start = time.time()
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=logs, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with (logs / "launches.jsonl").open("a") as record:
            record.write(json.dumps({"launch": number, "time": start, "host": socket.gethostname(), "pid": proc.pid, "parent": os.getpid(),
                                     "resume": str(job.checkpoint) if resume else None}) + "\n")
        try:
            rc = proc.wait()
        except BaseException:  # the task is being cancelled: let the run checkpoint, then go
            stop(proc)
            raise
    wall = time.time() - start
    error = None if rc == 0 else error_line(log_path, rc)
    kind = outcome_kind(rc, log_path)
    return {"kind": kind, "rc": rc, "error": error, "wall_s": wall, "launches": number,
            "metrics": read_metrics(Path(job.run_dir)) if kind == "done" else {}}


def outcome_kind(rc: int, log_path: Path) -> str:
    """done (exit 0); user (exit 2: a mistake in what was asked); stopped (exit 1 with launch.py's
    own "error:" line: the run stopped itself, e.g. diverged, and would stop again); crash (a
    signal, a traceback: a relaunch from the checkpoint may well finish)."""
    if rc == 0:
        return "done"
    if rc == USER_ERROR:
        return "user"
    if rc == 1 and any(line.startswith("error:") for line in log_path.read_text(errors="replace").splitlines()):
        return "stopped"
    return "crash"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def error_line(log_path: Path, rc: int) -> str:
    """The one line that says why: the last "error:" line, else the last line, else the signal."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if rc < 0:
        return f"killed by signal {-rc} ({signal.Signals(-rc).name})"
    if errors:
        return errors[-1][len("error:"):].strip()
    return f"exit status {rc}: {lines[-1][:300] if lines else 'no output'}"


def read_metrics(run_dir: Path) -> dict:
    """A finished run's final numbers: quality.json, the last step and loss of metrics.csv, and a
    benchmark's bench.json when there is one (numbers only; NaN kept as None for JSON)."""
    metrics: dict = {}
    rows = []
    if (run_dir / "metrics.csv").is_file():
        with (run_dir / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
    if rows:
        metrics.update({k: float(rows[-1][k]) for k in ("step", "loss") if rows[-1].get(k)})
    for name in ("quality.json", "bench.json"):
        if (run_dir / name).is_file():
            data = json.loads((run_dir / name).read_text())
            metrics.update({k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}

