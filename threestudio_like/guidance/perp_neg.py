"""Perp-Neg (Armandpour et al. 2023) as threestudio applies it to view-dependent prompts.

The positive condition interpolates between the view prompts by azimuth (front↔side for |azimuth| <
90°, side↔back beyond); the two neighbouring pure-view prompts act as negatives, and only the part of
each negative direction ε(x_t; y_neg) − ε(x_t; ∅) perpendicular to the positive direction
ε(x_t; y) − ε(x_t; ∅) is subtracted, so the negatives cannot cancel the prompt itself:

    ε_s = ε_∅ + s · (e_pos + Σ_i w_i · perp(e_neg_i, e_pos)),   perp(a, b) = a − (⟨a,b⟩ / ⟨b,b⟩) b

with w_i = −(a·exp(−b·r) + c) from ``PromptConfig.perp_neg_f_*`` (threestudio's defaults), r the
interpolation ratio. The prior needs conditions that mix linearly (floating-point tensors).
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from threestudio_like.data.cameras import Cameras, wrap_degrees


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
    return front_half, r, -torch.stack([w_first, w_second], dim=-1)


def view_conditions(prompt, cameras: Cameras) -> dict[str, Tensor]:
    """{front, side, back}: [B,...] conditions of the pure view prompts."""
    batch = len(cameras)
    return {view: prompt.prior.condition(prompt.text, cameras, [view] * batch) for view in ("front", "side", "back")}


def _mix(a: Tensor, b: Tensor, r: Tensor) -> Tensor:
    if not torch.is_floating_point(a):
        raise ValueError("use_perp_neg needs a prior whose conditions mix linearly; set system.prompt_processor.use_perp_neg=false")
    return r.view(-1, *([1] * (a.dim() - 1))).to(a) * a + (1.0 - r.view(-1, *([1] * (a.dim() - 1))).to(a)) * b


def _conditions(prompt, cameras: Cameras) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(positive [B,...], first negative [B,...], second negative [B,...], weights [B,2])."""
    views = view_conditions(prompt, cameras)
    front_half, r, weights = interpolation(cameras.azimuth, prompt.cfg)
    mask = front_half.view(-1, *([1] * (views["front"].dim() - 1))).to(views["front"].device)
    positive = torch.where(mask, _mix(views["front"], views["side"], r), _mix(views["side"], views["back"], r))
    negative_1 = torch.where(mask, views["front"], views["side"])
    negative_2 = torch.where(mask, views["side"], views["front"])
    return positive, negative_1, negative_2, weights


def positive_condition(prompt, cameras: Cameras) -> Tensor:
    """[B,...] the azimuth-interpolated view condition (Prompt.cond under Perp-Neg)."""
    return _conditions(prompt, cameras)[0]


def cond_and_null_eps(prior, x_t: Tensor, t: Tensor, prompt, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """(ε_y', ε_∅) from one forward of batch 4B, where ε_y' − ε_∅ = e_pos + Σ_i w_i perp(e_neg_i, e_pos).

    Returning the Perp-Neg direction as an effective conditional prediction keeps every CFG formula
    of the guidance methods unchanged.
    """
    positive, negative_1, negative_2, weights = _conditions(prompt, cameras)
    cond = torch.cat([positive, prompt.null(cameras), negative_1, negative_2])
    eps = prior.predict_noise(torch.cat([x_t] * 4), torch.cat([t] * 4), cond)
    eps_pos, eps_null, eps_neg_1, eps_neg_2 = eps.chunk(4)
    e_pos = eps_pos - eps_null
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    weights = weights.to(x_t)
    direction = e_pos
    direction = direction + weights[:, 0].view(shape) * perpendicular_component(eps_neg_1 - eps_null, e_pos)
    direction = direction + weights[:, 1].view(shape) * perpendicular_component(eps_neg_2 - eps_null, e_pos)
    return eps_null + direction, eps_null
