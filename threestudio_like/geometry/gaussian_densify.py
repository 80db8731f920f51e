"""Adaptive density control of 3D Gaussians (3DGS) as a strategy the training system calls.

Shaped like gsplat's ``DefaultStrategy``: a strategy object holds only its settings; its running
statistics are an explicit :class:`DensifyState` made by ``initialize_state`` and handed back at every
``step_post_backward(geometry, optimizer, state, step, render_out)``, which clones, splits, prunes and
resets opacities on schedule.

The training system owns one Adam whose parameter groups hold the Gaussians' tensors (one tensor per
group, each group named as in ``GaussianSplatting.parameter_groups``). Adding or removing Gaussians
replaces those tensors, so the optimizer's groups and per-parameter state (Adam's moments) are
rewritten here to match: kept rows keep their moments, new rows start from zero (as in 3DGS).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch
from torch import Tensor, nn

from threestudio_like.geometry.gaussian_ops import inverse_sigmoid, quaternion_to_matrix


@dataclass
class DensifyConfig:
    """The densification settings (the fields of the same names in ``GaussianConfig``)."""

    densify_from_step: int = 100
    densify_until_step: int = 1000
    densify_interval: int = 100
    densify_grad_threshold: float = 0.1
    split_scale_threshold: float = 0.02
    split_factor: float = 1.6
    max_gaussians: int = 6000
    prune_opacity_threshold: float = 0.01
    prune_scale_threshold: float = 0.4
    opacity_reset_interval: int = 0
    opacity_reset_value: float = 0.01

    @classmethod
    def of(cls, cfg: Any) -> "DensifyConfig":
        """The densification fields of a geometry config."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


class DensifyState:
    """Running mean, per Gaussian, of the norm of the view-space 2D-mean gradient over the views
    where the Gaussian was visible (3DGS's ``xyz_gradient_accum / denom``)."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.reset(n, device)

    def reset(self, n: int, device: torch.device | str = "cpu") -> None:
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
    and in the optimizer (and in pending gradients, so the coming optimizer step still applies)."""
    new = new or {}
    for name in geometry.param_names():
        old = getattr(geometry, name)
        rows = new.get(name, old.detach()[:0])
        param = nn.Parameter(torch.cat([old.detach()[keep], rows.to(old.dtype)]), requires_grad=old.requires_grad)
        if old.grad is not None:  # this step's gradient still applies to the kept rows
            param.grad = torch.cat([old.grad[keep], torch.zeros_like(rows)])
        if optimizer is not None:
            _swap_param(optimizer, old, param, keep, len(rows))
        setattr(geometry, name, param)


def split_children(geometry, split: Tensor, factor: float) -> dict[str, Tensor]:
    """Two children per selected Gaussian: means drawn from the parent, σ divided by ``factor``."""
    rows = {name: getattr(geometry, name).detach()[split] for name in geometry.param_names()}
    sigma = rows["scales"].exp()
    R = quaternion_to_matrix(rows["rotations"])
    children = {name: value.repeat(2, *([1] * (value.dim() - 1))) for name, value in rows.items()}
    offsets = (R.repeat(2, 1, 1) @ (sigma.repeat(2, 1) * torch.randn_like(children["means"]))[..., None])[..., 0]
    children["means"] = children["means"] + offsets
    children["scales"] = (sigma / factor).log().repeat(2, 1)
    return children


# --------------------------------------------------------------------------------------------------
# The strategy
# --------------------------------------------------------------------------------------------------
class DefaultStrategy:
    """3DGS's clone / split / prune / opacity reset, on the schedule of a :class:`DensifyConfig`."""

    def __init__(self, cfg: DensifyConfig) -> None:
        self.cfg = cfg

    def initialize_state(self, geometry) -> DensifyState:
        return DensifyState(geometry.num_gaussians, geometry.means.device)

    def step_post_backward(self, geometry, optimizer: Optional[torch.optim.Optimizer], state: DensifyState,
                           step: int, render_out: dict) -> dict[str, int]:
        """Collect the statistics of this step's render, then run the scheduled operations.

        Densify+prune run at steps ``from ≤ step < until`` with ``step % interval == 0``; the opacity
        reset at multiples of its interval inside the same window. Returns what changed (for logging).
        """
        cfg, changed = self.cfg, {}
        if step >= cfg.densify_until_step:
            return changed
        means2d = render_out.get("means2d")
        if means2d is not None and means2d.grad is not None and means2d.shape[1] == geometry.num_gaussians:
            if len(state.count) != geometry.num_gaussians:
                state.reset(geometry.num_gaussians, geometry.means.device)
            height, width = render_out["rgb"].shape[1:3]
            state.accumulate(means2d.grad, render_out["visible"], width, height)
        if step >= cfg.densify_from_step and cfg.densify_interval > 0 and step % cfg.densify_interval == 0:
            changed["cloned"], changed["split"] = self.densify(geometry, optimizer, state)
            changed["pruned"] = self.prune(geometry, optimizer, state)
        if cfg.opacity_reset_interval > 0 and step > 0 and step % cfg.opacity_reset_interval == 0:
            self.reset_opacity(geometry, optimizer)
            changed["opacity_reset"] = 1
        return changed

    def densify(self, geometry, optimizer: Optional[torch.optim.Optimizer], state: DensifyState) -> tuple[int, int]:
        """Clone small and split large Gaussians whose mean gradient reaches the threshold, within the
        count cap (the largest gradients go first); the statistics restart. Returns (n_cloned, n_split)."""
        cfg = self.cfg
        grads = state.average()
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
        state.reset(geometry.num_gaussians, geometry.means.device)
        return int(clone.sum()), int(split.sum())

    def prune(self, geometry, optimizer: Optional[torch.optim.Optimizer], state: DensifyState) -> int:
        """Remove nearly transparent and overly large Gaussians (at least one always stays). Returns the count."""
        cfg = self.cfg
        with torch.no_grad():
            opacity = torch.sigmoid(geometry.opacities)
            remove = (opacity < cfg.prune_opacity_threshold) | (geometry.scales.exp().max(-1).values > cfg.prune_scale_threshold)
            if bool(remove.all()):
                remove[torch.argmax(opacity)] = False
        if bool(remove.any()):
            rebuild(geometry, optimizer, ~remove)
            state.reset(geometry.num_gaussians, geometry.means.device)
        return int(remove.sum())

    def reset_opacity(self, geometry, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """opacity ← min(opacity, reset value); the opacities' Adam moments restart from zero."""
        with torch.no_grad():
            ceiling = inverse_sigmoid(torch.tensor(self.cfg.opacity_reset_value)).item()
            geometry.opacities.clamp_(max=ceiling)
        state = optimizer.state.get(geometry.opacities, {}) if optimizer is not None else {}
        for value in state.values():
            if torch.is_tensor(value) and value.shape == geometry.opacities.shape:
                value.zero_()
