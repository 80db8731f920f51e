"""The variational score model ε_φ of VSD/ESD for Stable Diffusion: LoRA adapters on the UNet.

ProlificDreamer models the distribution of the current renders with a low-rank adaptation of the
prior's own UNet, conditioned on the camera through an extra embedding added to the time embedding.
The adapters are peft's; the camera enters through the UNet's ``class_labels`` path.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from threestudio_like.priors.base import VariationalScore

CAMERA_DIM = 16  # a flattened 4×4 camera-to-world matrix
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(unet: nn.Module, rank: int, adapter_name: str) -> list[nn.Module]:
    """Add rank-``rank`` LoRA adapters to the attention projections of ``unet``; return the adapted layers.

    peft's "gaussian" init draws A ~ N(0, 1/r) and sets B = 0, so the adapted UNet starts equal to the
    base one. The adapter weights are kept in float32 even when the UNet is float16/bfloat16: their
    small updates would round away in half precision.
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    if rank < 1:
        raise ValueError(f"LoRA rank={rank} must be at least 1")
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    unet.add_adapter(config, adapter_name=adapter_name)
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def set_lora_enabled(layers: list[nn.Module], enabled: bool) -> None:
    """Switch the adapters of ``layers`` on or off without touching ``requires_grad``.

    peft's public ``disable_adapters()`` also sets ``requires_grad=False`` on the adapter weights,
    which would silently drop their gradients when the prior's pass (adapters off) runs between the
    variational forward and the backward of one training step; so only the flag is flipped here.
    """
    for layer in layers:
        layer._disable_adapters = not enabled


def camera_mlp(out_dim: int) -> nn.Sequential:
    """Linear–SiLU–Linear from the 16 camera numbers to the UNet's time-embedding width.

    The last layer starts at zero (threestudio initialises it randomly), so the variational copy
    starts exactly equal to the prior for every camera; its gradient is non-zero from the first step.
    """
    mlp = nn.Sequential(nn.Linear(CAMERA_DIM, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


class LoRAVariationalUNet(VariationalScore):
    """ε_φ(x_t; y, t, c): the Stable Diffusion UNet with LoRA adapters and a camera embedding.

    The :class:`VariationalScore` interface; forward returns the raw prediction of the UNet's
    ``prediction_type`` in float32; the trainable parameters are the LoRA and camera-MLP ones (float32).
    The UNet itself is held as a plain attribute, so this module's state_dict holds only what trains
    (the LoRA weights under ``lora.*`` and ``camera_mlp.*``), never the frozen base weights.
    With ``shared=True`` the UNet is the prior's own: the adapters and the camera embedding are
    switched on only for the duration of this module's forward, and the prior's passes see the base
    model.
    """

    def __init__(
        self, unet: nn.Module, rank: int, prediction_type: str, shared: bool,
        adapter_name: str = "variational", forward_fn: Optional[Callable] = None,
    ) -> None:
        super().__init__()
        # plain attributes, not submodules: the frozen UNet stays out of this module's checkpoints
        object.__setattr__(self, "unet", unet)
        object.__setattr__(self, "forward_fn", forward_fn or unet)
        self.prediction_type = prediction_type
        self.shared = shared
        param = next(unet.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.layers = add_lora(unet, rank, adapter_name)
        # the adapter weights live inside the UNet; registering the same Parameter objects here makes
        # them this module's parameters and state (ParameterDict keys may not contain dots)
        self.lora = nn.ParameterDict(
            {name.replace(".", "-"): p for name, p in unet.named_parameters() if "lora_" in name}
        )
        self.camera_mlp = camera_mlp(unet.time_embedding.linear_2.out_features).to(self.device)
        if shared:
            set_lora_enabled(self.layers, False)
        else:
            unet.class_embedding = self.camera_mlp

    @contextmanager
    def _active(self) -> Iterator[None]:
        """Adapters on and camera embedding installed (a no-op for a private copy)."""
        if not self.shared:
            yield
            return
        set_lora_enabled(self.layers, True)
        self.unet.class_embedding = self.camera_mlp
        try:
            yield
        finally:
            set_lora_enabled(self.layers, False)
            self.unet.class_embedding = None

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, camera: Optional[Tensor] = None) -> Tensor:
        """Raw prediction (of ``prediction_type``) [B,C,h,w] in float32; see the class docstring."""
        if camera is None:
            camera = torch.zeros(x_t.shape[0], CAMERA_DIM, device=x_t.device)
        sample = x_t.to(self.dtype)
        if sample.is_cuda:
            sample = sample.contiguous(memory_format=torch.channels_last)
        with self._active():
            out = self.forward_fn(
                sample, t, encoder_hidden_states=cond.to(self.dtype), class_labels=camera.float()
            ).sample
        return out.float()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.lora.values()) + list(self.camera_mlp.parameters())
