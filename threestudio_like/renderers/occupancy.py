"""An occupancy grid in plain PyTorch, with the update rule of nerfacc's ``OccGridEstimator``.

A cell's occupancy is σ·step_size at a random point inside it (σ = the geometry's density). Each
update refreshes some cells as ``occ ← max(decay·occ, new)`` and marks a cell occupied when
``occ > min(mean occupancy of the non-empty cells, threshold)``. During warm-up every cell is
refreshed; afterwards a quarter of the cells at random plus up to a quarter of the occupied ones.
Before its first update the grid is all-occupied, so a fresh (or just loaded) renderer never culls
anything it should not.

The grid covers the box [−radius, radius]^3; cell (i, j, k) is ``binaries[i, j, k]`` with i along x
(the layout nerfacc uses, so the CUDA path can take these bits as they are).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class OccupancyGrid(nn.Module):
    def __init__(self, resolution: int, radius: float) -> None:
        super().__init__()
        self.resolution, self.radius = int(resolution), float(radius)
        n = self.resolution**3
        self.register_buffer("occs", torch.zeros(n))
        self.register_buffer("binaries", torch.ones(self.resolution, self.resolution, self.resolution, dtype=torch.bool))
        self.register_buffer("updated", torch.zeros((), dtype=torch.bool))  # has it ever been refreshed?

    def cell_index(self, points: Tensor) -> Tensor:
        """points [...,3] (world) → flat cell index [...] (long), clamped into the grid."""
        r = self.resolution
        ijk = ((points / self.radius + 1.0) * (0.5 * r)).long().clamp_(0, r - 1)
        return (ijk[..., 0] * r + ijk[..., 1]) * r + ijk[..., 2]

    def query(self, points: Tensor) -> Tensor:
        """points [...,3] (world) → occupied [...] (bool)."""
        return self.binaries.view(-1)[self.cell_index(points)]

    def query_axes(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """The same as :meth:`query` for coordinates given per axis (x, y, z [...] each) → [...] (bool)."""
        r = self.resolution
        i, j, k = (((c / self.radius + 1.0) * (0.5 * r)).long().clamp_(0, r - 1) for c in (x, y, z))
        return self.binaries.view(-1)[(i * r + j) * r + k]

    def occupied_fraction(self) -> float:
        return float(self.binaries.float().mean())

    @torch.no_grad()
    def update(
        self, step: int, density_fn: Callable[[Tensor], Tensor], step_size: float,
        threshold: float = 0.01, ema_decay: float = 0.95, warmup_steps: int = 256, chunk: int = 65536,
    ) -> None:
        """Refresh the grid from ``density_fn(points [N,3]) -> σ [N]`` (nerfacc's rule, see the module doc)."""
        n, r, device = self.resolution**3, self.resolution, self.occs.device
        if step < warmup_steps or not bool(self.updated):
            cells = torch.arange(n, device=device)
        else:
            uniform = torch.randint(n, (n // 4,), device=device)
            occupied = torch.nonzero(self.binaries.view(-1))[:, 0]
            if len(occupied) > n // 4:
                occupied = occupied[torch.randint(len(occupied), (n // 4,), device=device)]
            cells = torch.cat([uniform, occupied])
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        points = ((ijk + torch.rand_like(ijk)) / r * 2.0 - 1.0) * self.radius
        occ = torch.cat([density_fn(part).reshape(-1) for part in points.split(chunk)]) * step_size
        self.occs[cells] = torch.maximum(self.occs[cells] * ema_decay, occ.to(self.occs.dtype))
        positive = self.occs[self.occs > 0]
        cut = min(float(positive.mean()), threshold) if len(positive) else threshold
        self.binaries.copy_((self.occs > cut).view(r, r, r))
        self.updated.fill_(True)
