"""Images and videos a run writes: validation grids and turntable videos."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from threestudio_like.utils.atomic import atomic_path


def to_uint8(image: Tensor) -> np.ndarray:
    """[...,H,W,C] float in [0,1] → uint8 numpy (C=1 is expanded to 3)."""
    image = image.detach().float().clamp(0.0, 1.0).cpu()
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    return (image.numpy() * 255.0 + 0.5).astype(np.uint8)


def panels(out: dict[str, Tensor]) -> list[Tensor]:
    """The panels of one validation row, each [B,H,W,3]: rgb, opacity, and normal or depth."""
    rows = [out["rgb"], out["opacity"].expand(*out["opacity"].shape[:-1], 3)]
    if "normal" in out:
        rows.append((out["normal"] * 0.5 + 0.5) * out["opacity"] + (1.0 - out["opacity"]))
    else:
        depth = out["depth"]
        scale = depth[out["opacity"] > 0.5].max() if (out["opacity"] > 0.5).any() else depth.max().clamp_min(1e-6)
        rows.append((depth / scale.clamp_min(1e-6)).expand(*depth.shape[:-1], 3))
    return rows


def grid_image(out: dict[str, Tensor]) -> np.ndarray:
    """A grid with one row per view and one column per panel (rgb | opacity | normal/depth)."""
    columns = panels(out)
    rows = [torch.cat([c[b] for c in columns], dim=1) for b in range(out["rgb"].shape[0])]
    return to_uint8(torch.cat(rows, dim=0))


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    import imageio.v3 as iio

    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=path.suffix)
    return path


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """An H.264 MP4 (yuv420p, so common players open it) of uint8 frames [H,W,3]."""
    import imageio.v2 as imageio

    path = Path(path)
    # macro_block_size 1 keeps small frames at their size; even sizes keep yuv420p happy
    with atomic_path(path) as tmp, imageio.get_writer(
        tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1, quality=8
    ) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path
