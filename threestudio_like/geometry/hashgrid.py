"""Multi-resolution hash encoding (Instant-NGP) in plain PyTorch, with a coarse-to-fine level mask.

Level l has N_l = floor(base_resolution · per_level_scale^l) cells per axis, so (N_l + 1)^3 grid
vertices. A level whose vertices fit in the table (≤ 2^log2_hashmap_size) indexes them densely; a
finer level hashes vertex (x, y, z) to (x·1 ⊕ y·2654435761 ⊕ z·805459861) mod 2^log2_hashmap_size.
Features of the 8 surrounding vertices are blended trilinearly.

Speed on a CPU comes from doing every level and corner at once: all levels live in one table, the
8·L vertex indices of a point are built with broadcasting (offsets folded in), and one fused
gather-and-blend (``embedding_bag``) reads them; the backward pass is one complex ``index_add_``. Two facts
keep the index arithmetic in int32 where it fits: the low bits of a product only depend on the low
bits of its factors, and hashed levels sit at table offsets that are multiples of the table size,
so a level's offset can be OR-ed into one of the three XOR terms.

On a CPU the encoding runs, by default, as one compiled loop per point (threestudio_like/kernels:
the same function, to float rounding); ``cpu_kernel: false`` keeps the PyTorch path below, which
is also what runs when the kernels cannot be built.

The coarse-to-fine "progressive band" (threestudio's ProgressiveBandHashGrid): only the first
``start_level + (step − start_step) // update_steps`` levels are active; the features of the others
are zero (and are not even computed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from threestudio_like.config import check_choice
from threestudio_like.kernels import kernel_choice, use_kernels
from threestudio_like.kernels.hash_encoding import HashLayout, hash_encode
from threestudio_like.utils.checks import check_at_least

PRIMES = (1, 2654435761, 805459861)


@dataclass
class HashGridConfig:
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378  # threestudio's: finest level 16·1.447^15 ≈ 4096
    start_level: int = 8  # levels active at start_step (progressive band)
    start_step: int = 0
    update_steps: int = 500  # one more level every update_steps
    cpu_kernel: Any = "auto"  # auto (the compiled CPU kernel when it builds) | true | false (the PyTorch path)

    def __post_init__(self) -> None:
        self.cpu_kernel = kernel_choice(self.cpu_kernel, "cpu_kernel")
        check_choice(self.n_features_per_level, (1, 2, 4, 8), "n_features_per_level")
        if not 1 <= self.n_levels <= 32:
            raise ValueError(f"n_levels={self.n_levels} must lie in [1, 32]")
        if not 8 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size={self.log2_hashmap_size} must lie in [8, 30]")
        if self.base_resolution < 1 or self.per_level_scale < 1.0:
            raise ValueError(
                f"base_resolution={self.base_resolution} must be >= 1 and per_level_scale={self.per_level_scale} >= 1"
            )
        check_at_least(self, 1, "start_level", "update_steps")
        check_at_least(self, 0, "start_step")


def level_resolutions(cfg: HashGridConfig) -> list[int]:
    """Cells per axis of each level, N_l = floor(base · scale^l) (non-decreasing)."""
    return [int(math.floor(cfg.base_resolution * cfg.per_level_scale**level + 1e-6)) for level in range(cfg.n_levels)]


def per_level_scale_for(base_resolution: int, finest_resolution: int, n_levels: int) -> float:
    """The per_level_scale that takes ``base_resolution`` to ``finest_resolution`` in ``n_levels``."""
    if n_levels == 1:
        return 1.0
    return math.exp(math.log(finest_resolution / base_resolution) / (n_levels - 1))


def _scatter_rows(idx: Tensor, w: Tensor, grad: Tensor, n_rows: int) -> Tensor:
    """grad_table[idx[m,c]] += w[m,c] · grad[m]: idx [M,8] (int64), w [M,8], grad [M,F] → [n_rows,F].

    For F = 2 the pair is one complex number: a 1-D complex ``index_add_`` adds both features in
    one pass (exactly the float sums of the 2-D version, about 3× faster than its scatter on a CPU).
    """
    F = grad.shape[1]
    if F == 2 and grad.dtype in (torch.float32, torch.float64):
        rows = w * torch.view_as_complex(grad).unsqueeze(1)  # [M,8] complex
        out = torch.zeros(n_rows, dtype=rows.dtype, device=grad.device)
        return torch.view_as_real(out.index_add_(0, idx.reshape(-1), rows.reshape(-1)))
    rows = (w.unsqueeze(-1) * grad.unsqueeze(1)).reshape(-1, F)
    return grad.new_zeros(n_rows, F).index_add_(0, idx.reshape(-1), rows)


class _WeightedGather(torch.autograd.Function):
    """out[m] = Σ_c w[m,c] · table[idx[m,c]] — one fused read, one ``index_add_`` backward.

    table [T,F], idx [M,8] (int32/int64), w [M,8] → out [M,F].
    """

    @staticmethod
    def forward(ctx: Any, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(table, idx, w)
        return nn.functional.embedding_bag(idx, table, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        table, idx, w = ctx.saved_tensors
        grad = grad.contiguous()  # the multiply below is several times slower on a strided grad
        idx = idx.long()  # int64 indices take index_add_'s fast path on the CPU (int32 is ~10x slower there)
        grad_table = _scatter_rows(idx, w, grad, table.shape[0]) if ctx.needs_input_grad[0] else None
        grad_w = (table[idx] * grad.unsqueeze(1)).sum(-1) if ctx.needs_input_grad[2] else None
        return grad_table, None, grad_w


class HashGrid(nn.Module):
    """points [N,3] in [0,1]^3 → features [N, n_levels · n_features_per_level].

    Gradients reach the table; they reach the points too when the points require them.
    """

    def __init__(self, cfg: HashGridConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.resolutions = level_resolutions(cfg)
        size = 2**cfg.log2_hashmap_size
        self.n_dense = sum((r + 1) ** 3 <= size for r in self.resolutions)  # a prefix: resolutions only grow
        offsets, total = [0] * cfg.n_levels, 0
        for level in range(self.n_dense, cfg.n_levels):  # hashed levels first, at multiples of the table size
            offsets[level], total = total, total + size
        for level in range(self.n_dense):
            offsets[level], total = total, total + (self.resolutions[level] + 1) ** 3
        wide = (max(self.resolutions) + 2) * size >= 2**31 or total >= 2**31
        self.index_dtype = torch.int64 if wide else torch.int32
        multipliers = []
        for level, res in enumerate(self.resolutions):
            if level < self.n_dense:
                multipliers.append([1, res + 1, (res + 1) ** 2])
            else:
                multipliers.append([p % size for p in PRIMES])
        self.register_buffer("level_res", torch.tensor(self.resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("multipliers", torch.tensor(multipliers, dtype=self.index_dtype), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=self.index_dtype), persistent=False)
        self.table = nn.Parameter(torch.empty(total, cfg.n_features_per_level).uniform_(-1e-4, 1e-4))
        self.offset_list = offsets
        self.active_levels = min(cfg.start_level, cfg.n_levels)

    @property
    def output_dim(self) -> int:
        return self.cfg.n_levels * self.cfg.n_features_per_level

    def update_step(self, step: int) -> None:
        """Unmask one more level every ``update_steps`` steps after ``start_step``."""
        cfg = self.cfg
        self.active_levels = min(cfg.start_level + max(step - cfg.start_step, 0) // cfg.update_steps, cfg.n_levels)

    # the active level count is state (an exported checkpoint must see the levels it was trained with)
    def get_extra_state(self) -> dict[str, int]:
        return {"active_levels": int(self.active_levels)}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.active_levels = min(int(state["active_levels"]), self.cfg.n_levels)

    def corner_indices(self, x: Tensor, n_levels: int) -> tuple[Tensor, Tensor]:
        """Table rows and trilinear weights of the 8 corners, level-major.

        x [N,3] in [0,1] → idx [n_levels·N, 8] (index dtype), weights [n_levels·N, 8] (x's dtype).
        The arithmetic keeps the point axis innermost ([L,2,2,2,N]): broadcasting over a trailing
        axis of length 2 is an order of magnitude slower on a CPU.
        """
        N, L, nd = x.shape[0], n_levels, min(self.n_dense, n_levels)
        res = self.level_res[:L, None, None]
        scaled = x.t().unsqueeze(0) * res  # [L,3,N]
        lower = torch.minimum(scaled.floor(), res - 1)
        frac = scaled - lower
        base = lower.to(self.index_dtype) * self.multipliers[:L, :, None]
        terms = torch.stack([base, base + self.multipliers[:L, :, None]], dim=2)  # [L,3,2,N]: corner 0/1 per axis
        idx = torch.empty(L, 2, 2, 2, N, dtype=self.index_dtype, device=x.device)
        if nd < L:  # hashed levels: XOR of the three terms, each already reduced mod the table size
            hashed = terms[nd:] & (2**self.cfg.log2_hashmap_size - 1)
            hashed[:, 0] |= self.offsets[nd:L, None, None]
            yz = hashed[:, 1, :, None, :] ^ hashed[:, 2, None, :, :]  # [L,2,2,N]
            torch.bitwise_xor(hashed[:, 0, :, None, None, :], yz.unsqueeze(1), out=idx[nd:])
        if nd > 0:  # dense levels: x + y·(N+1) + z·(N+1)^2
            dense = terms[:nd]
            dense[:, 0] += self.offsets[:nd, None, None]
            yz = dense[:, 1, :, None, :] + dense[:, 2, None, :, :]
            torch.add(dense[:, 0, :, None, None, :], yz.unsqueeze(1), out=idx[:nd])
        w = torch.stack([1.0 - frac, frac], dim=2)  # [L,3,2,N]
        weights = w[:, 0, :, None, None, :] * (w[:, 1, :, None, :] * w[:, 2, None, :, :]).unsqueeze(1)
        idx = idx.view(L, 8, N).transpose(1, 2).reshape(L * N, 8)
        return idx, weights.view(L, 8, N).transpose(1, 2).reshape(L * N, 8)

    def layout(self) -> HashLayout:
        """The grid as the compiled kernel reads it (the active levels only)."""
        cfg = self.cfg
        return HashLayout(self.resolutions[: self.active_levels], self.offset_list, self.n_dense, cfg.log2_hashmap_size, cfg.n_levels)

    def forward(self, x: Tensor, feature_major: bool = False) -> Tensor:
        """x [N,3] in [0,1]^3 (clamped) → [N, n_levels·F]; inactive levels are zero. ``feature_major``
        asks the compiled kernel for a [N, n_levels·F] view of [n_levels·F, N] storage (the fused MLP's
        layout; same values); the torch path ignores it."""
        N, F, L = x.shape[0], self.cfg.n_features_per_level, self.active_levels
        x = x.clamp(0.0, 1.0)
        if x.dtype == self.table.dtype and use_kernels(self.cfg.cpu_kernel, x, self.table):
            return hash_encode(x, self.table, self.layout(), feature_major)
        idx, w = self.corner_indices(x, L)
        feats = _WeightedGather.apply(self.table, idx, w.to(self.table.dtype))  # [L·N, F]
        feats = feats.view(L, N, F).permute(1, 0, 2).reshape(N, L * F)
        if L < self.cfg.n_levels:
            feats = torch.cat([feats, feats.new_zeros(N, (self.cfg.n_levels - L) * F)], dim=1)
        return feats
