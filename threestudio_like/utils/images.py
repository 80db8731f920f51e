"""Small image conversions shared by the renders the guidance sees and the prior's references."""
from __future__ import annotations

from torch import Tensor


def normal_image(normal: Tensor, opacity: Tensor, background: Tensor) -> Tensor:
    """World normals as a picture: (n + 1)/2 where the object covers the pixel, over ``background``.

    normal [...,3] coverage-weighted (Σ w n, as renderers composite it), opacity [...,1] coverage,
    background [...,3] (or broadcastable) → [...,3] in [0,1]:
    0.5·normal + 0.5·opacity + (1 − opacity)·background, i.e. ((n + 1)/2)·α + (1 − α)·bg for a
    unit normal n at coverage α.
    """
    return (0.5 * normal + 0.5 * opacity + (1.0 - opacity) * background).clamp(0.0, 1.0)
