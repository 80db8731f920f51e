"""The renderer contract.

``render(geometry, material, background, cameras, shading="albedo", training=False)`` returns a
dict with at least

- ``rgb``     [B,H,W,3] in [0,1], composited over the background
- ``opacity`` [B,H,W,1] accumulated alpha
- ``depth``   [B,H,W,1] expected distance along the ray (0 where empty)

and optionally ``normal`` [B,H,W,3] (world-space, composited, in [−1,1]) when asked with
``with_normal=True``, plus regulariser terms a renderer can compute cheaply
(e.g. ``orient`` [B,H,W,1]: Σ_i w_i max(0, n_i·d)², the orientation penalty of each ray).
The CUDA and the torch path of one renderer give the same image within tolerance.
"""
from __future__ import annotations

from torch import nn


class Renderer(nn.Module):
    def render(self, geometry, material, background, cameras, shading: str = "albedo", training: bool = False, with_normal: bool = False) -> dict:
        raise NotImplementedError

    def update_step(self, step: int, max_steps: int, geometry) -> None:
        """Called before each training step (e.g. refresh an occupancy grid from the geometry)."""
