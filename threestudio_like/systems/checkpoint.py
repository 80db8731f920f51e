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


# the parts whose type a checkpoint records, to say which one differs when it does not fit
PARTS = ("geometry", "renderer", "guidance", "background", "material", "prior")


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the config: the message names the part."""


def checkpoint_meta(system: Any, config_file: Any = None) -> dict[str, Any]:
    """What a checkpoint records besides tensors: the type of each part and the config file."""
    parts = {part: str(getattr(system.cfg, f"{part}_type", "")) for part in PARTS}
    return {"parts": parts, "config": config_file}


def load_into(system: Any, state: dict[str, Any], path: Any, with_optimizers: bool = True) -> None:
    """``system.load_state(state)``, with a one-line :class:`CheckpointMismatch` when it does not fit."""
    try:
        system.load_state(state, with_optimizers=with_optimizers)
    except (RuntimeError, KeyError, ValueError, IndexError, AttributeError) as error:
        raise CheckpointMismatch(f"checkpoint {str(path)!r} does not fit this config: {mismatch(system, state, error)}") from None


def mismatch(system: Any, state: dict[str, Any], error: BaseException) -> str:
    """Which part of ``state`` does not fit ``system``: a part type, a tensor's shape, or a key."""
    recorded = state.get("meta", {}).get("parts", {})
    for part, kind in recorded.items():
        ours = str(getattr(system.cfg, f"{part}_type", ""))
        if kind and ours and kind != ours:
            return f"it was trained with {part}_type={kind!r}, this config has {part}_type={ours!r}"
    for name, saved in state.get("modules", {}).items():
        current = getattr(system, name).state_dict()
        for key in sorted(set(saved) | set(current)):
            if key not in current:
                return f"{name}.{key} is in the checkpoint but not in this config's {name}"
            if key not in saved:
                return f"{name}.{key} is missing from the checkpoint (another {name} configuration?)"
            a, b = saved[key], current[key]
            if torch.is_tensor(a) and torch.is_tensor(b) and a.shape != b.shape:
                return f"{name}.{key} has shape {list(a.shape)} in the checkpoint, {list(b.shape)} here (another {name} size?)"
    return str(error).strip().splitlines()[0][:300]
