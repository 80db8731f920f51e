"""The step's finiteness check (utils/finite.py) says what isfinite(t).all() says, for NaN and ±inf
anywhere, float32 and float64, several tensors and empty ones."""
from __future__ import annotations

import pytest
import torch

from threestudio_like.utils.finite import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite(dtype):
    torch.manual_seed(0)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in (0, 7, 999):
            tensors = [torch.randn(1000, dtype=dtype), torch.randn(10, 2, dtype=dtype) * 1e30, torch.zeros(0, dtype=dtype)]
            assert all_finite(tensors)
            tensors[where % 2].view(-1)[where % tensors[where % 2].numel()] = bad
            assert not all_finite(tensors), (bad, where)
            assert all_finite(tensors) == all(bool(torch.isfinite(t).all()) for t in tensors)
    assert all_finite([]) and all_finite([torch.zeros(0, 3, dtype=dtype)])
    assert all_finite([torch.full((5,), torch.finfo(dtype).max, dtype=dtype), torch.full((3,), torch.finfo(dtype).min, dtype=dtype)])
