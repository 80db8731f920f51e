"""Perp-Neg (Armandpour et al. 2023) as threestudio applies it to view-dependent prompts.

The positive condition interpolates between the view prompts by azimuth (front↔side for |azimuth| <
90°, side↔back beyond); the two neighbouring pure-view prompts act as negatives, and only the part of
each negative direction ε(x_t; y_neg) − ε(x_t; ∅) perpendicular to the positive direction
ε(x_t; y) − ε(x_t; ∅) is subtracted, so the negatives cannot cancel the prompt itself:

    ε_s = ε_∅ + s · (e_pos + Σ_i w_i · perp(e_neg_i, e_pos)),   perp(a, b) = a − (⟨a,b⟩ / ⟨b,b⟩) b

with w_i = −scale · (a·exp(−b·r) + c) from the guidance's ``perp_neg_f_*`` (threestudio's defaults),
r the interpolation ratio, ``perp_neg_scale`` 1 in threestudio (ScaleDreamer's ASD: 0.5). A camera
above the overhead threshold gets the overhead prompt and no negatives (weights 0). The prior needs
conditions that mix linearly (floating-point tensors).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor

from threestudio_like.data.cameras import Cameras, wrap_degrees


@dataclass
class PerpNegConditions:
    positive: Tensor  # [B,...] the azimuth-interpolated view condition (overhead: the overhead one)
    negatives: Tensor  # [2,B,...] the first and the second negative of each item
    weights: Tensor  # [B,2] their weights w_i (0 above the overhead threshold)


def perpendicular_component(a: Tensor, b: Tensor) -> Tensor:
    """The part of a [B,...] perpendicular to b [B,...], per batch item."""
    dims = list(range(1, a.dim()))
    dot = (a * b).sum(dim=dims, keepdim=True)
    norm2 = (b * b).sum(dim=dims, keepdim=True).clamp_min(1e-6)
    return a - dot / norm2 * b


def shifted_exp_decay(coefficients: List[float], r: Tensor) -> Tensor:
    """a·exp(−b·r) + c for coefficients [a, b, c]."""
    a, b, c = coefficients
    return a * torch.exp(-b * r) + c


def interpolation(azimuth_deg: Tensor, cfg) -> tuple[Tensor, Tensor, Tensor]:
    """Per camera: (front_half [B] bool, r [B], negative weights [B,2]).

    Front half (|azimuth| < 90°): positive = r·front + (1−r)·side, r = 1 − |az|/90, negatives
    (front, side). Back half: positive = r·side + (1−r)·back, r = 2 − |az|/90, negatives (side, front).
    """
    azimuth = wrap_degrees(azimuth_deg.float()).abs()
    front_half = azimuth < 90.0
    r = torch.where(front_half, 1.0 - azimuth / 90.0, 2.0 - azimuth / 90.0)
    w_first = torch.where(front_half, shifted_exp_decay(cfg.perp_neg_f_fs, r), shifted_exp_decay(cfg.perp_neg_f_sb, r))
    w_second = torch.where(front_half, shifted_exp_decay(cfg.perp_neg_f_sf, 1.0 - r), shifted_exp_decay(cfg.perp_neg_f_fsb, r))
    return front_half, r, -cfg.perp_neg_scale * torch.stack([w_first, w_second], dim=-1)


def _per_item(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1))).to(like.device)


def _mix(a: Tensor, b: Tensor, r: Tensor) -> Tensor:
    if not torch.is_floating_point(a):
        raise ValueError("use_perp_neg needs a prior whose conditions mix linearly; set system.guidance.use_perp_neg=false")
    r = _per_item(r, a).to(a)
    return r * a + (1.0 - r) * b


def conditions(prior, text: str, null: Tensor, cameras: Cameras, overhead: Tensor, cfg) -> PerpNegConditions:
    """Perp-Neg's conditions for ``cameras``; ``null`` [B,...] the ∅ condition, ``overhead`` [B] bool."""
    batch = len(cameras)
    views = {view: prior.condition(text, cameras, [view] * batch) for view in ("front", "side", "back", "overhead")}
    front_half, r, weights = interpolation(cameras.azimuth, cfg)
    front = _per_item(front_half, views["front"])
    positive = torch.where(front, _mix(views["front"], views["side"], r), _mix(views["side"], views["back"], r))
    first = torch.where(front, views["front"], views["side"])
    second = torch.where(front, views["side"], views["front"])
    up = _per_item(overhead, positive)
    positive = torch.where(up, views["overhead"], positive)
    negatives = torch.stack([torch.where(up, null, first), torch.where(up, null, second)])
    weights = torch.where(overhead.to(weights.device)[:, None], torch.zeros_like(weights), weights)
    return PerpNegConditions(positive, negatives, weights)


def combine(eps_pos: Tensor, eps_null: Tensor, eps_negatives: Tensor, weights: Tensor) -> Tensor:
    """The effective conditional prediction ε_y' [B,...], with ε_y' − ε_∅ = e_pos + Σ_i w_i perp(e_neg_i, e_pos).

    eps_negatives [2,B,...], weights [B,2]. Returning Perp-Neg's direction as a conditional prediction
    keeps every method's CFG formula unchanged.
    """
    e_pos = eps_pos - eps_null
    direction = e_pos
    for i in range(weights.shape[1]):
        w = weights[:, i].view(-1, *([1] * (e_pos.dim() - 1))).to(e_pos)
        direction = direction + w * perpendicular_component(eps_negatives[i] - eps_null, e_pos)
    return eps_null + direction
