"""The embedded prior: an exact diffusion model of a small procedural world, offline and known-answer.

The prompt is parsed into a scene (:mod:`threestudio_like.priors.scenes`); K reference views of it
are rendered (white background, one fixed world light; or, with ``reference: normal``, its world
normals as (n + 1)/2 on white, the picture a geometry refinement stage shows the guidance) and the
model is the exact denoiser of that image set under the DDPM forward process, in pixel space:

    x̂0(x_t) = Σ_i softmax_i(c_i − ‖x_t − √ᾱ_t x_i‖² / 2(1 − ᾱ_t)) x_i,   ε̂ = (x_t − √ᾱ_t x̂0) / √(1 − ᾱ_t)

where c_i = log w_i. A condition is a tensor [B, K_all] of non-negative weights w over this
scene's K references followed by those of a fixed library of other scenes (0 excludes a reference):
the prompt gives the library 0, the null prompt ("∅") gives every reference the same camera
weighting, so classifier-free guidance contrasts "this scene" with "any scene", as with Stable
Diffusion. Weights rather than log-weights, so that a linear mix of conditions (Perp-Neg's
interpolated view prompts) is the mixture of their data sets and never meets −inf·0. How the camera
enters is the setting ``camera_mode``:

- ``none``: every reference weighs the same (camera-blind, like a plain text prompt);
- ``view-prompt``: only the references in the camera's front/side/back/overhead bin (like
  threestudio's view-dependent prompts; the null condition is camera-blind, like a negative prompt
  without a view suffix);
- ``camera``: a Gaussian kernel on the elevation and wrapped azimuth differences,
  exp(−(Δelev² + Δazim²) / 2σ²), for the prompt and the null alike (like a camera-conditioned model).
  Azimuth difference rather than the angle between view directions, because near the pole the image
  still turns with azimuth even where the directions barely differ.

It memorises its references rather than generalising, and the guidance scale matters little with
it (its null set contains the target): it is for running and testing the tool without weights, and
its scene is the ground truth of the quality benchmark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from torch import Tensor

from threestudio_like.config import check_choice
from threestudio_like.data.cameras import Cameras, RandomCameraConfig, make_cameras, wrap_degrees
from threestudio_like.kernels import kernel_choice, use_kernels
from threestudio_like.kernels.posterior import posterior_mean
from threestudio_like.diffusion import alpha_bar_at, ddpm_alphas_cumprod, eps_from_x0
from threestudio_like.priors.base import DiffusionPrior
from threestudio_like.priors.pruning import MIN_ALPHA_BAR, ReferenceBasis, prune_log_weights, reference_basis
from threestudio_like.priors.reference_cache import REFERENCE_KINDS, ReferenceCache, reference_image  # noqa: F401
from threestudio_like.priors.scenes import Scene, parse_prompt
from threestudio_like.registry import register

CAMERA_MODES = ("none", "view-prompt", "camera")
DEFAULT_LIBRARY = (
    "a red ball", "a blue cube", "a green cylinder next to a yellow cone", "an orange torus",
    "a purple pyramid on a white box", "a house", "a mug",
)


@dataclass
class EmbeddedPriorConfig:
    camera_mode: str = "camera"  # none | view-prompt | camera (see the module docstring)
    camera_sigma_deg: float = 10.0  # σ of the camera kernel
    azimuth_step_deg: float = 10.0  # references every this many degrees around the full circle
    n_elevations: int = 6  # reference rows: centres of equal bins of the sampler's elevation range
    # other scenes whose references join this scene's in the null prompt's data set (a prompt equal
    # to the user's is left out)
    null_library: List[str] = field(default_factory=lambda: list(DEFAULT_LIBRARY))
    num_train_timesteps: int = 1000
    supersample: int = 2  # sub-pixel rays per axis on the references' edges
    chunk_size: int = 64  # rows of x_t per denoiser pass (bounds memory)
    # ε_φ of VSD/ESD: memory = exact denoiser of recent renders (training-free, measured better on the
    # CPU demo, docs/GUIDANCE.md); unet = a small camera-conditioned UNet trained from scratch
    variational: str = "memory"
    # what the references show: rgb (shaded colours) or normal ((n + 1)/2 world normals on white, what
    # a geometry refinement stage shows the guidance)
    reference: str = "rgb"
    # where rendered references are kept between runs (priors/reference_cache.py); "" renders them every run
    cache_dir: str = ".cache/embedded_references"
    # auto (the compiled CPU pass over the references and tracer of them, when the kernels build) | true | false (torch)
    cpu_kernel: Any = "auto"
    # the compiled path's pruning at small t (priors/pruning.py): directions of the references' basis, 0 = off
    prune_rank: int = 128

    def __post_init__(self) -> None:
        self.cpu_kernel = kernel_choice(self.cpu_kernel, "cpu_kernel")
        check_choice(self.camera_mode, CAMERA_MODES, "camera_mode")
        check_choice(self.reference, REFERENCE_KINDS, "reference")
        check_choice(self.variational, ("memory", "unet"), "variational")
        if self.camera_sigma_deg <= 0:
            raise ValueError(f"camera_sigma_deg={self.camera_sigma_deg} must be > 0")
        if not 0 < self.azimuth_step_deg <= 360:
            raise ValueError(f"azimuth_step_deg={self.azimuth_step_deg} must be in (0, 360]")
        if self.prune_rank < 0:
            raise ValueError(f"prune_rank={self.prune_rank} must be >= 0 (0 turns the pruning off)")
        for key in ("n_elevations", "num_train_timesteps", "supersample", "chunk_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be at least 1")
        for text in self.null_library:
            try:
                parse_prompt(text)
            except ValueError as error:
                raise ValueError(f"null_library entry {text!r}: {error}") from None


def camera_kernel(elevation: Tensor, azimuth: Tensor, ref_elevation: Tensor, ref_azimuth: Tensor, sigma_deg: float) -> Tensor:
    """Weights [B,K] = exp(−(Δelev² + wrap(Δazim)²) / 2σ²) between cameras [B] and references [K] (degrees)."""
    d_elev = elevation[:, None] - ref_elevation[None, :]
    d_azim = wrap_degrees(azimuth[:, None] - ref_azimuth[None, :])
    return torch.exp(-(d_elev**2 + d_azim**2) / (2.0 * sigma_deg**2))


def exact_x0(
    x_t: Tensor, alpha_bar: Tensor, weights: Tensor, refs: Tensor, refs_mean: Tensor,
    sq_norms: Optional[Tensor] = None, chunk: int = 64, cpu_kernel: Any = "auto",
    basis: Optional[ReferenceBasis] = None,
) -> Tensor:
    """The exact posterior mean E[x0 | x_t] of a weighted set of images.

    x_t [N,D]; alpha_bar [N]; weights [N,K] ≥ 0 (prior weight of each reference, 0 excludes it);
    refs [K,D] the images minus ``refs_mean`` [D] (centring keeps the float32 distances accurate:
    references share most pixels); ``sq_norms`` [K] their squared norms, if already known.
    Returns [N,D]: softmax over log w_i − ‖x_t − √ᾱ x_i‖²/2(1−ᾱ).

    Savings that leave the result as it is up to float rounding: rows with the same x_t and ᾱ (a
    prompt and its null condition) share one x·r product; references that no row weighs are never
    read; and the posterior mean leaves out the references whose posterior is below 2⁻²⁴/K of the
    row's maximum (together they add at most 2⁻²⁴ of the largest term, below float32 resolution).
    On the CPU (``cpu_kernel``: auto | true | false, as the other compiled paths) the references are
    streamed once (threestudio_like/kernels/posterior.py); the torch path reads them twice. With a
    ``basis`` of the references, the compiled path first drops per row the references that a lower
    bound on their distance shows below that cut (priors/pruning.py): most of them at small t
    (ᾱ ≥ 0.4; at larger t the bound keeps most of them and is not tried).
    """
    sums = weights.sum(dim=1)  # inf or NaN where a weight is (or where finite ones overflow)
    finite = bool(torch.isfinite(sums).all()) or bool(torch.isfinite(weights).all())
    if not (bool((weights >= 0).all()) and finite):  # w >= 0 is False for NaN and −∞
        raise ValueError("condition weights must be finite and non-negative")
    if (sums <= 0).any():
        raise ValueError("a condition row gives every reference weight 0")
    log_weights = weights.log().to(refs.dtype)  # 0 → −inf: softmax gives those references exactly 0
    sq_norms = (refs * refs).sum(dim=1) if sq_norms is None else sq_norms  # [K]
    cut = 2.0**-24 / refs.shape[0]
    compiled = refs.dtype == torch.float32 and use_kernels(cpu_kernel, x_t, refs)
    out = []
    for start in range(0, x_t.shape[0], chunk):
        sl = slice(start, start + chunk)
        a = alpha_bar[sl].to(refs.dtype)
        x = x_t[sl].to(refs.dtype) - a[:, None].sqrt() * refs_mean  # centred like the references
        first = _first_equal_row(x, a)  # [n]: the first row with the same x and ᾱ
        unique, row_of = torch.unique(first, return_inverse=True)
        if compiled:
            log_w = log_weights[sl]
            if basis is not None and float(a.min()) >= MIN_ALPHA_BAR:
                log_w = prune_log_weights(x[unique], row_of, a, log_w, refs, sq_norms, basis, math.log(cut))
            out.append(posterior_mean(x[unique], row_of, a, log_w, refs, sq_norms, cut) + refs_mean)
        else:
            out.append(_posterior_mean_torch(x[unique], row_of, a[:, None], log_weights[sl], refs, sq_norms, cut) + refs_mean)
    return torch.cat(out).to(x_t.dtype)


def _posterior_mean_torch(x: Tensor, row_of: Tensor, a: Tensor, log_w: Tensor, refs: Tensor, sq_norms: Tensor, cut: float) -> Tensor:
    """The torch path of :func:`exact_x0`'s sum: x [U,D] distinct rows, row_of [n], a [n,1], log_w [n,K] → [n,D]."""
    cols = _sparse_columns(torch.isfinite(log_w).any(dim=0))  # references some row weighs
    used = refs if cols is None else refs.index_select(0, cols)
    dots = (x @ used.T).index_select(0, row_of)  # [n,k]
    norms, log_w = (sq_norms, log_w) if cols is None else (sq_norms[cols], log_w[:, cols])
    # −‖x − √a r‖²/2(1−a) up to a per-row constant: (√a x·r − a‖r‖²/2)/(1−a)
    logits = (a.sqrt() * dots - 0.5 * a * norms[None, :]) / (1.0 - a)
    posterior = torch.softmax(logits + log_w, dim=1)
    keep = _sparse_columns((posterior >= cut * posterior.amax(dim=1, keepdim=True)).any(dim=0))
    if keep is not None:
        posterior, used = posterior[:, keep], used.index_select(0, keep)
    return posterior @ used


def _sparse_columns(mask: Tensor, max_fraction: float = 0.4) -> Optional[Tensor]:
    """The indices where ``mask`` [k] holds, or None when they are so many that gathering those
    rows of the references would cost more than reading them all."""
    cols = torch.nonzero(mask)[:, 0]
    return cols if len(cols) <= max_fraction * len(mask) else None


def _first_equal_row(x: Tensor, a: Tensor) -> Tensor:
    """x [n,D], a [n] → for each row the index of the first row with equal x and a [n] (long); a
    row holding a NaN equals no other. Only pairs whose first entries and ᾱ agree are compared in full."""
    n = x.shape[0]
    index = torch.arange(n, device=x.device)
    candidate = (x[:, None, 0] == x[None, :, 0]) & (a[:, None] == a[None, :]) & (index[None, :] < index[:, None])
    i, j = torch.nonzero(candidate, as_tuple=True)
    equal = (x[i] == x[j]).all(dim=1)
    return index.scatter_reduce(0, i[equal], j[equal], reduce="amin")


@register("prior", "embedded")
class EmbeddedPrior(DiffusionPrior):
    """Exact denoiser over rendered references of the prompt's procedural scene (see module doc)."""

    Config = EmbeddedPriorConfig
    knows_ground_truth = True

    @classmethod
    def reference_kind(cls, cfg: EmbeddedPriorConfig) -> str:
        return cfg.reference

    def __init__(self, cfg: EmbeddedPriorConfig, device: torch.device | str = "cpu", sampler=None) -> None:
        super().__init__(cfg, device, sampler)
        self.num_train_timesteps = cfg.num_train_timesteps
        self.register_buffer("alphas_cumprod", ddpm_alphas_cumprod(cfg.num_train_timesteps).to(self.device_))
        camera_cfg = sampler.cfg if sampler is not None else RandomCameraConfig()
        self.ref_elevation, self.ref_azimuth = reference_angles(camera_cfg.elevation_range, cfg.azimuth_step_deg, cfg.n_elevations)
        self.ref_distance = 0.5 * sum(camera_cfg.camera_distance_range)
        self.ref_fovy = 0.5 * sum(camera_cfg.fovy_range)
        # view bins of the references by threestudio's default thresholds (front/back 45°, overhead 60°)
        self.ref_labels = self.reference_cameras(8, 8).view_labels()
        self._scenes: dict[str, Scene] = {}
        self._renders: dict[tuple[str, int, int], Tensor] = {}  # (scene key, H, W) → [K,3,H,W] in [−1,1]
        self._sets: dict[tuple[str, int, int], tuple[Tensor, Tensor, Tensor]] = {}
        self._bases: dict[tuple[str, int, int], ReferenceBasis] = {}  # per reference set, made on first use
        self.text: Optional[str] = None  # the prompt whose scene the model is (set by prepare)
        self.reference_cache = ReferenceCache(cfg.cache_dir, cfg.cpu_kernel)

    # --- scenes and references ------------------------------------------------------------------
    def prepare(self, text: str) -> None:
        """Make the model that of ``text``'s scene (an unknown word fails here, before training)."""
        self.scene(text)
        self.text = text

    def prepared_text(self, text: Optional[str] = None) -> str:
        """The prepared prompt; ``text``, when given, must make the same scene."""
        if self.text is None:
            raise RuntimeError("EmbeddedPrior needs its prompt first: call prepare(text)")
        if text is not None and self.scene(text).key != self.scene(self.text).key:
            raise ValueError(f"the embedded prior was prepared for {self.text!r}, not {text!r}: call prepare({text!r})")
        return self.text

    def scene(self, text: str) -> Scene:
        """The ground-truth scene of ``text`` (parsed once)."""
        if text not in self._scenes:
            self._scenes[text] = parse_prompt(text)
        return self._scenes[text]

    def library(self, text: str) -> list[str]:
        """The null library for ``text``: the configured prompts, minus any making the same scene."""
        key = self.scene(text).key
        return [p for p in self.cfg.null_library if self.scene(p).key != key]

    @property
    def num_references(self) -> int:
        return len(self.ref_elevation)

    def reference_cameras(self, width: int, height: int) -> Cameras:
        """The K reference cameras at the given resolution."""
        K = self.num_references
        return make_cameras(self.ref_elevation, self.ref_azimuth, torch.full((K,), self.ref_distance),
                            torch.full((K,), self.ref_fovy), width, height)

    def references(self, text: str, width: int, height: int) -> tuple[Tensor, Cameras]:
        """This scene's reference images [K,H,W,3] in [0,1] and their cameras (rendered once, cached)."""
        cameras = self.reference_cameras(width, height)
        return (self._encoded_references(text, width, height).permute(0, 2, 3, 1) + 1.0) / 2.0, cameras

    def _encoded_references(self, text: str, width: int, height: int) -> Tensor:
        scene = self.scene(text)
        key = (scene.key, height, width)
        if key not in self._renders:
            rgb = self.reference_cache.images(scene, self.reference_cameras(width, height), self.cfg.supersample, self.cfg.reference)
            self._renders[key] = (2.0 * rgb - 1.0).permute(0, 3, 1, 2).contiguous().to(self.device_)
        return self._renders[key]

    def reference_set(self, text: str, width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
        """(centred references [K_all,3·H·W], their mean [3·H·W], squared norms [K_all]): this
        scene's references first, then the library's."""
        key = (self.scene(text).key, height, width)
        if key not in self._sets:
            texts = [text] + self.library(text)
            refs = torch.cat([self._encoded_references(t, width, height).flatten(1) for t in texts])
            mean = refs.mean(dim=0)
            refs = refs - mean
            self._sets[key] = (refs, mean, (refs * refs).sum(dim=1))
        return self._sets[key]

    # --- image space -------------------------------------------------------------------------------
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B,3,H,W] in [0,1] → pixels in [−1,1] (keeps autograd)."""
        return 2.0 * rgb - 1.0

    def decode_latents(self, latents: Tensor) -> Tensor:
        """[B,3,H,W] in [−1,1] → rgb in [0,1]."""
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)

    # --- conditions --------------------------------------------------------------------------------
    def _scene_weights(self, cameras: Cameras, views: Optional[list[str]]) -> Tensor:
        """[B,K] weights of this scene's references for ``cameras`` under ``camera_mode``."""
        B, K = len(cameras), self.num_references
        mode = self.cfg.camera_mode
        if mode == "camera":
            return camera_kernel(cameras.elevation.cpu().float(), cameras.azimuth.cpu().float(),
                                 self.ref_elevation, self.ref_azimuth, self.cfg.camera_sigma_deg)
        weights = torch.ones(B, K)
        if mode == "view-prompt" and views is not None:
            for b, view in enumerate(views):
                match = torch.tensor([label == view for label in self.ref_labels])
                if match.any():  # a bin with no reference (narrow elevation range) keeps them all
                    weights[b, ~match] = 0.0
        return weights

    def condition(self, text: str, cameras: Cameras, views: Optional[list[str]] = None) -> Tensor:
        """[B,K_all] weights: this scene's references by camera mode, the library's 0 (``text``: the prepared prompt)."""
        n_library = len(self.library(self.prepared_text(text))) * self.num_references
        scene = self._scene_weights(cameras, views)
        library = torch.zeros(len(cameras), n_library)
        return torch.cat([scene, library], dim=1).to(self.device_)

    def null_condition(self, text: str, cameras: Cameras) -> Tensor:
        """[B,K_all] weights of the ∅ data set: every reference (active scene and library) with
        the same camera weighting. ``text`` (the negative prompt) is not used: the null set is fixed."""
        n_scenes = 1 + len(self.library(self.prepared_text()))
        return self._scene_weights(cameras, None).repeat(1, n_scenes).to(self.device_)

    # --- the model ---------------------------------------------------------------------------------
    def predict_x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Exact x̂0 [N,3,H,W] of the prepared prompt's reference set; x_t [N,3,H,W], t [N], cond [N,K_all]."""
        N, C, H, W = x_t.shape
        refs, mean, sq_norms = (v.to(x_t.device) for v in self.reference_set(self.prepared_text(), W, H))
        if C != 3 or cond.shape != (N, refs.shape[0]):
            raise ValueError(f"predict_noise got x_t {tuple(x_t.shape)} and cond {tuple(cond.shape)}; expected [N,3,H,W] and [N,{refs.shape[0]}]")
        alpha_bar = self.alphas_cumprod.to(x_t.device)[t]
        x0 = exact_x0(x_t.flatten(1), alpha_bar, cond.to(x_t.device), refs, mean, sq_norms, self.cfg.chunk_size,
                      self.cfg.cpu_kernel, self._pruning_basis(refs, W, H))
        return x0.view(N, C, H, W)

    def _pruning_basis(self, refs: Tensor, width: int, height: int) -> Optional[ReferenceBasis]:
        """The reference set's basis for the compiled path's pruning (None: off, or not on that path)."""
        if self.cfg.prune_rank == 0 or refs.dtype != torch.float32 or not use_kernels(self.cfg.cpu_kernel, refs):
            return None
        key = (self.scene(self.prepared_text()).key, height, width)
        if key not in self._bases:
            self._bases[key] = reference_basis(refs, self.cfg.prune_rank)
        return self._bases[key]

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """ε̂ = (x_t − √ᾱ_t x̂0) / √(1 − ᾱ_t): x_t [N,3,H,W], t [N], cond [N,K_all] → [N,3,H,W]."""
        return eps_from_x0(x_t, self.predict_x0(x_t, t, cond), alpha_bar_at(self.alphas_cumprod, t, x_t))

    def variational_copy(self, rank: int) -> torch.nn.Module:
        """ε_φ for VSD/ESD (``rank`` is unused: there is no pretrained UNet to adapt)."""
        from threestudio_like.priors.variational import CameraUNet, RenderMemory

        if self.cfg.variational == "unet":
            return CameraUNet(channels=3).to(self.device_)
        return RenderMemory(capacity=64, camera_sigma_deg=self.cfg.camera_sigma_deg, alphas_cumprod=self.alphas_cumprod).to(self.device_)


def reference_angles(elevation_range: List[float], azimuth_step: float, n_elevations: int) -> tuple[Tensor, Tensor]:
    """(elevation [K], azimuth [K]) in degrees: rows at the centres of ``n_elevations`` equal bins of
    ``elevation_range`` (never the degenerate pole), each a full circle of azimuths every ``azimuth_step``."""
    low, high = float(elevation_range[0]), float(elevation_range[1])
    rows = 1 if high - low < 1e-6 else n_elevations
    elevations = low + (torch.arange(rows, dtype=torch.float32) + 0.5) * (high - low) / rows
    azimuths = wrap_degrees(torch.arange(0.0, 360.0 - 1e-6, azimuth_step))
    return elevations.repeat_interleave(len(azimuths)), azimuths.repeat(rows)
