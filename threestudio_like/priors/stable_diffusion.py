"""Stable Diffusion (1.x / 2.x, any diffusers checkpoint) as a DiffusionPrior.

Loads the UNet, VAE, CLIP text encoder + tokenizer and the DDPM schedule of a diffusers checkpoint
(hub id or local folder) with ``from_pretrained(subfolder=...)``, safetensors only. On CUDA the weights
are float16 (or bfloat16), attention runs through PyTorch SDPA, tensors are channels_last, and the
parts not needed every step (text encoder, VAE decoder) live on the CPU or are freed.
"""
from __future__ import annotations

import copy
import gc
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threestudio_like.config import check_choice
from threestudio_like.data.cameras import Cameras
from threestudio_like.diffusion import alpha_bar_at, eps_from_v
from threestudio_like.priors.base import DiffusionPrior
from threestudio_like.prompts import VIEW_SUFFIXES, EmbeddingCache, view_suffixed
from threestudio_like.registry import register

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PLACEMENTS = ("offload", "device", "free")
PREDICTION_TYPES = ("epsilon", "v_prediction")

# Linear estimate of the SD 1.x/2.x VAE's decoder (both use the same KL-f8 latent space):
# rgb in [−1,1] ≈ Σ_c latent_c · row_c, for latents as the UNet sees them (already × scaling_factor).
# Community-measured on SD 1.4 and used for latent previews (Latent-NeRF uses it too).
LATENT_RGB_FACTORS = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]


class MissingWeightsError(ValueError):
    """The checkpoint could not be loaded; the message is one line saying what was looked for."""


@dataclass
class StableDiffusionConfig:
    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
    revision: Optional[str] = None
    local_files_only: bool = False  # never contact the hub: use the local folder / hub cache only
    dtype: str = "float16"  # weights on CUDA: float16 | bfloat16 | float32 (always float32 on the CPU)
    # Latent-NeRF's cheap path: resize the render to the latent size and use it as the latents.
    # A 3-channel render goes through the pseudo-inverse of LATENT_RGB_FACTORS (the latent direction
    # with no colour stays 0); a 4-channel render is taken as the latents as is (threestudio).
    rgb_as_latents: bool = False
    vae_resolution: int = 512  # renders are resized (bilinear) to this before the VAE encoder
    channels_last: bool = True  # CUDA only
    compile_unet: bool = False  # torch.compile the UNet (slow first steps, faster after)
    # where the text encoder lives between encodings; it is loaded only on an embedding-cache miss.
    # offload: CPU, moved to the device to encode; device: stays there; free: deleted after encoding
    text_encoder_placement: str = "offload"
    vae_decoder_placement: str = "offload"  # offload | device | free (then decode_latents is unavailable)
    cache_dir: str = ".cache/text_embeddings"
    # the VSD/ESD LoRA copy shares the prior's UNet (adapters off for the prior pass) or deep-copies it
    share_variational_unet: bool = True

    def __post_init__(self) -> None:
        check_choice(self.dtype, tuple(DTYPES), "dtype")
        check_choice(self.text_encoder_placement, PLACEMENTS, "text_encoder_placement")
        check_choice(self.vae_decoder_placement, PLACEMENTS, "vae_decoder_placement")
        if self.vae_resolution < 8 or self.vae_resolution % 8:
            raise ValueError(f"vae_resolution={self.vae_resolution} must be a positive multiple of 8, e.g. 512")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _looks_local(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)


def _missing(name: str, what: str, reason: str) -> MissingWeightsError:
    reason = " ".join(reason.split())[:240]
    return MissingWeightsError(
        f"Stable Diffusion weights not found: could not load {what} of {name!r} ({reason}); the machine may be "
        "offline, the id or folder may be wrong, or the model may need a Hugging Face login; "
        "system.prior_type=embedded runs without any weights"
    )


def load_part(cls, cfg: StableDiffusionConfig, subfolder: str, **kwargs):
    """``cls.from_pretrained(name, subfolder=...)`` with one-line errors for missing weights."""
    name = cfg.pretrained_model_name_or_path
    if _looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        raise _missing(name, "the model folder", "no such folder")
    try:
        with warnings.catch_warnings():
            # diffusers still passes an argument huggingface_hub deprecated: not the user's concern
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return cls.from_pretrained(
                os.path.expanduser(name) if _looks_local(name) else name, subfolder=subfolder,
                revision=cfg.revision, local_files_only=cfg.local_files_only, **kwargs,
            )
    except _load_errors() as error:
        raise _missing(name, subfolder, str(error) or type(error).__name__) from None


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the weights are not there": hub/network errors are mostly OSErrors, bad ids
    ValueErrors, a missing file in a repository EntryNotFoundError, a dropped connection httpx's."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    try:
        from huggingface_hub.errors import EntryNotFoundError

        errors.append(EntryNotFoundError)
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def load_components(cfg: StableDiffusionConfig, dtype: torch.dtype) -> SimpleNamespace:
    """The frozen parts of a checkpoint (the text encoder is loaded later, on a cache miss)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    # the small parts first, so that a wrong id fails before gigabytes are read
    scheduler = load_part(DDPMScheduler, cfg, "scheduler")
    tokenizer = load_part(CLIPTokenizer, cfg, "tokenizer")
    unet = load_part(UNet2DConditionModel, cfg, "unet", torch_dtype=dtype, use_safetensors=True)
    vae = load_part(AutoencoderKL, cfg, "vae", torch_dtype=dtype, use_safetensors=True)
    return SimpleNamespace(unet=unet, vae=vae, tokenizer=tokenizer, scheduler=scheduler, text_encoder=None)


def load_text_encoder(cfg: StableDiffusionConfig, dtype: torch.dtype) -> nn.Module:
    from transformers import CLIPTextModel

    encoder = load_part(CLIPTextModel, cfg, "text_encoder", dtype=dtype, use_safetensors=True)
    return encoder.requires_grad_(False).eval()


def _as_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    return model if next(model.parameters()).dtype == dtype else model.to(dtype=dtype)


def rgb_to_latents_linear(rgb: Tensor) -> Tensor:
    """[B,3,h,w] in [0,1] → [B,4,h,w] latents whose linear RGB estimate is the render (min-norm)."""
    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32, device=rgb.device)  # [4,3]
    to_latent = torch.linalg.pinv(factors)  # [3,4]
    return torch.einsum("bchw,cl->blhw", rgb.float() * 2.0 - 1.0, to_latent)


# --------------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------------
@register("prior", "stable-diffusion")
class StableDiffusionPrior(DiffusionPrior):
    """Stable Diffusion seen through the DiffusionPrior contract; ``predict_noise`` always returns ε.

    Conditions are CLIP text embeddings [B,L,D] (float32), cached on disk per (model, prompt).
    """

    Config = StableDiffusionConfig

    def __init__(self, cfg: StableDiffusionConfig, device: torch.device | str = "cpu", sampler=None) -> None:
        super().__init__(cfg, device, sampler)
        self._setup(load_components(cfg, self._weight_dtype()))

    @classmethod
    def from_components(cls, cfg: StableDiffusionConfig, device, unet, vae, scheduler, tokenizer=None, text_encoder=None):
        """A prior around already-built parts (benchmarks with random weights); no loading."""
        prior = cls.__new__(cls)
        DiffusionPrior.__init__(prior, cfg, device)
        parts = SimpleNamespace(unet=unet, vae=vae, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder)
        prior._setup(parts, text_encoder_given=text_encoder is not None)
        return prior

    def _weight_dtype(self) -> torch.dtype:
        # half precision on the CPU is slow and partly unsupported
        return DTYPES[self.cfg.dtype] if self.device_.type == "cuda" else torch.float32

    def _setup(self, parts: SimpleNamespace, text_encoder_given: bool = False) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        cfg, device = self.cfg, self.device_
        self.dtype = self._weight_dtype()
        self.on_cuda = device.type == "cuda"
        # (.to(dtype) only when needed: diffusers warns on every dtype cast of a loaded model)
        self.unet = _as_dtype(parts.unet, self.dtype).to(device).requires_grad_(False).eval()
        self.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA (flash / memory-efficient kernels)
        self.vae = _as_dtype(parts.vae, self.dtype).requires_grad_(False).eval()
        if self.on_cuda and cfg.channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        self._place_vae()
        self.tokenizer = parts.tokenizer
        self._text_encoder_given = text_encoder_given
        object.__setattr__(self, "text_encoder", parts.text_encoder)
        sched = parts.scheduler.config
        check_choice(sched.prediction_type, PREDICTION_TYPES, "scheduler prediction_type")
        self.prediction_type = sched.prediction_type
        self.num_train_timesteps = int(sched.num_train_timesteps)
        self.register_buffer("alphas_cumprod", parts.scheduler.alphas_cumprod.float().to(device), persistent=False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_resolution = cfg.vae_resolution // self.vae_scale_factor
        name = cfg.pretrained_model_name_or_path
        self.model_key = f"{os.path.abspath(os.path.expanduser(name)) if _looks_local(name) else name}@{cfg.revision or 'main'}"
        self.cache = EmbeddingCache(cfg.cache_dir)
        self._device_embeddings: dict[str, Tensor] = {}
        self._variational_made = False
        forward = torch.compile(self.unet) if cfg.compile_unet else self.unet
        object.__setattr__(self, "_unet_forward", forward)

    def _place_vae(self) -> None:
        """Encoder on the device (unless rgb_as_latents); decoder where its placement says."""
        vae, cpu = self.vae, torch.device("cpu")
        encoder_device = cpu if self.cfg.rgb_as_latents else self.device_
        decoder_device = self.device_ if self.cfg.vae_decoder_placement == "device" else cpu
        for module in (vae.encoder, vae.quant_conv):
            if module is not None:
                module.to(encoder_device)
        if self.cfg.vae_decoder_placement == "free":
            vae.decoder, vae.post_quant_conv = None, None
        else:
            for module in (vae.decoder, vae.post_quant_conv):
                if module is not None:
                    module.to(decoder_device)

    # --- image space <-> latents ---------------------------------------------------------------
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B,3,H,W] in [0,1] → latents [B,4,h,w] float32, with autograd through the VAE encoder."""
        if self.cfg.rgb_as_latents:
            size = (self.latent_resolution, self.latent_resolution)
            small = F.interpolate(rgb.float(), size, mode="bilinear", align_corners=False)
            return small if small.shape[1] == 4 else rgb_to_latents_linear(small)
        size = (self.cfg.vae_resolution, self.cfg.vae_resolution)
        x = F.interpolate(rgb.float(), size, mode="bilinear", align_corners=False) * 2.0 - 1.0
        x = x.to(self.dtype)
        if self.on_cuda and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        latents = self.vae.encode(x).latent_dist.sample()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """latents [B,4,h,w] → rgb [B,3,8h,8w] in [0,1] (visualisation; the decoder visits the device)."""
        vae = self.vae
        if vae.decoder is None:
            raise ValueError("decode_latents needs the VAE decoder, but system.prior.vae_decoder_placement=free; use offload")
        with self._on_device(vae.decoder, vae.post_quant_conv, keep=self.cfg.vae_decoder_placement == "device"):
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            z = (latents.to(self.device_) / vae.config.scaling_factor + shift).to(self.dtype)
            image = vae.decode(z).sample
        return (image.float() * 0.5 + 0.5).clamp(0.0, 1.0)

    @contextmanager
    def _on_device(self, *modules: Optional[nn.Module], keep: bool) -> Iterator[None]:
        """Move ``modules`` to the device for the block; back to the CPU afterwards unless ``keep``."""
        for module in modules:
            if module is not None:
                module.to(self.device_)
        try:
            yield
        finally:
            if not keep:
                for module in modules:
                    if module is not None:
                        module.to("cpu")

    # --- text ------------------------------------------------------------------------------------
    def _encode_texts(self, texts: list[str]) -> Tensor:
        """[N,L,D] CLIP embeddings (last hidden state, as the diffusers pipelines use) on the CPU."""
        if self.tokenizer is None:
            raise ValueError("this Stable Diffusion prior was built without a tokenizer and cannot encode text")
        if self.text_encoder is None:
            object.__setattr__(self, "text_encoder", load_text_encoder(self.cfg, self.dtype))
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        placement = self.cfg.text_encoder_placement
        with torch.no_grad(), self._on_device(self.text_encoder, keep=placement == "device"):
            embeddings = self.text_encoder(tokens.input_ids.to(self.device_))[0].float().cpu()
        if placement == "free" and not self._text_encoder_given:
            object.__setattr__(self, "text_encoder", None)
            gc.collect()
        return embeddings

    def _ensure_embeddings(self, texts: list[str]) -> dict[str, Tensor]:
        """{text: [L,D] float32 on the device} through the memory and disk caches.

        All of ``texts`` are encoded in one batch on the first cache miss, so the text encoder is
        loaded (and, with placement "free", released) once per call at most.
        """
        batch: dict[str, Tensor] = {}

        def compute(text: str) -> Tensor:
            if not batch:
                batch.update(zip(texts, self._encode_texts(texts)))
            return batch[text]

        for text in texts:
            if text not in self._device_embeddings:
                value = self.cache.get(self.model_key, text, compute)
                self._device_embeddings[text] = value.to(self.device_, torch.float32)
        return self._device_embeddings

    def embeddings(self, texts: list[str]) -> Tensor:
        """[N,L,D] float32 embeddings of ``texts`` on the device."""
        table = self._ensure_embeddings(texts)
        return torch.stack([table[text] for text in texts])

    def condition(self, text: str, cameras: Cameras, views: Optional[list[str]] = None) -> Tensor:
        """[B,L,D]: the prompt's embedding, or with views, that of "text, <view> view" per camera."""
        batch = len(cameras)
        # the plain and every view-suffixed prompt are wanted sooner or later: encode them together
        table = self._ensure_embeddings([text] + [view_suffixed(text, view) for view in VIEW_SUFFIXES])
        if views is None:
            return table[text].unsqueeze(0).expand(batch, -1, -1)
        if len(views) != batch:
            raise ValueError(f"views has {len(views)} labels for {batch} cameras; give one per camera")
        unknown = sorted(set(views) - set(VIEW_SUFFIXES))
        if unknown:
            raise ValueError(f"unknown view label(s) {unknown}; accepted: {', '.join(VIEW_SUFFIXES)}")
        return torch.stack([table[view_suffixed(text, view)] for view in views])

    def null_condition(self, text: str, cameras: Cameras) -> Tensor:
        """[B,L,D] embedding of the negative prompt ("" by default)."""
        return self._ensure_embeddings([text])[text].unsqueeze(0).expand(len(cameras), -1, -1)

    # --- the model -------------------------------------------------------------------------------
    def unet_prediction(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The UNet's raw output (of ``prediction_type``) [N,C,h,w] in float32."""
        sample = x_t.to(self.dtype)
        if self.on_cuda and self.cfg.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        t = t.to(self.device_)
        return self._unet_forward(sample, t, encoder_hidden_states=cond.to(self.dtype)).sample.float()

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """ε̂(x_t; cond, t) [N,C,h,w] float32; for v-prediction ε = √ᾱ v + √(1−ᾱ) x_t."""
        out = self.unet_prediction(x_t, t, cond)
        if self.prediction_type == "epsilon":
            return out
        return eps_from_v(out, x_t.float(), alpha_bar_at(self.alphas_cumprod, t, out))

    def variational_copy(self, rank: int) -> nn.Module:
        """ε_φ for VSD/ESD: LoRA (rank ``rank``) + camera embedding on the UNet (see LoRAVariationalUNet)."""
        from threestudio_like.priors.lora import LoRAVariationalUNet

        shared = self.cfg.share_variational_unet
        if shared and self._variational_made:
            raise ValueError("the shared UNet already carries a variational copy; set system.prior.share_variational_unet=false for more")
        self._variational_made = True
        if shared:
            return LoRAVariationalUNet(self.unet, rank, self.prediction_type, shared=True, forward_fn=self._unet_forward)
        unet = copy.deepcopy(self.unet)
        variational = LoRAVariationalUNet(unet, rank, self.prediction_type, shared=False)
        if self.cfg.compile_unet:
            object.__setattr__(variational, "forward_fn", torch.compile(unet))
        return variational

