"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the package writes goes through here: the content goes to a temp file in the same
folder (so the rename cannot cross filesystems), is flushed to the disk (fsync), and replaces the
target with ``os.replace``. On any failure the temp file is removed and :class:`WriteError` says in
one line what could not be written and why (disk full, read-only filesystem…), so the previous
version of the file stays as it was.

Temp files are named ``.tmp-<random>-<name>``: the target's suffix is kept, because some writers
(ffmpeg, imageio) choose the format from it, and :func:`remove_stale_temps` can find the leftovers of
a process that was killed in the middle of a write.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_PREFIX = ".tmp-"


class WriteError(OSError):
    """A file could not be written; the message is one line naming the file and the reason."""


def describe(error: BaseException) -> str:
    """The reason of an OS-level failure in a few words (``No space left on device``)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def fsync_directory(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds it replaces ``path``.

    For writers that want a file name (ffmpeg, matplotlib, safetensors). Raises :class:`WriteError`
    when the folder, the write or the rename fails; the temp file never survives a failure.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{path.name}", dir=path.parent)
    except OSError as error:
        raise WriteError(f"cannot write {str(path)!r}: {describe(error)}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; the result is an ordinary file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(f"cannot write {str(path)!r}: {describe(error)}") from None
        raise
    fsync_directory(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically. The bytes are built in memory first, so a full disk surfaces as an
    ordinary ``OSError`` on the write (torch's own file writer turns it into a C++ traceback)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer())


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(*folders: str | os.PathLike) -> list[Path]:
    """Delete the temp files/folders a killed writer left in ``folders`` (not recursive); returns them.

    Only safe while no other process writes there: the run folder's lock guarantees it.
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for leftover in folder.glob(f"{TEMP_PREFIX}*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
