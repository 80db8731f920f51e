"""The text-to-3D system: renders random views, asks the guidance for a gradient, steps the optimizers.

It owns the parts (geometry, material, background, renderer, prior, prompt, guidance) and what one
step does; the training loop, logging and files live in ``systems/trainer.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threestudio_like.config import ConfigError, check_choice
from threestudio_like.data.cameras import Cameras
from threestudio_like.export import ExportConfig
from threestudio_like.prompts import Prompt, PromptConfig
from threestudio_like.registry import lookup, register
from threestudio_like.systems.convert import check_source_options, check_source_tables
from threestudio_like.utils.schedules import check_schedule, schedule_value
from threestudio_like.utils.checks import BadValue, check_at_least, check_between, check_length, schedule_points
from threestudio_like.utils.finite import all_finite

REGULARIZERS = ("sparsity", "opaque", "orient", "normal_consistency", "laplacian_smoothness")
MESH_REGULARIZERS = ("normal_consistency", "laplacian_smoothness")
# what the guidance sees per stage (threestudio's coarse → refine chain): coarse/texture/fine the
# rgb render; geometry the normal render, (n + 1)/2 on the background (ProlificDreamer's stage 2)
STAGES = ("coarse", "geometry", "texture", "fine")


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | adamw
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15

    def __post_init__(self) -> None:
        check_choice(self.name, ("adam", "adamw"), "optimizer.name")
        check_length(self, 2, "betas")
        check_between(self, 0.0, 0.999999, "betas")
        check_at_least(self, 0, "eps")


@dataclass
class QualityConfig:
    enabled: bool = True  # only meaningful with a prior that knows the ground truth (embedded)
    n_views: int = 8
    elevation: float = 20.0
    mesh_resolution: int = 128  # marching-cubes resolution of the mesh used for Chamfer
    n_surface_points: int = 20000
    asset_resolution: int = 64  # held-out views of the exported asset (the same for every stage)
    seed: int = 0  # of the surface sampling behind Chamfer (two identical runs report the same)

    def __post_init__(self) -> None:
        check_between(self, 1, 1000, "n_views")
        check_between(self, 1, 10_000_000, "n_surface_points")  # both point sets are held in memory
        check_between(self, 8, 2048, "mesh_resolution")
        check_between(self, -90.0, 90.0, "elevation")


@dataclass
class TextTo3DConfig:
    prompt_processor: PromptConfig = field(default_factory=PromptConfig)
    prior_type: str = "embedded"
    prior: Any = field(default_factory=dict)
    guidance_type: str = "sds"
    guidance: Any = field(default_factory=dict)
    geometry_type: str = "implicit-volume"
    geometry: Any = field(default_factory=dict)
    material_type: str = "no-material"
    material: Any = field(default_factory=dict)
    background_type: str = "solid-color"
    background: Any = field(default_factory=dict)
    renderer_type: str = "nerf-volume-renderer"
    renderer: Any = field(default_factory=dict)
    # lambda_<term>: weight (number or [start_step, v0, v1, end_step]) of each loss term;
    # guidance terms default to 1, regularisers (sparsity, opaque, orient) to 0
    loss: Dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    exporter: ExportConfig = field(default_factory=ExportConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    stage: str = "coarse"  # coarse | geometry | texture | fine (see STAGES)
    # a finished run (folder or its ckpts/last.ckpt) whose geometry this run's geometry is created
    # from (NewGeometry.create_from(old)); recorded in the run folder as convert_from.json
    geometry_convert_from: Optional[str] = None
    # per source geometry type, the density level create_from takes the surface at instead of the
    # source's own export level (e.g. {gaussian-splatting: 0.3}: a solid surface under the splats)
    geometry_convert_threshold: Dict[str, float] = field(default_factory=dict)
    # per source geometry type, options of system.geometry that apply only when converting from it
    # (e.g. {gaussian-splatting: {convert_closing_radius: 0.06}}: clean a splat model's level set only)
    geometry_convert_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self.stage, STAGES, "stage")
        check_source_tables(self.geometry_convert_threshold, self.geometry_convert_options)
        for key, value in self.loss.items():
            if not key.startswith("lambda_"):
                raise ValueError(f"loss.{key}: loss weights are named lambda_<term>, e.g. lambda_sparsity")
            check_schedule(value, f"loss.{key}")
            if not all(v >= 0 for v in schedule_points(value)):
                raise BadValue(f"loss.{key}", value, "loss weights must be >= 0")


def check_stage_references(cfg: TextTo3DConfig) -> None:
    """A prior with references of a kind (the embedded prior) must show what the stage renders:
    normal maps in the geometry stage, colours otherwise."""
    reference = lookup("prior", cfg.prior_type).reference_kind(cfg.prior)
    if reference is None:
        return
    wanted = "normal" if cfg.stage == "geometry" else "rgb"
    if reference != wanted:
        raise ConfigError(f"system.prior.reference={reference!r} does not match system.stage={cfg.stage!r}, "
                          f"whose guidance sees {wanted} renders; set system.prior.reference={wanted}")


def build(family: str, name: str, cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """An instance of the class registered as ``name`` in ``family``."""
    return lookup(family, name)(cfg, *args, **kwargs)


@register("system", "text-to-3d")
class TextTo3DSystem(nn.Module):
    """Every part of a run, and one training step."""

    Config = TextTo3DConfig
    converted_from: Optional[dict] = None  # the convert_from.json record of a refinement stage

    def __init__(self, cfg: TextTo3DConfig, sampler, device: torch.device) -> None:
        super().__init__()
        check_stage_references(cfg)
        check_source_options(cfg.geometry, cfg.geometry_convert_options)
        self.cfg, self.sampler, self.device = cfg, sampler, torch.device(device)
        self.geometry = build("geometry", cfg.geometry_type, cfg.geometry).to(self.device)
        self.material = build("material", cfg.material_type, cfg.material).to(self.device)
        self.background = build("background", cfg.background_type, cfg.background).to(self.device)
        self.renderer = build("renderer", cfg.renderer_type, cfg.renderer).to(self.device)
        prior = build("prior", cfg.prior_type, cfg.prior, device=self.device, sampler=sampler)
        object.__setattr__(self, "prior", prior)  # frozen: kept out of state_dict/checkpoints
        prior.prepare(cfg.prompt_processor.prompt)
        self.prompt = Prompt.from_config(cfg.prompt_processor)
        self.guidance = build("guidance", cfg.guidance_type, cfg.guidance, prior).to(self.device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.build_optimizers()
        self.converted_from: Optional[dict[str, Any]] = None  # set by systems/convert.py
        self.check_loss_names(set(self.guidance.loss_terms()) | set(REGULARIZERS))
        self.skipped_steps = 0  # steps whose loss or gradient was not finite (nothing was moved)

    # --- optimizers -----------------------------------------------------------------------
    def build_optimizers(self) -> None:
        """(Re)build the optimizers over the current parameters (after loading a checkpoint or
        converting the geometry too), and the densification state, which follows the parameters."""
        groups = list(self.geometry.parameter_groups()) + self.background.parameter_groups()
        cfg = self.cfg.optimizer
        kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        # the fused CPU kernel: one pass over each tensor instead of ~10 (same update to float rounding)
        fused = self.device.type == "cpu"
        self.optimizers = {"geometry": kind(groups, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)}
        if self.guidance.trains_a_network:
            self.optimizers["guidance"] = self.guidance.make_optimizer()
        self.densifier = self.geometry.densify_strategy()
        self.densify_state = self.densifier.initialize_state(self.geometry) if self.densifier is not None else None

    # --- one step ---------------------------------------------------------------------------
    def lambda_(self, term: str, step: int) -> float:
        default = 0.0 if term in REGULARIZERS else 1.0
        return float(schedule_value(self.cfg.loss.get(f"lambda_{term}", default), step))

    def update_step(self, step: int, max_steps: int) -> None:
        self.sampler.update_step(step)
        self.geometry.update_step(step, max_steps)
        self.renderer.update_step(step, max_steps, self.geometry)
        self.guidance.update_step(step, max_steps)

    def render(self, cameras: Cameras, shading: str = "albedo", training: bool = False, with_normal: bool = False) -> dict[str, Tensor]:
        return self.renderer.render(
            self.geometry, self.material, self.background, cameras.to(self.device),
            shading=shading, training=training, with_normal=with_normal,
        )

    def regularizers(self, out: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Terms that stop a NeRF from cheating: sparsity, opaque (binary opacity), orientation."""
        terms: dict[str, Tensor] = {}
        opacity = out["opacity"]
        if self.lambda_("sparsity", step) > 0:
            terms["loss_sparsity"] = (opacity**2 + 0.01).sqrt().mean()
        if self.lambda_("opaque", step) > 0:
            clamped = opacity.clamp(1e-3, 1.0 - 1e-3)
            terms["loss_opaque"] = F.binary_cross_entropy(clamped, clamped)
        if self.lambda_("orient", step) > 0:
            if "orient" not in out:
                raise ConfigError(f"loss.lambda_orient > 0 but renderer {self.cfg.renderer_type!r} gives no orientation term")
            terms["loss_orient"] = out["orient"].sum() / (opacity > 0).sum().clamp_min(1)
        terms.update(self.mesh_regularizers(out, step))
        return terms

    def mesh_regularizers(self, out: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Normal consistency and Laplacian smoothness of the rendered mesh (renders that carry one)."""
        wanted = [name for name in MESH_REGULARIZERS if self.lambda_(name, step) > 0]
        if not wanted:
            return {}
        if "mesh" not in out:
            raise ConfigError(f"loss.lambda_{wanted[0]} > 0 but renderer {self.cfg.renderer_type!r} renders no mesh; use mesh-rasterizer")
        from threestudio_like.geometry import mesh as mesh_terms

        return {f"loss_{name}": getattr(mesh_terms, name)(out["mesh"]) for name in wanted}

    def guidance_input(self, out: dict[str, Tensor], cameras: Cameras) -> Tensor:
        """The image [B,H,W,3] the guidance scores: the rgb render, or in the geometry stage the
        normal render on the background."""
        if self.cfg.stage != "geometry":
            return out["rgb"]
        from threestudio_like.utils.images import normal_image

        background = self.background(cameras.rays()[1], training=True)
        return normal_image(out["normal"], out["opacity"], background)

    def training_step(self, step: int, max_steps: int) -> dict[str, float]:
        """One optimisation step; returns the logged scalars."""
        self.update_step(step, max_steps)
        cameras = self.sampler.sample().to(self.device)
        shading = self.material.training_shading(step)
        with_normal = self.material.requires_normal(shading) or self.lambda_("orient", step) > 0 or self.cfg.stage == "geometry"
        out = self.render(cameras, shading=shading, training=True, with_normal=with_normal)
        terms = self.guidance(self.guidance_input(out, cameras), cameras, self.prompt)
        terms.update(self.regularizers(out, step))
        total = sum(self.lambda_(key[5:], step) * value for key, value in terms.items() if key.startswith("loss_"))
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        total.backward()
        logged = {key: float(value.detach()) for key, value in terms.items() if torch.is_tensor(value) and value.numel() == 1}
        logged["loss"] = float(total.detach())
        if self.step_is_finite(logged):
            self.after_backward(out, step)
            for optimizer in self.optimizers.values():
                optimizer.step()
        else:
            # nothing moves: no weights, no Adam moments or step counts, no densification statistics
            self.skipped_steps += 1
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
        logged["skipped"] = float(self.skipped_steps)
        return logged

    def after_backward(self, out: dict[str, Tensor], step: int) -> None:
        """Between backward and the optimizer step: the geometry's hook (learning-rate schedules) and
        its densification strategy, which may add and remove primitives."""
        self.geometry.after_backward(out, step, self.optimizers["geometry"])
        if self.densifier is not None:
            self.densifier.step_post_backward(self.geometry, self.optimizers["geometry"], self.densify_state, step, out)

    def step_is_finite(self, logged: dict[str, float]) -> bool:
        """Every loss (inf counts as non-finite), the guidance's gradient norm (NaN when it declined
        the step) and every parameter gradient are finite."""
        if not all(math.isfinite(v) for k, v in logged.items() if k == "loss" or k.startswith("loss_") or k == "grad_norm"):
            return False
        grads = [p.grad for opt in self.optimizers.values() for group in opt.param_groups for p in group["params"] if p.grad is not None]
        return all_finite(grads)

    def check_loss_names(self, produced: set[str]) -> None:
        """A lambda_<x> that names no loss term is a typo: say so at start-up."""
        for key in self.cfg.loss:
            if key[7:] not in produced:
                known = ", ".join(f"lambda_{name}" for name in sorted(produced))
                raise ConfigError(f"system.loss.{key} weighs no loss term of this run; known: {known}")

    # --- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "modules": {name: getattr(self, name).state_dict() for name in ("geometry", "background", "guidance", "renderer")},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
        }

    def load_state(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        for name, module_state in state["modules"].items():
            getattr(self, name).load_state_dict(module_state)
        self.build_optimizers()  # parameters may have been replaced (e.g. a Gaussian count change)
        if with_optimizers:
            for name, opt_state in state.get("optimizers", {}).items():
                if name in self.optimizers:
                    self.optimizers[name].load_state_dict(opt_state)
