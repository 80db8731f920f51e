"""Quality measures against a known answer (the embedded prior's scene): pure functions.

Images are tensors with channels last ([..., H, W, C]) in [0,1]; masks [..., H, W, 1] or [..., H, W]
coverage in [0,1]; point sets [N,3].
"""
from __future__ import annotations

import math

import torch
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


def hsv_saturation(rgb: Tensor) -> Tensor:
    """HSV saturation [..., H, W] of rgb [..., H, W, 3] in [0,1]: (max − min) / max, 0 where max = 0."""
    high = rgb.max(dim=-1).values
    low = rgb.min(dim=-1).values
    return (high - low) / high.clamp_min(1e-8) * (high > 1e-8)


def saturation_error(pred: Tensor, target: Tensor, true_mask: Tensor, threshold: float = 0.5) -> float:
    """Mean HSV saturation of ``pred`` minus that of ``target`` over the pixels inside the true mask.

    pred, target [..., H, W, 3] in [0,1]; true_mask [..., H, W, 1] coverage. Positive means the
    render is more saturated than the truth (SDS's known failure at high guidance scales), negative
    washed out; 0 for identical images; nan when the mask is empty.
    """
    if pred.shape != target.shape:
        raise ValueError(f"saturation_error needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    inside = (true_mask > threshold).reshape(pred.shape[:-1])
    if not bool(inside.any()):
        return float("nan")
    return float((hsv_saturation(pred.double()) - hsv_saturation(target.double()))[inside].mean())


def psnr_per_view(pred: Tensor, target: Tensor, max_db: float = 100.0) -> Tensor:
    """PSNR [V] in dB of each view of pred, target [V, H, W, C] in [0,1], capped at ``max_db``."""
    if pred.shape != target.shape:
        raise ValueError(f"psnr_per_view needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(dim=1)
    return (-10.0 * torch.log10(mse.clamp_min(10.0 ** (-max_db / 10.0)))).float()


def front_back_confusion(pred: Tensor, truth: Tensor, opposite: Tensor, min_difference_db: float = 40.0) -> dict[str, float]:
    """The Janus measure: is each render closer to the true view or to the object's other side?

    pred, truth [V, H, W, 3]: renders and true renders of V views; opposite [V, H, W, 3]: each view
    of the object reflected front to back, i.e. its front seen from behind (the Janus look) and its
    back seen from the front (for a camera at azimuth a: the true view from azimuth 180° − a,
    mirrored left-right). Views where truth and opposite are closer than ``min_difference_db`` PSNR
    cannot tell the sides apart and are left out.

    Returns ``fraction``: share of the remaining views whose render has a higher PSNR against the
    opposite side than against the truth (0 is right, 1 is front/back swapped everywhere), and
    ``margin_db``: mean PSNR(pred, truth) − PSNR(pred, opposite) over them (higher is better);
    both nan when no view is left.
    """
    informative = psnr_per_view(truth, opposite) < min_difference_db
    if not bool(informative.any()):
        return {"fraction": float("nan"), "margin_db": float("nan")}
    right = psnr_per_view(pred, truth)[informative]
    wrong = psnr_per_view(pred, opposite)[informative]
    return {"fraction": float((wrong > right).float().mean()), "margin_db": float((right - wrong).mean())}


def high_frequency_excess(pred: Tensor, target: Tensor, true_mask: Tensor, threshold: float = 0.5) -> float:
    """Speckle of a render beyond the truth's: mean |Laplacian| of ``pred`` minus that of ``target``
    over the pixels inside the true mask (edges of the image excluded).

    pred, target [..., H, W, 3] in [0,1]; true_mask [..., H, W, 1]. Positive: noisier than the truth;
    negative: blurrier; 0 for identical images; nan when the mask is empty.
    """
    if pred.shape != target.shape:
        raise ValueError(f"high_frequency_excess needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")

    def laplacian(x: Tensor) -> Tensor:  # [..., H−2, W−2] mean over channels of |4x − neighbours|
        x = x.double()
        centre = x[..., 1:-1, 1:-1, :]
        lap = 4 * centre - x[..., :-2, 1:-1, :] - x[..., 2:, 1:-1, :] - x[..., 1:-1, :-2, :] - x[..., 1:-1, 2:, :]
        return lap.abs().mean(dim=-1)

    inside = (true_mask > threshold).reshape(pred.shape[:-1])[..., 1:-1, 1:-1]
    if not bool(inside.any()):
        return float("nan")
    return float((laplacian(pred) - laplacian(target))[inside].mean())


def normal_angle_error(pred_normals: Tensor, true_normals: Tensor) -> float:
    """Mean angle in degrees between paired unit normals [N,3] (0 = equal, 180 = flipped)."""
    pred = pred_normals.detach().double()
    true = true_normals.detach().double()
    cosine = (pred / pred.norm(dim=-1, keepdim=True).clamp_min(1e-12) * true / true.norm(dim=-1, keepdim=True).clamp_min(1e-12)).sum(-1)
    return float(torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0))).mean())
