"""The DiffusionPrior contract: what a guidance method may ask of a frozen 2D diffusion model.

Guidance never knows which prior it talks to. Conditions are tensors whose first dimension is the
batch, so a guidance can concatenate a conditional and a null condition and run one batched forward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from threestudio_like.data.cameras import Cameras


class DiffusionPrior(nn.Module):
    """A frozen text-conditioned diffusion model seen through the operations guidance needs.

    Subclasses set ``num_train_timesteps`` and the buffer ``alphas_cumprod`` [T] and implement the
    methods below. ``predict_noise`` always returns ε, whatever the model predicts internally.
    """

    num_train_timesteps: int = 1000
    alphas_cumprod: Tensor
    # a prior of a known world (the embedded prior) offers ``scene(text)``, the quality benchmark's truth
    knows_ground_truth: bool = False

    @classmethod
    def reference_kind(cls, cfg) -> Optional[str]:
        """What images this prior's data are ("rgb" or "normal") when the config fixes it (the
        embedded prior's references), so a stage can be checked against it before any work;
        None for a prior that scores whatever it is shown (Stable Diffusion)."""
        return None

    def __init__(self, cfg, device: torch.device, sampler=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.device_ = torch.device(device)

    def prepare(self, text: str) -> None:
        """Fix the run's prompt ``text`` at start-up (and pre-compute what the prior can for it), so a
        prompt the prior cannot use fails before training starts. Raises ValueError with one line.
        After it, ``predict_noise`` is a pure function of its inputs."""

    # --- image space <-> model space ---------------------------------------------------------
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B,3,H,W] in [0,1] → model inputs x [B,C,h,w] (keeps autograd)."""
        raise NotImplementedError

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Model inputs [B,C,h,w] → rgb [B,3,H,W] in [0,1] (for visualisation)."""
        raise NotImplementedError

    # --- conditioning ------------------------------------------------------------------------
    def condition(self, text: str, cameras: Cameras, views: Optional[list[str]] = None) -> Tensor:
        """Condition [B,...] for prompt ``text`` seen by ``cameras``.

        ``views`` holds one front/side/back/overhead label per camera when the caller wants
        view-dependent conditioning, or None for the plain prompt.
        """
        raise NotImplementedError

    def null_condition(self, text: str, cameras: Cameras) -> Tensor:
        """Condition [B,...] of the negative/empty prompt ``text`` (the ∅ of classifier-free guidance)."""
        raise NotImplementedError

    # --- the model -----------------------------------------------------------------------------
    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """ε̂(x_t; cond, t): x_t [N,C,h,w], t [N] integer timesteps, cond [N,...] → [N,C,h,w]."""
        raise NotImplementedError

    def variational_copy(self, rank: int) -> "VariationalScore":
        """A trainable camera-conditioned score model ε_φ for VSD/ESD (LoRA copy, or a small UNet)."""
        raise NotImplementedError(f"{type(self).__name__} offers no variational copy")


class VariationalScore(nn.Module):
    """ε_φ(x_t; y, t, c) of VSD/ESD: a camera-conditioned score model of the current renders.

    ``forward(x_t [B,C,h,w], t [B] long, cond [B,...] (the view-independent prompt's condition),
    camera [B,16] or None) -> prediction [B,C,h,w]`` of ``prediction_type``; ``camera`` is the
    flattened 4×4 camera-to-world matrix, None or zeros meaning "no camera".
    """

    prediction_type: str = "epsilon"  # or "v_prediction"

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What ε_φ's optimizer steps (empty for a training-free model)."""
        return []

    def observe(self, x0: Tensor, camera: Optional[Tensor]) -> None:
        """Called with every step's finite, detached renders x0 [B,C,h,w] and cameras [B,16]: a
        training-free model learns by remembering them; a trained one learns through its loss."""
