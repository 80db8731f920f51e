"""A run folder belongs to one run: claimed on creation, locked while training, its configs kept.

- A new run creates its folder exclusively (``mkdir`` fails if it exists), so two runs never share
  one: with timestamps, ``<tag>@<YYYYmmdd-HHMMSS>`` gets a ``-2``, ``-3``… suffix when the second is
  taken; without, an existing folder that holds anything is refused unless the run is a ``resume=``
  of the checkpoint inside it.
- While training, the run holds an exclusive ``flock`` on ``run.lock`` (released by the kernel when
  the process ends, even on SIGKILL), so a concurrent resume of the same folder is refused.
- ``configs/parsed.yaml`` is the config of the run's first start. A resume whose config differs
  (other overrides) writes ``configs/parsed-<step>.yaml`` beside it and never rewrites the original;
  every checkpoint records the name of the file that made it.
"""
from __future__ import annotations

import datetime
import errno
import os
import re
from pathlib import Path
from typing import Optional

from threestudio_like.utils.atomic import describe, remove_stale_temps, write_text

LOCK_NAME = "run.lock"


class RunFolderError(ValueError):
    """The run folder cannot be used (taken, locked, not creatable): one line for the user."""


def default_tag(tag: str, prompt: str) -> str:
    """The run's tag, or the prompt made file-name safe."""
    return tag or re.sub(r"[^A-Za-z0-9_-]+", "_", prompt).strip("_")[:80] or "run"


def checkpoint_run_dir(resume: Optional[str]) -> Optional[Path]:
    """The run folder a checkpoint ``<run>/ckpts/<file>`` lives in, or None for a loose checkpoint."""
    if not resume:
        return None
    ckpt = Path(resume)
    if ckpt.parent.name == "ckpts" and (ckpt.parent.parent / "configs").is_dir():
        return ckpt.parent.parent
    return None


def create_exclusive(folder: Path) -> bool:
    """Create ``folder`` (parents as needed); False when it already exists."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
        return True
    except FileExistsError:
        if not folder.is_dir():
            raise RunFolderError(f"cannot create the run folder {str(folder)!r}: a file of that name is in the way") from None
        return False
    except OSError as error:
        raise RunFolderError(
            f"cannot create the run folder {str(folder)!r}: {describe(error)}; pass exp_root_dir=<a writable folder>"
        ) from None


def claim_new(base: Path, use_timestamp: bool, now: Optional[datetime.datetime] = None) -> Path:
    """Create a fresh run folder for ``base`` (``exp_root/name/tag``) and return it."""
    if use_timestamp:
        stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
        first = base.with_name(f"{base.name}@{stamp}")
        for n in range(1, 1000):
            candidate = first if n == 1 else first.with_name(f"{first.name}-{n}")
            if create_exclusive(candidate):
                return candidate
        raise RunFolderError(f"cannot find a free run folder name next to {str(first)!r}")
    if create_exclusive(base) or not any(base.iterdir()):
        return base
    raise RunFolderError(
        f"{str(base)!r} already holds a run; continue it with resume={base / 'ckpts' / 'last.ckpt'}, "
        "or choose another tag= (or use_timestamp=true)"
    )


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run>/run.lock`` holding the owner's pid."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunFolderError(f"cannot lock the run folder {str(self.path.parent)!r}: {describe(error)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"cannot lock the run folder {str(self.path.parent)!r}: {describe(error)}") from None
            owner = self.path.read_text().strip() or "?"
            raise RunFolderError(
                f"another run (pid {owner}) is training in {str(self.path.parent)!r}; wait for it to end, or choose another tag="
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def claim(exp_root_dir: str, name: str, tag: str, use_timestamp: bool, resume: Optional[str]) -> tuple[Path, RunLock]:
    """The run folder of a ``--train``, created or verified, locked, and cleared of stale temp files."""
    run_dir = checkpoint_run_dir(resume)
    if run_dir is None:
        run_dir = claim_new(Path(exp_root_dir) / name / tag, use_timestamp)
    lock = RunLock(run_dir).acquire()
    remove_stale_temps(run_dir, run_dir / "ckpts", run_dir / "configs", run_dir / "save")
    return run_dir, lock


def record_config(run_dir: Path, text: str, step: int, previous: Optional[str]) -> str:
    """Keep the config ``text`` in the run folder; returns its name relative to ``run_dir``.

    A fresh run writes ``configs/parsed.yaml``. A resume keeps the file its checkpoint came from
    (``previous``) when the config is the same, else writes ``configs/parsed-<step>.yaml``.
    """
    configs = run_dir / "configs"
    original = configs / "parsed.yaml"
    candidates = [run_dir / previous] if previous else []
    candidates.append(original)
    for existing in candidates:
        if existing.is_file() and existing.read_text() == text:
            return str(existing.relative_to(run_dir))
    target = original if not original.exists() else configs / f"parsed-{step}.yaml"
    write_text(target, text)
    return str(target.relative_to(run_dir))
