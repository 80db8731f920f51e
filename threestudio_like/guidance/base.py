"""ScoreDistillation: what every guidance method shares, and the only door to the prior's conditions.

The base owns timesteps and their annealing, the conditions of a camera batch (positive, null,
view-independent, Perp-Neg's negatives), noising, classifier-free guidance, the weighting w(t) and the
turning of a gradient into a loss. A method subclass defines only ``direction`` — the un-weighted
gradient it puts on the rendered latents — and, if it trains a network of its own, ``extra_losses``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threestudio_like import diffusion
from threestudio_like.config import check_choice
from threestudio_like.data.cameras import Cameras
from threestudio_like.guidance import perp_neg
from threestudio_like.priors.base import DiffusionPrior
from threestudio_like.prompts import Prompt
from threestudio_like.utils.schedules import check_schedule, schedule_value
from threestudio_like.utils.checks import check_finite, check_length, check_schedule_between, check_schedules_ordered

WEIGHTINGS = ("sds", "uniform", "fantasia3d", "ism")
TIME_SCHEDULES = ("random", "linear")


@dataclass
class GuidanceConfig:
    guidance_scale: float = 100.0  # diffusers' CFG convention: ε_∅ + s(ε_y − ε_∅)
    min_step_percent: Any = 0.02  # number or [start_step, v0, v1, end_step]
    max_step_percent: Any = 0.98
    # w(t): sds = 1 − ᾱ_t, uniform = 1, fantasia3d = √ᾱ_t (1 − ᾱ_t), ism = √((1 − ᾱ_t) / ᾱ_t) (LucidDreamer)
    weighting: str = "sds"
    # random: t ~ U{t_min..t_max} per item; linear: one t annealed from t_max to t_min over the run
    # (DreamGaussian)
    time_schedule: str = "random"
    grad_clip: Any = None  # None, number, or schedule: g is clamped to [−c, c]
    # Perp-Neg on the view prompts (guidance/perp_neg.py): the weights of the negative view
    # directions, [a, b, c] → a·exp(−b·r) + c (threestudio's), all multiplied by perp_neg_scale
    use_perp_neg: bool = False
    perp_neg_f_sb: List[float] = field(default_factory=lambda: [1.0, 0.5, -0.606])
    perp_neg_f_fsb: List[float] = field(default_factory=lambda: [1.0, 0.5, 0.967])
    perp_neg_f_fs: List[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    perp_neg_f_sf: List[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    perp_neg_scale: float = 1.0  # threestudio 1; ScaleDreamer's ASD 0.5 (its guidance_perp_neg −0.5)

    def __post_init__(self) -> None:
        check_choice(self.weighting, WEIGHTINGS, "weighting")
        check_choice(self.time_schedule, TIME_SCHEDULES, "time_schedule")
        for key in ("min_step_percent", "max_step_percent", "grad_clip"):
            check_schedule(getattr(self, key), key)
        check_finite(self, "guidance_scale")
        check_schedule_between(self, 0.0, 1.0, "min_step_percent", "max_step_percent")
        check_schedules_ordered(self, "min_step_percent", "max_step_percent")
        check_schedule_between(self, 1e-12, float("inf"), "grad_clip")
        check_length(self, 3, "perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf")


@dataclass
class Conditions:
    """Every condition a method may need for one camera batch, built by :meth:`ScoreDistillation.conditions`."""

    cameras: Cameras
    positive: Tensor  # [B,...] the view-dependent prompt (Perp-Neg: the interpolated one)
    null: Tensor  # [B,...] ∅, the negative prompt
    plain: Tensor  # [B,...] the view-independent prompt (VSD's ε_φ)
    perp_neg: Optional[perp_neg.PerpNegConditions] = None


class ScoreDistillation(nn.Module):
    """Turns the prior's noise predictions into a gradient on the rendered images' latents."""

    Config = GuidanceConfig
    trains_a_network = False  # VSD/ESD: their ε_φ is stepped by the system through make_optimizer

    def __init__(self, cfg: GuidanceConfig, prior: DiffusionPrior) -> None:
        super().__init__()
        self.cfg = cfg
        # a plain attribute, not a submodule: the frozen prior's weights stay out of checkpoints
        object.__setattr__(self, "prior", prior)
        self.skipped_steps = 0
        self.update_step(0, 1)

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__.lower())

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of the method's own network (only where ``trains_a_network``)."""
        raise NotImplementedError(f"{type(self).__name__} trains no network of its own")

    # --- schedules ---------------------------------------------------------------------------
    def update_step(self, step: int, max_steps: int) -> None:
        """Re-evaluate the scheduled values (timestep range, clipping) for ``step``."""
        T = self.prior.num_train_timesteps
        self.step, self.max_steps = step, max_steps
        self.min_step = int(round(schedule_value(self.cfg.min_step_percent, step) * T))
        self.max_step = int(round(schedule_value(self.cfg.max_step_percent, step) * T))
        self.min_step = max(0, min(self.min_step, T - 1))
        self.max_step = max(self.min_step, min(self.max_step, T - 1))
        self.grad_clip = schedule_value(self.cfg.grad_clip, step)

    def sample_timesteps(self, batch_size: int, device: torch.device) -> Tensor:
        """[B] integer timesteps in [min_step, max_step] (inclusive)."""
        if self.cfg.time_schedule == "linear":
            fraction = min(1.0, self.step / max(1, self.max_steps))
            t = round(self.max_step - fraction * (self.max_step - self.min_step))
            return torch.full((batch_size,), t, dtype=torch.long, device=device)
        return torch.randint(self.min_step, self.max_step + 1, (batch_size,), dtype=torch.long, device=device)

    # --- the door to the prior -----------------------------------------------------------------
    def conditions(self, prompt: Prompt, cameras: Cameras) -> Conditions:
        """The conditions of ``prompt`` for ``cameras``: every method gets all of them from here."""
        prior = self.prior
        plain = prior.condition(prompt.text, cameras, None)
        null = prior.null_condition(prompt.negative_text, cameras)
        if self.cfg.use_perp_neg:
            overhead = torch.tensor([view == "overhead" for view in prompt.view_labels(cameras)])
            terms = perp_neg.conditions(prior, prompt.text, null, cameras, overhead, self.cfg)
            return Conditions(cameras, terms.positive, null, plain, terms)
        views = prompt.views(cameras)
        positive = plain if views is None else prior.condition(prompt.text, cameras, views)
        return Conditions(cameras, positive, null, plain)

    def predict(self, x_t: Tensor, t: Tensor, conds: Conditions, also: Sequence[tuple[Tensor, Tensor, Tensor]] = ()) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(ε(x_t; y, t), ε(x_t; ∅, t), [ε(x; c, τ) for (x, τ, c) in ``also``]) from one batched forward.

        ε(x_t; y, t) is the positive prediction, with Perp-Neg's perpendicular negatives folded in
        when it is on (so every CFG formula stays the same); a forward of batch 2B (4B under
        Perp-Neg) plus the items of ``also``.
        """
        terms = conds.perp_neg
        cond = [conds.positive, conds.null] + ([] if terms is None else list(terms.negatives))
        repeats = len(cond)
        eps = self.prior.predict_noise(
            torch.cat([x_t] * repeats + [x for x, _, _ in also]),
            torch.cat([t] * repeats + [tau for _, tau, _ in also]),
            torch.cat(cond + [c for _, _, c in also]),
        )
        own, rest = eps[: repeats * len(x_t)].chunk(repeats), eps[repeats * len(x_t):]
        extra = list(rest.split([len(x) for x, _, _ in also])) if also else []
        eps_cond, eps_null = own[0], own[1]
        if terms is not None:
            eps_cond = perp_neg.combine(eps_cond, eps_null, torch.stack(own[2:]), terms.weights)
        return eps_cond, eps_null, extra

    def cfg_eps(self, x_t: Tensor, t: Tensor, conds: Conditions, scale: float) -> Tensor:
        """Classifier-free guided ε_s = ε_∅ + s (ε_y − ε_∅)."""
        eps_cond, eps_null, _ = self.predict(x_t, t, conds)
        return diffusion.guided(eps_cond, eps_null, scale)

    # --- shared pieces -------------------------------------------------------------------------
    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t broadcast to the shape of ``like`` [B,C,h,w]."""
        return diffusion.alpha_bar_at(self.prior.alphas_cumprod, t, like)

    def weight(self, t: Tensor, like: Tensor) -> Tensor:
        """w(t) [B,1,1,1]."""
        alpha_bar = self.alpha_bar(t, like)
        if self.cfg.weighting == "sds":
            return 1.0 - alpha_bar
        if self.cfg.weighting == "fantasia3d":
            return alpha_bar.sqrt() * (1.0 - alpha_bar)
        if self.cfg.weighting == "ism":
            return ((1.0 - alpha_bar) / alpha_bar).sqrt()
        return torch.ones_like(alpha_bar)

    def add_noise(self, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t x + √(1 − ᾱ_t) ε."""
        return diffusion.add_noise(x, noise, self.alpha_bar(t, x))

    # --- what a method defines -----------------------------------------------------------------
    def direction(self, x: Tensor, t: Tensor, conds: Conditions) -> Tensor:
        """The un-weighted gradient [B,C,h,w] on the (detached) latents x at timesteps t."""
        raise NotImplementedError

    def loss_terms(self) -> tuple[str, ...]:
        """The <term>s of the loss_<term> entries this method returns (what lambda_<term> may weigh)."""
        return (self.name,)

    def extra_losses(self, x: Tensor, conds: Conditions) -> dict[str, Tensor]:
        """Losses of a method's own network (VSD/ESD), computed on detached, finite latents."""
        return {}

    # --- the call ------------------------------------------------------------------------------
    def forward(self, rgb: Tensor, cameras: Cameras, prompt: Prompt) -> dict[str, Tensor]:
        """rgb [B,H,W,3] in [0,1] → {loss_<name>, grad_norm, t, skipped, …}."""
        # contiguous: a render's [B,H,W,3] permuted is channels-last, and torch draws randn_like of
        # such a tensor element by element, 8x slower than a contiguous one (0.33 ms at the demo's size)
        x = self.prior.encode_images(rgb.permute(0, 3, 1, 2)).contiguous()
        t = self.sample_timesteps(x.shape[0], x.device)
        conds = self.conditions(prompt, cameras)
        if not torch.isfinite(x).all():
            # a non-finite render would poison the gradient and, through extra_losses, ε_φ: skip
            return self.skipped(x, t)
        with torch.no_grad():
            grad = self.weight(t, x) * self.direction(x.detach(), t, conds)
        if not torch.isfinite(grad).all():
            return self.skipped(x, t)
        out = self.as_loss(x, grad)
        out["t"] = t.float().mean()
        out.update(self.extra_losses(x.detach(), conds))
        return out

    def skipped(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """A skipped step, counted: a zero loss that still reaches x's graph (no NaN through it)."""
        self.skipped_steps += 1
        zero = (x.nan_to_num(0.0, 0.0, 0.0) * 0.0).sum()
        out = {f"loss_{term}": zero for term in self.loss_terms()}
        out.update(grad_norm=torch.tensor(float("nan")), t=t.float().mean(), skipped=torch.tensor(float(self.skipped_steps)))
        return out

    def as_loss(self, x: Tensor, grad: Tensor) -> dict[str, Tensor]:
        """The target trick: a loss whose gradient on x is ``grad`` (after clipping)."""
        if self.grad_clip is not None:
            grad = grad.clamp(-self.grad_clip, self.grad_clip)
        target = (x - grad).detach()
        loss = 0.5 * F.mse_loss(x, target, reduction="sum") / x.shape[0]
        return {f"loss_{self.name}": loss, "grad_norm": grad.norm().detach(), "skipped": torch.tensor(float(self.skipped_steps))}
