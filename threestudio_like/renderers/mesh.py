"""The differentiable mesh rasterizer (threestudio's ``nvdiff-rasterizer``, here ``mesh-rasterizer``).

Renders ``geometry.isosurface()`` (a :class:`~threestudio_like.geometry.mesh.Mesh`) with the pure
functions of :mod:`threestudio_like.renderers.rasterize`: clip positions → rasterize → interpolate world
positions and vertex normals → ``geometry.color`` at the covered pixels → the material → composite over
the background by the coverage → antialias. Gradients reach the vertex positions through the
barycentrics (colour field, shading, depth) and through the antialiased silhouettes (coverage).

Normals are the interpolated area-weighted vertex normals, renormalised per pixel (smooth shading, as
threestudio's rasterizer). Like the volume renderer's Σ w·n and Σ w·t, ``normal`` and ``depth`` are
premultiplied by the coverage (0 where empty) and antialiased with the colour: depth is the distance
from the camera centre to the surface point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from threestudio_like.config import check_choice
from threestudio_like.kernels import kernel_choice
from threestudio_like.registry import register
from threestudio_like.renderers.antialias import antialias
from threestudio_like.renderers.base import Renderer
from threestudio_like.renderers.rasterize import BACKENDS, FAR, NEAR, clip_positions, interpolate, rasterize, use_nvdiffrast


@dataclass
class MeshRasterizerConfig:
    backend: str = "auto"  # auto: nvdiffrast on CUDA when installed, torch elsewhere | torch | nvdiffrast
    near: float = NEAR  # clip planes (world units from the camera centre)
    far: float = FAR
    antialias: bool = True  # silhouette gradients; without it coverage has no gradient at the outline
    # the CPU rasterizer: auto (the compiled loops, kernels/csrc/rasterize.cpp, when they build) | true | false (torch)
    cpu_kernel: Any = "auto"

    def __post_init__(self) -> None:
        check_choice(self.backend, BACKENDS, "renderer.backend")
        self.cpu_kernel = kernel_choice(self.cpu_kernel, "renderer.cpu_kernel")
        if not 0.0 < self.near < self.far:
            raise ValueError(f"renderer.near={self.near}, renderer.far={self.far}: need 0 < near < far")


@register("renderer", "mesh-rasterizer")
class MeshRasterizer(Renderer):
    Config = MeshRasterizerConfig

    def __init__(self, cfg: MeshRasterizerConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def render(self, geometry, material, background, cameras, shading: str = "albedo", training: bool = False,
               with_normal: bool = False) -> dict:
        """→ rgb [B,H,W,3] over the background, opacity [B,H,W,1], depth [B,H,W,1], normal [B,H,W,3]
        (world, premultiplied by the coverage; always given, it costs one more interpolated channel
        triple) and ``mesh``, the Mesh rendered (for the mesh regularisers)."""
        mesh = geometry.isosurface()
        if mesh is None:
            raise ValueError(f"renderer mesh-rasterizer renders mesh geometries (e.g. tetrahedra-sdf-grid); "
                             f"{type(geometry).__name__} has no mesh: use its own renderer")
        cameras = cameras.to(mesh.v_pos.device)
        B, H, W = len(cameras), cameras.height, cameras.width
        backend, tri = self.cfg.backend, mesh.t_pos_idx
        pos_clip = clip_positions(mesh.v_pos, cameras, self.cfg.near, self.cfg.far)
        rast = rasterize(pos_clip, tri, H, W, backend, self.cfg.cpu_kernel)
        fields = interpolate(torch.cat([mesh.v_pos, mesh.vertex_normals()], -1), rast, tri, backend)
        covered = torch.nonzero(rast[..., 3].reshape(-1) > 0)[:, 0]  # flat pixel indices (index_select: cheap on the CPU)
        at_pixels = fields.reshape(B * H * W, -1).index_select(0, covered)
        points, normal = at_pixels[:, :3], F.normalize(at_pixels[:, 3:], dim=-1)
        camera_of = torch.div(covered, H * W, rounding_mode="floor")
        per_pixel = lambda per_camera: per_camera.to(points.dtype).index_select(0, camera_of)  # noqa: E731
        need_normal = with_normal or material.requires_normal(shading)
        rgb = material(geometry.color(points), normal if need_normal else None, points,
                       per_pixel(cameras.light_position), shading)
        distance = (points - per_pixel(cameras.position)).norm(dim=-1, keepdim=True)
        foreground = torch.cat([rgb.to(points.dtype), torch.ones_like(distance), distance, normal], -1)
        image = fields.new_zeros(B * H * W, foreground.shape[-1]).index_copy(0, covered, foreground).view(B, H, W, -1)
        _, dirs = cameras.rays()
        opacity, behind = image[..., 3:4], background(dirs, training=training).to(image.dtype)
        image = torch.cat([image[..., :3] + (1 - opacity) * behind, image[..., 3:]], -1)
        if self.cfg.antialias:
            opposite = None if use_nvdiffrast(backend, image.device) else mesh.opposite_vertices()
            image = antialias(image, rast, pos_clip, tri, backend, opposite, self.cfg.cpu_kernel)
        return {"rgb": image[..., :3], "opacity": image[..., 3:4], "depth": image[..., 4:5],
                "normal": image[..., 5:8], "mesh": mesh}
