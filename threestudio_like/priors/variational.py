"""Variational score models ε_φ(x_t; y, t, c) for VSD/ESD when the prior has no UNet to put LoRA on.

Both are :class:`~threestudio_like.priors.base.VariationalScore` models, as Stable Diffusion's LoRA
copy is; they predict ε. ``cond`` is accepted and ignored: both model the renders of one prompt.

- :class:`CameraUNet` — a small diffusers ``UNet2DConditionModel`` trained from scratch, the camera
  entering through a Linear–SiLU–Linear class embedding added to the time embedding (as ProlificDreamer).
- :class:`RenderMemory` — training-free: the exact denoiser of a buffer of recent detached renders,
  each weighted by a Gaussian kernel on the elevation and azimuth differences between its camera and
  the query camera (uniform for "no camera"). It learns by ``observe(x0, camera)``, which VSD calls with every step's renders.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from threestudio_like.diffusion import ddpm_alphas_cumprod, eps_from_x0
from threestudio_like.priors.base import VariationalScore

CAMERA_DIM = 16


def camera_or_zero(camera: Optional[Tensor], like: Tensor) -> Tensor:
    """[B,16] camera condition; None → zeros (the "no camera" condition)."""
    if camera is None:
        return like.new_zeros(like.shape[0], CAMERA_DIM)
    return camera.to(device=like.device, dtype=like.dtype)


class CameraUNet(VariationalScore):
    """ε_φ as a small camera-conditioned UNet (pixel space), trained from scratch.

    Two resolution levels of plain ResNet blocks (no cross-attention: the prompt is fixed for a run),
    a self-attention mid block, and the camera's 16 numbers projected into the time embedding.
    """

    def __init__(
        self, channels: int = 3, sample_size: int = 32, block_out_channels: Sequence[int] = (32, 64),
        layers_per_block: int = 1, norm_num_groups: int = 8,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        levels = len(block_out_channels)
        self.context_dim = 8  # the model has no cross-attention; diffusers still wants a context tensor
        self.unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=channels,
            out_channels=channels,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            mid_block_type="UNetMidBlock2D",
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            cross_attention_dim=self.context_dim,
            attention_head_dim=8,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=CAMERA_DIM,
        )

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None, camera: Optional[Tensor] = None) -> Tensor:
        """x_t [B,C,h,w], t [B] → ε̂ [B,C,h,w]."""
        context = x_t.new_zeros(x_t.shape[0], 1, self.context_dim)
        return self.unet(x_t, t, encoder_hidden_states=context, class_labels=camera_or_zero(camera, x_t)).sample

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def camera_angles(camera: Tensor) -> tuple[Tensor, Tensor]:
    """(elevation [B], azimuth [B]) in degrees of the camera centres of flattened c2w matrices [B,16]
    (z-up world, azimuth 0 on +x)."""
    position = camera.view(-1, 4, 4)[:, :3, 3]
    radius = position.norm(dim=-1).clamp_min(1e-8)
    elevation = torch.rad2deg(torch.asin((position[:, 2] / radius).clamp(-1.0, 1.0)))
    azimuth = torch.rad2deg(torch.atan2(position[:, 1], position[:, 0]))
    return elevation, azimuth


class RenderMemory(VariationalScore):
    """ε_φ without training: the exact denoiser of the last ``capacity`` renders.

    x̂0(x_t; c) = Σ_i softmax_i(−‖x_t − √ᾱ_t x_i‖² / 2(1−ᾱ_t) + log k(c, c_i)) x_i with
    k = exp(−(Δelevation² + Δazimuth²) / 2σ²) (the embedded prior's camera kernel, azimuth wrapped);
    k = 1 for "no camera".
    The buffers are part of the state_dict, so a resumed run continues with the same memory.
    """

    def __init__(self, capacity: int = 64, camera_sigma_deg: float = 10.0, alphas_cumprod: Optional[Tensor] = None) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be at least 1")
        self.capacity = capacity
        self.camera_sigma_deg = camera_sigma_deg
        schedule = ddpm_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.float().cpu()
        self.register_buffer("alphas_cumprod", schedule, persistent=False)
        self.register_buffer("images", torch.zeros(0))
        self.register_buffer("cameras", torch.zeros(0, CAMERA_DIM))

    def __len__(self) -> int:
        return self.images.shape[0]

    @torch.no_grad()
    def observe(self, x0: Tensor, camera: Optional[Tensor]) -> None:
        """Remember renders x0 [B,C,h,w] seen by ``camera`` [B,16]; the oldest are forgotten."""
        x0 = x0.detach().float()
        camera = camera_or_zero(camera, x0)
        if len(self) and self.images.shape[1:] != x0.shape[1:]:
            # the render resolution changed: older renders no longer describe the current model
            self.images, self.cameras = self.images[:0], self.cameras[:0]
        if len(self) == 0:
            self.images = x0.new_zeros(0, *x0.shape[1:])
            self.cameras = camera.new_zeros(0, CAMERA_DIM)
        self.images = torch.cat([self.images.to(x0.device), x0])[-self.capacity :]
        self.cameras = torch.cat([self.cameras.to(x0.device), camera])[-self.capacity :]

    def log_camera_weights(self, camera: Tensor) -> Tensor:
        """[B,N] log kernel weights of the remembered cameras for query cameras [B,16]."""
        elevation, azimuth = camera_angles(camera)
        known_elevation, known_azimuth = camera_angles(self.cameras.to(camera))
        d_elevation = elevation[:, None] - known_elevation[None, :]
        d_azimuth = torch.remainder(azimuth[:, None] - known_azimuth[None, :] + 180.0, 360.0) - 180.0
        log_k = -(d_elevation**2 + d_azimuth**2) / (2.0 * self.camera_sigma_deg**2)
        no_camera = camera.abs().sum(-1, keepdim=True) == 0
        return torch.where(no_camera, torch.zeros_like(log_k), log_k)

    @torch.no_grad()
    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None, camera: Optional[Tensor] = None) -> Tensor:
        """x_t [B,C,h,w], t [B] → ε̂ [B,C,h,w]; zeros while the memory is empty."""
        if len(self) == 0:
            return torch.zeros_like(x_t)
        a = self.alphas_cumprod.to(x_t.device)[t].view(-1, 1).float()  # [B,1]
        images = self.images.to(x_t.device).flatten(1)  # [N,D]
        mean = images.mean(dim=0)
        centred = images - mean  # renders share most pixels: centring keeps float32 distances accurate
        flat = x_t.float().flatten(1)  # [B,D]
        x = flat - a.sqrt() * mean
        # −‖x_t − √ᾱ x_i‖² / 2(1−ᾱ) up to a per-row constant, without materialising [B,N,D]
        logits = (a.sqrt() * (x @ centred.T) - 0.5 * a * (centred**2).sum(-1)[None]) / (1.0 - a)
        logits = logits + self.log_camera_weights(camera_or_zero(camera, x_t.float()))
        x0_hat = torch.softmax(logits, dim=-1) @ centred + mean
        eps = eps_from_x0(flat, x0_hat, a)
        return eps.view_as(x_t).to(x_t.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the memory's size is data, not architecture: adopt the saved shapes before the copy
        for name in ("images", "cameras"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
