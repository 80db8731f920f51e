"""Checkpoints: written atomically, read back with ``weights_only=True`` (no pickled code)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from threestudio_like.utils.atomic import torch_save


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` through a temp file + rename, so a crash never leaves half a file."""
    return torch_save(state, path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing or foreign file is one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist; pass resume=outputs/<run>/ckpts/last.ckpt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors carry long messages; keep the first line
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or "step" not in state or "modules" not in state:
        raise ValueError(f"checkpoint {str(path)!r} is not a threestudio_like checkpoint (no step/modules)")
    return state
