"""Adaptive density control of 3D Gaussians (3DGS): clone, split, prune, opacity reset.

The training system owns one Adam whose parameter groups hold the Gaussians' tensors (one tensor per
group, each group named as in ``GaussianSplatting.parameter_groups``). Adding or removing Gaussians
replaces those tensors, so the optimizer's groups and per-parameter state (Adam's moments) are
rewritten here to match: kept rows keep their moments, new rows start from zero (as in 3DGS).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class DensifyStats:
    """Running mean, per Gaussian, of the norm of the view-space 2D-mean gradient over the views
    where the Gaussian was visible (3DGS's ``xyz_gradient_accum / denom``)."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.grad_sum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)

    def accumulate(self, means2d_grad: Tensor, visible: Tensor, width: int, height: int) -> None:
        """means2d_grad [C,N,2] (d loss / d pixel position), visible [C,N] bool.

        As gsplat does, the gradient is rescaled to normalised device coordinates (×W/2, ×H/2) and by
        the number of views (losses average over the batch), so thresholds match 3DGS's values.
        """
        C = means2d_grad.shape[0]
        scale = torch.tensor([0.5 * width * C, 0.5 * height * C], device=means2d_grad.device)
        norms = (means2d_grad.detach() * scale).norm(dim=-1) * visible
        self.grad_sum += norms.sum(0).to(self.grad_sum.device)
        self.count += visible.sum(0).to(self.count.device)

    def average(self) -> Tensor:
        """[N] mean gradient norm (0 for Gaussians never seen)."""
        return self.grad_sum / self.count.clamp_min(1)


# --------------------------------------------------------------------------------------------------
# Optimizer surgery
# --------------------------------------------------------------------------------------------------
def set_group_lr(optimizer: Optional[torch.optim.Optimizer], name: str, lr: float) -> None:
    """Set the learning rate of the parameter group called ``name`` (if there is one)."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        if group.get("name") == name:
            group["lr"] = lr


def _swap_param(optimizer: torch.optim.Optimizer, old: Tensor, new: Tensor, keep: Tensor, n_new: int) -> None:
    """Put ``new`` where ``old`` was in the optimizer; its state rows follow ``keep`` + ``n_new`` zeros."""
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            if param is old:
                group["params"][i] = new
    state = optimizer.state.pop(old, None)
    if not state:
        return
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == old.shape:
            pad = torch.zeros((n_new, *value.shape[1:]), dtype=value.dtype, device=value.device)
            state[key] = torch.cat([value[keep], pad])
    optimizer.state[new] = state


def rebuild(geometry, optimizer: Optional[torch.optim.Optimizer], keep: Tensor, new: Optional[dict[str, Tensor]] = None) -> None:
    """Keep the Gaussians where ``keep`` [N] is true and append ``new`` (name → rows), on the geometry
    and in the optimizer (and in pending gradients, so the coming optimizer step still applies).
    Densification statistics restart from zero."""
    new = new or {}
    n_new = 0
    for name in geometry.param_names():
        old = getattr(geometry, name)
        rows = new.get(name, old.detach()[:0])
        n_new = len(rows)
        param = nn.Parameter(torch.cat([old.detach()[keep], rows.to(old.dtype)]), requires_grad=old.requires_grad)
        if old.grad is not None:  # this step's gradient still applies to the kept rows
            param.grad = torch.cat([old.grad[keep], torch.zeros_like(rows)])
        if optimizer is not None:
            _swap_param(optimizer, old, param, keep, n_new)
        setattr(geometry, name, param)
    geometry.stats = DensifyStats(geometry.num_gaussians, geometry.means.device)


# --------------------------------------------------------------------------------------------------
# The three operations
# --------------------------------------------------------------------------------------------------
def densify(geometry, optimizer: Optional[torch.optim.Optimizer]) -> tuple[int, int]:
    """Clone small and split large Gaussians whose mean gradient reaches the threshold, within the
    count cap (the largest gradients go first). Returns (n_cloned, n_split)."""
    cfg = geometry.cfg
    grads = geometry.stats.average()
    candidates = grads >= cfg.densify_grad_threshold
    budget = max(cfg.max_gaussians - geometry.num_gaussians, 0)  # each clone or split adds one
    if int(candidates.sum()) > budget:
        order = torch.argsort(torch.where(candidates, grads, -1.0), descending=True)
        candidates = torch.zeros_like(candidates)
        candidates[order[:budget]] = True
    with torch.no_grad():
        sigma = geometry.scales.exp()
        large = sigma.max(-1).values > cfg.split_scale_threshold
        clone, split = candidates & ~large, candidates & large
        new = {name: getattr(geometry, name).detach()[clone] for name in geometry.param_names()}
        children = split_children(geometry, split, cfg.split_factor)
        new = {name: torch.cat([new[name], children[name]]) for name in new}
    rebuild(geometry, optimizer, ~split, new)
    return int(clone.sum()), int(split.sum())


def split_children(geometry, split: Tensor, factor: float) -> dict[str, Tensor]:
    """Two children per selected Gaussian: means drawn from the parent, σ divided by ``factor``."""
    from threestudio_like.geometry.gaussians import quaternion_to_matrix

    rows = {name: getattr(geometry, name).detach()[split] for name in geometry.param_names()}
    sigma = rows["scales"].exp()
    R = quaternion_to_matrix(rows["rotations"])
    children = {name: value.repeat(2, *([1] * (value.dim() - 1))) for name, value in rows.items()}
    offsets = (R.repeat(2, 1, 1) @ (sigma.repeat(2, 1) * torch.randn_like(children["means"]))[..., None])[..., 0]
    children["means"] = children["means"] + offsets
    children["scales"] = (sigma / factor).log().repeat(2, 1)
    return children


def prune(geometry, optimizer: Optional[torch.optim.Optimizer]) -> int:
    """Remove nearly transparent and overly large Gaussians (at least one always stays). Returns the count."""
    cfg = geometry.cfg
    with torch.no_grad():
        opacity = torch.sigmoid(geometry.opacities)
        remove = (opacity < cfg.prune_opacity_threshold) | (geometry.scales.exp().max(-1).values > cfg.prune_scale_threshold)
        if bool(remove.all()):
            remove[torch.argmax(opacity)] = False
    if bool(remove.any()):
        rebuild(geometry, optimizer, ~remove)
    return int(remove.sum())


def reset_opacity(geometry, optimizer: Optional[torch.optim.Optimizer]) -> None:
    """opacity ← min(opacity, reset value); the opacities' Adam moments restart from zero."""
    from threestudio_like.geometry.gaussians import inverse_sigmoid

    with torch.no_grad():
        ceiling = inverse_sigmoid(torch.tensor(geometry.cfg.opacity_reset_value)).item()
        geometry.opacities.clamp_(max=ceiling)
    state = optimizer.state.get(geometry.opacities, {}) if optimizer is not None else {}
    for value in state.values():
        if torch.is_tensor(value) and value.shape == geometry.opacities.shape:
            value.zero_()


def after_backward(geometry, render_out: dict, step: int, optimizer: Optional[torch.optim.Optimizer]) -> dict[str, int]:
    """The per-step bookkeeping: position lr, statistics, and the scheduled operations.

    Densify+prune run at steps ``from ≤ step < until`` with ``step % interval == 0``; the opacity
    reset at multiples of its interval inside the same window. Returns what changed (for logging).
    """
    cfg = geometry.cfg
    set_group_lr(optimizer, "means", geometry.position_lr(step))
    changed = {}
    if step >= cfg.densify_until_step:
        return changed
    means2d = render_out.get("means2d")
    if means2d is not None and means2d.grad is not None and means2d.shape[1] == geometry.num_gaussians:
        if len(geometry.stats.count) != geometry.num_gaussians:
            geometry.stats = DensifyStats(geometry.num_gaussians, geometry.means.device)
        height, width = render_out["rgb"].shape[1:3]
        geometry.stats.accumulate(means2d.grad, render_out["visible"], width, height)
    if step >= cfg.densify_from_step and cfg.densify_interval > 0 and step % cfg.densify_interval == 0:
        changed["cloned"], changed["split"] = densify(geometry, optimizer)
        changed["pruned"] = prune(geometry, optimizer)
    if cfg.opacity_reset_interval > 0 and step > 0 and step % cfg.opacity_reset_interval == 0:
        reset_opacity(geometry, optimizer)
        changed["opacity_reset"] = 1
    return changed
