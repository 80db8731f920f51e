"""The sweep's ledger: one SQLite database (WAL mode) in the sweep folder, one row per job.

It is the source of truth: a job is claimed (pending → running, owner + heartbeat) inside a
write transaction, so two sweeps on one folder never both run it; a row whose owner stopped
heart-beating (or, on this host, whose owner process is gone) is claimable again and resumes
from its checkpoint. Only drivers write here, never the jobs themselves.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Iterable, Optional, Sequence

from threestudio_like.sweep.grid import JobSpec

STATES = ("pending", "running", "done", "failed")
STALE_S = 60.0  # a running row whose owner has not beaten for this long is taken over
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    hash TEXT PRIMARY KEY,
    variant TEXT NOT NULL, prompt TEXT NOT NULL, seed INTEGER NOT NULL, stage TEXT NOT NULL,
    after TEXT, run_dir TEXT NOT NULL, spec TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT, heartbeat REAL,
    wall_s REAL, metrics TEXT, error TEXT, error_kind TEXT,
    created REAL NOT NULL, updated REAL NOT NULL
)"""
LEDGER_NAME = "sweep.db"


def new_owner() -> str:
    """``host:pid:token``: who holds a claim (the token tells apart two drivers in one process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: Optional[str], heartbeat: Optional[float], now: float) -> bool:
    """A claim holds while its owner beats; on this host a dead owner process ends it at once."""
    if not owner or heartbeat is None or heartbeat < now - STALE_S:
        return False
    host, pid, _ = (owner.split(":") + ["", ""])[:3]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return True


class Ledger:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit; writes that must be atomic open their own BEGIN IMMEDIATE
        self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(SCHEMA)

    @classmethod
    def of(cls, sweep_dir: str | os.PathLike) -> "Ledger":
        return cls(Path(sweep_dir) / LEDGER_NAME)

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        return _Transaction(self.db)

    # --- rows ------------------------------------------------------------------------------------
    def add(self, jobs: Sequence[JobSpec]) -> None:
        """Insert new jobs as pending; a known job keeps its state (its spec follows a moved folder)."""
        now = time.time()
        with self.transaction():
            for job in jobs:
                self.db.execute(
                    "INSERT OR IGNORE INTO jobs (hash, variant, prompt, seed, stage, after, run_dir, spec, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.hash, job.variant, job.prompt, job.seed, job.stage, job.after, job.run_dir, job.to_json(), now, now))
                self.db.execute("UPDATE jobs SET spec = ?, run_dir = ? WHERE hash = ? AND state != 'running'",
                                (job.to_json(), job.run_dir, job.hash))

    def rows(self, hashes: Optional[Iterable[str]] = None) -> list[dict]:
        rows = [dict(r) for r in self.db.execute("SELECT * FROM jobs ORDER BY created, rowid")]
        if hashes is not None:
            wanted = set(hashes)
            rows = [r for r in rows if r["hash"] in wanted]
        for row in rows:
            row["metrics"] = json.loads(row["metrics"]) if row["metrics"] else {}
        return rows

    def counts(self, hashes: Iterable[str]) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self.rows(hashes):
            counts[row["state"]] += 1
        return counts

    # --- state changes ---------------------------------------------------------------------------
    def requeue_failed(self, hashes: Sequence[str], max_attempts: int, user_errors: bool) -> int:
        """Failed jobs back to pending: crashes with attempts left; user errors only when asked
        (then their attempts start again from zero)."""
        with self.transaction():
            n = 0
            for h in hashes:
                n += self.db.execute(
                    "UPDATE jobs SET state = 'pending', updated = ? WHERE hash = ? AND state = 'failed'"
                    " AND ((error_kind IN ('crash', 'dependency') AND attempts < ?) OR ?)",
                    (time.time(), h, max_attempts, int(user_errors))).rowcount
                if user_errors:
                    self.db.execute("UPDATE jobs SET attempts = 0 WHERE hash = ? AND state = 'pending'", (h,))
        return n

    def reset(self, hashes: Sequence[str]) -> None:
        """Finished jobs (done or failed) back to pending with no attempts: run them again."""
        with self.transaction():
            for h in hashes:
                self.db.execute("UPDATE jobs SET state = 'pending', attempts = 0, metrics = NULL, error = NULL, error_kind = NULL,"
                                " wall_s = NULL, updated = ? WHERE hash = ? AND state IN ('done', 'failed')", (time.time(), h))

    def claim(self, owner: str, hashes: Sequence[str]) -> Optional[JobSpec]:
        """Atomically take one runnable job of ``hashes`` (pending with its predecessor done, or
        running under a dead owner); None when there is none right now."""
        now = time.time()
        wanted = set(hashes)
        with self.transaction():
            done = {r[0] for r in self.db.execute("SELECT hash FROM jobs WHERE state = 'done'")}
            for row in self.db.execute("SELECT * FROM jobs WHERE state IN ('pending', 'running') ORDER BY created, rowid").fetchall():
                if row["hash"] not in wanted or (row["after"] and row["after"] not in done):
                    continue
                if row["state"] == "running" and owner_alive(row["owner"], row["heartbeat"], now):
                    continue
                self.db.execute("UPDATE jobs SET state = 'running', owner = ?, heartbeat = ?, updated = ? WHERE hash = ?",
                                (owner, now, now, row["hash"]))
                return JobSpec.from_json(row["spec"])
        return None

    def heartbeat(self, owner: str) -> None:
        self.db.execute("UPDATE jobs SET heartbeat = ? WHERE owner = ? AND state = 'running'", (time.time(), owner))

    def record_attempts(self, h: str, owner: str, attempts: int, error: Optional[str] = None) -> None:
        self.db.execute("UPDATE jobs SET attempts = ?, error = ?, updated = ? WHERE hash = ? AND owner = ?",
                        (attempts, error, time.time(), h, owner))

    def finish(self, h: str, owner: str, state: str, attempts: int, wall_s: Optional[float], metrics: dict,
               error: Optional[str] = None, error_kind: Optional[str] = None) -> None:
        self.db.execute(
            "UPDATE jobs SET state = ?, attempts = ?, wall_s = ?, metrics = ?, error = ?, error_kind = ?, owner = NULL,"
            " updated = ? WHERE hash = ? AND owner = ?",
            (state, attempts, wall_s, json.dumps(metrics), error, error_kind, time.time(), h, owner))

    def fail_dependents(self) -> None:
        """Pending stages whose predecessor failed cannot run: fail them, saying why."""
        self.db.execute(
            "UPDATE jobs SET state = 'failed', error_kind = 'dependency', updated = ?,"
            " error = 'not run: the job it starts from failed' WHERE state = 'pending'"
            " AND after IN (SELECT hash FROM jobs WHERE state = 'failed')", (time.time(),))

    def release(self, owner: str) -> int:
        """Give back this owner's running jobs (interrupted): pending again, resumed by the next sweep."""
        return self.db.execute("UPDATE jobs SET state = 'pending', owner = NULL, updated = ? WHERE owner = ? AND state = 'running'",
                               (time.time(), owner)).rowcount


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken up front,
    so a claim's read and update see no other writer in between."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback) -> None:
        self.db.execute("ROLLBACK" if kind else "COMMIT")
