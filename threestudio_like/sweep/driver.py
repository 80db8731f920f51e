"""The sweep's loop: claim runnable jobs from the ledger as the executor has room, hand them to
it, record what comes back, retry crashes from their checkpoint, and show the progress."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, TextIO

from threestudio_like.sweep.grid import JobSpec
from threestudio_like.sweep.ledger import Ledger, new_owner
from threestudio_like.sweep.task import launches

HEARTBEAT_S = 5.0
PROGRESS_EVERY_S = 30.0


@dataclass
class RetryPolicy:
    max_attempts: int = 3  # launches of one job (the first included) before it counts as failed
    retry_user_errors: bool = False  # also requeue jobs that failed with a user error (exit 2)


def log_dir_of(sweep_dir: Path, job: JobSpec) -> Path:
    return sweep_dir / "jobs" / job.hash


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


def metric_summary(metrics: dict) -> str:
    names = (("psnr", "PSNR {:.2f} dB"), ("iou", "IoU {:.3f}"), ("chamfer", "Chamfer {:.4f}"), ("step", "step {:.0f}"))
    return ", ".join(fmt.format(metrics[k]) for k, fmt in names if metrics.get(k) is not None)


class Progress:
    """Lines on the terminal: each job's start and end, and the sweep's counts with an ETA."""

    def __init__(self, total: int, slots: int, out: TextIO) -> None:
        self.total, self.slots, self.out = total, max(1, slots), out
        self.start = time.time()
        self.walls: list[float] = []  # of the jobs finished by this invocation
        self.last: Optional[tuple] = None
        self.last_time = 0.0

    def event(self, verb: str, job: JobSpec, detail: str = "") -> None:
        elapsed = format_duration(time.time() - self.start)
        print(f"[{elapsed:>6}] {verb:<8}{job.label}{': ' + detail if detail else ''}", file=self.out, flush=True)

    def eta(self, counts: dict, running_for: Sequence[float]) -> str:
        """Each pending job takes the mean time of the finished ones, each running job what it
        lacks of it; spread over the executor's slots."""
        if not counts["pending"] + counts["running"]:
            return "0s"
        if not self.walls:
            return "after the first job"
        mean = sum(self.walls) / len(self.walls)
        left = mean * (counts["pending"] + max(0, counts["running"] - len(running_for)))
        left += sum(max(mean - elapsed, 0.0) for elapsed in running_for)
        return format_duration(left / self.slots)

    def update(self, counts: dict, running_for: Sequence[float] = ()) -> None:
        """Print the counts when they changed, or every PROGRESS_EVERY_S seconds."""
        key = tuple(counts.values())
        if key == self.last and time.time() - self.last_time < PROGRESS_EVERY_S:
            return
        self.last, self.last_time = key, time.time()
        print(f"[{format_duration(time.time() - self.start):>6}] sweep   {counts['done']}/{self.total} done, {counts['running']} running, "
              f"{counts['failed']} failed, {counts['pending']} pending · ETA {self.eta(counts, running_for)}", file=self.out, flush=True)


class Heartbeat(threading.Thread):
    """Beats for this driver's claims on its own connection, also while a sequential job runs."""

    def __init__(self, path: Path, owner: str) -> None:
        super().__init__(daemon=True)
        self.path, self.owner, self.stopped = path, owner, threading.Event()

    def run(self) -> None:
        ledger = Ledger(self.path)
        try:
            while not self.stopped.wait(HEARTBEAT_S):
                ledger.heartbeat(self.owner)
        finally:
            ledger.close()


class Driver:
    def __init__(self, sweep_dir: Path, jobs: Sequence[JobSpec], executor, policy: RetryPolicy, out: Optional[TextIO] = None) -> None:
        self.sweep_dir, self.jobs, self.executor, self.policy = Path(sweep_dir), list(jobs), executor, policy
        self.hashes = [job.hash for job in self.jobs]
        self.ledger = Ledger.of(self.sweep_dir)
        self.owner = new_owner()
        self.progress = Progress(len(self.jobs), executor.slots, out or sys.stdout)
        self.inflight: dict[str, JobSpec] = {}
        self.submissions: dict[str, int] = {}
        self.walls: dict[str, float] = {}
        self.submitted: dict[str, float] = {}  # when each in-flight job was handed to the executor
        self.expected: dict[str, int] = {}  # launches recorded for an in-flight job once its own has started

    def run(self) -> dict[str, int]:
        """Until no job of the grid is pending or running (anyone's); the final counts."""
        self.ledger.add(self.jobs)
        self.ledger.requeue_failed(self.hashes, self.policy.max_attempts, self.policy.retry_user_errors)
        beat = Heartbeat(self.ledger.path, self.owner)
        beat.start()
        try:
            while self.step():
                pass
        finally:
            beat.stopped.set()
            self.executor.close()
            self.ledger.release(self.owner)  # interrupted: the next sweep resumes them
        counts = self.ledger.counts(self.hashes)
        self.ledger.close()
        return counts

    def step(self) -> bool:
        """Claim, launch, collect once; False when nothing is left to run or wait for."""
        self.ledger.fail_dependents()
        while len(self.inflight) < self.executor.slots and (job := self.ledger.claim(self.owner, self.hashes)):
            self.launch(job)
        counts = self.ledger.counts(self.hashes)
        now = time.time()
        self.progress.update(counts, [now - self.submitted[h] for h in self.inflight])
        if not self.inflight:
            if counts["pending"] + counts["running"] == 0:
                return False
            time.sleep(1.0)  # another sweep runs the rest, or their predecessors
            return True
        for h, result in self.executor.wait(timeout=1.0):
            self.settle(self.inflight.pop(h), result)
        self.notice_relaunches()
        return True

    def notice_relaunches(self) -> None:
        """A launch this driver did not make: Ray relaunched a task whose worker was lost."""
        for h, job in self.inflight.items():
            n = len(launches(log_dir_of(self.sweep_dir, job)))
            if n > self.expected[h]:
                self.expected[h] = n
                self.progress.event("resume", job, "relaunched by Ray after its worker was lost")

    def launch(self, job: JobSpec) -> None:
        self.inflight[job.hash] = job
        self.submissions[job.hash] = self.submissions.get(job.hash, 0) + 1
        resuming = job.resumable and job.checkpoint.is_file()
        self.progress.event("resume" if resuming else "start", job, "from its last checkpoint" if resuming else "")
        self.submitted[job.hash] = time.time()
        self.expected[job.hash] = len(launches(log_dir_of(self.sweep_dir, job))) + 1
        self.executor.submit(job, str(log_dir_of(self.sweep_dir, job)))

    def settle(self, job: JobSpec, result: dict) -> None:
        attempts = len(launches(log_dir_of(self.sweep_dir, job)))
        # from hand-over to result, as the user waits: Ray's relaunches of a lost worker included
        self.walls[job.hash] = self.walls.get(job.hash, 0.0) + time.time() - self.submitted[job.hash]
        kind, error = result["kind"], result.get("error")
        if kind == "done":
            self.ledger.finish(job.hash, self.owner, "done", attempts, self.walls[job.hash], result["metrics"])
            self.progress.walls.append(self.walls[job.hash])
            self.progress.event("done", job, f"{format_duration(self.walls[job.hash])}, {metric_summary(result['metrics'])}")
        elif kind == "crash" and max(attempts, self.submissions[job.hash]) < self.policy.max_attempts:
            self.ledger.record_attempts(job.hash, self.owner, attempts, error)
            self.progress.event("crashed", job, f"{error}; retrying")
            self.launch(job)
        else:
            self.ledger.finish(job.hash, self.owner, "failed", attempts, self.walls[job.hash], {}, error, kind)
            self.progress.event("failed", job, error or kind)
