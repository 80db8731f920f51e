"""Render an exported mesh from ``Cameras`` with the project's rasterizer, to compare with the run.

No OpenGL: the mesh goes through the mesh renderer's ``clip_positions`` → ``rasterize`` →
``interpolate`` (visibility at pixel centres, the nearest surface wins, perspective-correct
attributes), and colours come from the texture (bilinear lookup of the interpolated UVs) or from the
vertex colours.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from threestudio_like.data.cameras import Cameras
from threestudio_like.export.texture import texture_image
from threestudio_like.renderers.rasterize import clip_positions, interpolate, rasterize


def load_export(path: str | Path, file: str = "model.glb") -> trimesh.Trimesh:
    """Load ``file`` from an export directory and map it back to the world frame with export.json."""
    path = Path(path)
    mesh = trimesh.load(path / file, force="mesh")
    matrix = np.asarray(json.loads((path / "export.json").read_text())["world_to_file"])
    mesh.apply_transform(np.linalg.inv(matrix))
    return mesh


def _vertex_attributes(mesh: trimesh.Trimesh) -> tuple[Tensor, Tensor | None]:
    """(per-vertex attributes [V,C], texture [1,3,h,w] or None): UVs when textured, else RGB."""
    image = texture_image(mesh)
    if image is not None:
        texture = torch.as_tensor(np.array(image.convert("RGB")), dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        return torch.as_tensor(np.asarray(mesh.visual.uv), dtype=torch.float32), texture
    visual = mesh.visual if mesh.visual.kind in ("vertex", "face", None) else mesh.visual.to_color()
    colors = np.asarray(visual.vertex_colors)[:, :3] / 255.0
    return torch.as_tensor(colors, dtype=torch.float32), None


def _shade(attr: Tensor, texture: Tensor | None) -> Tensor:
    """Interpolated attributes [K,C] → RGB [K,3]."""
    if texture is None:
        return attr
    grid = torch.stack([attr[:, 0] * 2 - 1, (1 - attr[:, 1]) * 2 - 1], dim=-1).view(1, 1, -1, 2)
    return F.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def render_mesh(mesh: trimesh.Trimesh, cameras: Cameras, background: Sequence[float] = (1.0, 1.0, 1.0),
                supersample: int = 1) -> dict[str, Tensor]:
    """Render a world-frame mesh → dict(rgb [B,H,W,3] in [0,1] over ``background``, mask [B,H,W,1],
    depth [B,H,W,1] camera-space z, 0 where empty). Everything on the CPU.

    ``supersample`` s > 1 renders s² samples per pixel and averages them (soft edges, like a volume
    renderer's; depth is then coverage-weighted)."""
    if supersample > 1:
        s = int(supersample)
        fine = render_mesh(mesh, cameras.with_resolution(cameras.width * s, cameras.height * s), background)
        return {k: F.avg_pool2d(v.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1) for k, v in fine.items()}
    cameras = cameras.to("cpu")
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    attr, texture = _vertex_attributes(mesh)
    B, H, W = len(cameras), cameras.height, cameras.width
    pos_clip = clip_positions(vertices, cameras)
    rast = rasterize(pos_clip, faces, H, W, backend="torch")
    # w of the clip position is the camera-space depth, and linear in space: it interpolates exactly
    values = interpolate(torch.cat([attr.expand(B, -1, -1), pos_clip[..., 3:]], -1), rast, faces, backend="torch")
    covered = rast[..., 3] > 0
    rgb = torch.tensor(background, dtype=torch.float32).expand(B, H, W, 3).clone()
    rgb[covered] = _shade(values[covered][:, :-1], texture).clamp(0, 1)
    return {"rgb": rgb, "mask": covered[..., None].float(), "depth": values[..., -1:]}
