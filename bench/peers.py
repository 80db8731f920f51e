"""Peer implementations for the CPU row of bench/speed.py, loaded from a local checkout at run time.

Nothing of theirs is part of this project: ``--peers DIR`` (or $PEERS_DIR) points at a folder
holding plain clones (or just the one file each):

    DIR/nerfstudio/nerfstudio/field_components/encodings.py   nerfstudio's pure-PyTorch HashEncoding
    DIR/gsplat/gsplat/cuda/_torch_impl.py                     gsplat's pure-PyTorch reference path

Only the named top-level definitions are taken out of each file (by its syntax tree) and run with
the few names they use, so neither package needs to be installed. A missing file makes its loader
return None and the bench skips that comparison. gsplat's ``accumulate`` imports two nerfacc
functions, which are CUDA-only; they are stood in for by :func:`render_weight_from_alpha` and
:func:`accumulate_along_rays` below (the same definitions in plain PyTorch).
"""
from __future__ import annotations

import ast
import math
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

NERFSTUDIO_FILE = "nerfstudio/nerfstudio/field_components/encodings.py"
GSPLAT_FILE = "gsplat/gsplat/cuda/_torch_impl.py"


def load_definitions(path: Path, names: tuple[str, ...], namespace: dict) -> Optional[dict]:
    """Execute only the top-level functions/classes ``names`` of the file at ``path`` in ``namespace``."""
    if not path.is_file():
        return None
    tree = ast.parse(path.read_text(), filename=str(path))
    chosen = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names]
    missing = set(names) - {node.name for node in chosen}
    if missing:
        raise RuntimeError(f"{path}: no top-level {sorted(missing)} (another version of the file?)")
    exec(compile(ast.Module(body=chosen, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


class _AnyShape:
    """jaxtyping's Float[Tensor, "..."] annotations, evaluated at definition time, mean Tensor."""

    def __class_getitem__(cls, item):
        return Tensor


class _Encoding(nn.Module):
    """nerfstudio's Encoding base, as far as HashEncoding uses it."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim


def nerfstudio_hash_encoding(peers: Path):
    """nerfstudio's HashEncoding class (torch implementation), or None when absent."""
    namespace = {"torch": torch, "nn": nn, "np": np, "Tensor": Tensor, "Literal": Literal, "Optional": Optional,
                 "Float": _AnyShape, "Int": _AnyShape, "Shaped": _AnyShape, "Encoding": _Encoding,
                 "TCNN_EXISTS": False, "tcnn": None, "print_tcnn_speed_warning": lambda name: None}
    loaded = load_definitions(peers / NERFSTUDIO_FILE, ("HashEncoding",), namespace)
    return None if loaded is None else loaded["HashEncoding"]


def render_weight_from_alpha(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """nerfacc's: per sample (sorted by ray) trans = Π_{earlier samples of its ray} (1 − α), w = trans·α.

    The product is taken in O(samples) as exp of an exclusive running sum of log(1 − α) in float64,
    restarting at each ray (a padded ``cumprod`` would cost rays × longest ray)."""
    log_keep = torch.log1p(-alphas.double())
    running = torch.cumsum(log_keep, 0) - log_keep
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    trans = torch.exp(running - running[starts[ray_indices]]).to(alphas.dtype)
    return trans * alphas, trans


def accumulate_along_rays(weights: Tensor, values: Optional[Tensor], ray_indices: Tensor, n_rays: int) -> Tensor:
    """nerfacc's: Σ over each ray's samples of w·value (w alone when ``values`` is None) → [n_rays, D]."""
    src = weights[:, None] if values is None else weights[:, None] * values
    return src.new_zeros(n_rays, src.shape[1]).index_add(0, ray_indices, src)


@contextmanager
def _nerfacc_stand_in():
    """Let ``from nerfacc import ...`` inside gsplat's accumulate find the stand-ins above."""
    saved = sys.modules.get("nerfacc")
    module = types.ModuleType("nerfacc")
    module.render_weight_from_alpha, module.accumulate_along_rays = render_weight_from_alpha, accumulate_along_rays
    sys.modules["nerfacc"] = module
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("nerfacc", None)
        else:
            sys.modules["nerfacc"] = saved


def gsplat_reference(peers: Path, max_alpha: float) -> Optional[types.SimpleNamespace]:
    """gsplat's torch projection and pair compositing (``_fully_fused_projection``, ``accumulate``),
    with its MAX_ALPHA set to ``max_alpha`` so outputs compare with ours; None when absent."""
    namespace = {"torch": torch, "F": F, "math": math, "Tensor": Tensor, "Optional": Optional, "Tuple": Tuple,
                 "Literal": Literal, "CameraModel": str, "MAX_ALPHA": max_alpha, "MIN_COMPENSATION": 0.005,
                 "assert_never": lambda value: (_ for _ in ()).throw(AssertionError(value))}
    names = ("_world_to_cam", "_persp_proj", "_fully_fused_projection", "accumulate")
    loaded = load_definitions(peers / GSPLAT_FILE, names, namespace)
    if loaded is None:
        return None

    def accumulate(*args, **kwargs):
        with _nerfacc_stand_in():
            return loaded["accumulate"](*args, **kwargs)

    return types.SimpleNamespace(projection=loaded["_fully_fused_projection"], accumulate=accumulate)
