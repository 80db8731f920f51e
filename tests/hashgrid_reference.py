"""The textbook multi-resolution hash encoding (Müller et al. 2022), for tests to compare against."""
from __future__ import annotations

import torch

# Instant-NGP's spatial hash primes (the paper's π1 = 1, π2 = 2 654 435 761, π3 = 805 459 861)
PRIMES = (1, 2654435761, 805459861)


def plain_encoding(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Per level and corner: int64 vertex index (dense x + y(N+1) + z(N+1)², or the Instant-NGP
    hash mod the table size), trilinear weight, plain indexing (autograd scatters the gradient)."""
    size = 2**grid.cfg.log2_hashmap_size
    out = []
    for level, res in enumerate(grid.resolutions):
        scaled = x * res
        lower = torch.minimum(scaled.floor(), torch.tensor(res - 1.0, dtype=x.dtype))
        frac, lower = scaled - lower, lower.long()
        acc = 0.0
        for corner in range(8):
            bits = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            c = lower + bits
            if (res + 1) ** 3 <= size:
                index = c[:, 0] + c[:, 1] * (res + 1) + c[:, 2] * (res + 1) ** 2
            else:
                index = (c[:, 0] * PRIMES[0] ^ c[:, 1] * PRIMES[1] ^ c[:, 2] * PRIMES[2]) % size
            weight = torch.where(bits.bool(), frac, 1.0 - frac).prod(-1, keepdim=True)
            acc = acc + weight * grid.table[int(grid.offsets[level]) + index]
        out.append(acc)
    return torch.cat(out, dim=-1)
