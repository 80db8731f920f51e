"""Quality measures against a known answer (the embedded prior's scene): pure functions.

Images are tensors with channels last ([..., H, W, C]) in [0,1]; masks [..., H, W, 1] or [..., H, W]
coverage in [0,1]; point sets [N,3].
"""
from __future__ import annotations

import math

from torch import Tensor


def psnr(pred: Tensor, target: Tensor, max_db: float = 100.0) -> float:
    """Peak signal-to-noise ratio in dB of images in [0,1] (any equal shapes), averaged over all
    pixels of the batch; identical images give ``max_db`` instead of infinity."""
    if pred.shape != target.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    mse = float(((pred.double() - target.double()) ** 2).mean())
    if mse <= 10.0 ** (-max_db / 10.0):
        return float(max_db)
    return -10.0 * math.log10(mse)


def mask_iou(pred_mask: Tensor, true_mask: Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of the two masks binarised at ``threshold`` (same shapes).

    Two empty masks agree perfectly (1.0).
    """
    if pred_mask.shape != true_mask.shape:
        raise ValueError(f"mask_iou needs equal shapes, got {tuple(pred_mask.shape)} and {tuple(true_mask.shape)}")
    a, b = pred_mask > threshold, true_mask > threshold
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def depth_error(pred_depth: Tensor, true_depth: Tensor, true_mask: Tensor, threshold: float = 0.5) -> float:
    """Mean absolute depth difference inside the true mask (coverage > ``threshold``); nan if empty.

    Depths are distances along the ray, [..., H, W, 1]; a render that misses the object where it
    should be is charged its full (zero-depth) difference.
    """
    inside = true_mask > threshold
    if not bool(inside.any()):
        return float("nan")
    return float((pred_depth - true_depth).abs()[inside].mean())


def chamfer_distance(points_a: Tensor, points_b: Tensor) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance a→b plus b→a, halved.

    points_a [N,3], points_b [M,3] (world units); 0 for a set against itself.
    """
    from scipy.spatial import cKDTree

    a = points_a.detach().cpu().double().numpy()
    b = points_b.detach().cpu().double().numpy()
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"chamfer_distance needs non-empty point sets, got {len(a)} and {len(b)} points")
    d_ab = cKDTree(b).query(a)[0].mean()
    d_ba = cKDTree(a).query(b)[0].mean()
    return float(0.5 * (d_ab + d_ba))
