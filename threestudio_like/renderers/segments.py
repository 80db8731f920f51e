"""Sums along runs of a sorted key (the samples of one ray, the Gaussians of one pixel) without padding.

Both renderers keep only the samples that matter, packed and sorted by ray or pixel; a running sum
that restarts at every run gives each sample its transmittance. It is taken over the whole packed
array and the run's start subtracted, in float64 so the subtraction loses nothing a float32 sum
along the run would keep.
"""
from __future__ import annotations

import torch
from torch import Tensor


def segments(keys: Tensor) -> dict[str, Tensor]:
    """Runs of equal values in the sorted ``keys`` [M]: first [S] (each run's first position) and
    segment [M] (each entry's run)."""
    is_first = torch.ones_like(keys, dtype=torch.bool)
    is_first[1:] = keys[1:] != keys[:-1]
    return {"first": is_first.nonzero()[:, 0], "segment": torch.cumsum(is_first, 0) - 1}


def segment_exclusive_cumsum(values: Tensor, first: Tensor, segment: Tensor) -> Tensor:
    """Exclusive running sum of ``values`` [M] restarting at every segment; ``first`` [S] are the
    segments' first positions, ``segment`` [M] each entry's segment (from :func:`segments`)."""
    running = torch.cumsum(values, 0) - values
    return running - running.index_select(0, first).index_select(0, segment)


def segment_exclusive_sum_after(values: Tensor, first: Tensor, segment: Tensor) -> Tensor:
    """Σ over the later entries of each entry's segment (exclusive, towards the segment's end) of
    ``values`` [M]: :func:`segment_exclusive_cumsum` the other way round (the compositing's backward)."""
    if len(values) == 0:  # no entries: no segments either
        return values
    inclusive = torch.cumsum(values, 0)
    last = torch.cat([first[1:] - 1, first.new_tensor([len(values) - 1])])
    return inclusive.index_select(0, last).index_select(0, segment) - inclusive
