"""Implicit volume (threestudio's ``implicit-volume``): density and albedo from one small MLP on a hash grid.

Points live in the ball of radius ``radius``; the box [−radius, radius]^3 is mapped to [0,1]^3 for
the encoding, and density is zero outside the ball. A fresh field is a soft blob (``density_bias``),
so the first renders show an object for the prior to shape rather than empty space.

On a CPU the network runs, by default, as one compiled fused forward and backward over tiles of
rows, and the density bias, activation, ball mask and albedo sigmoid after it as one compiled
pass (threestudio_like/kernels: the same functions, to float rounding); ``cpu_kernel: false``
keeps nn.Sequential and the PyTorch operations, which also run where the kernels cannot be built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threestudio_like.config import check_choice
from threestudio_like.geometry.base import Geometry
from threestudio_like.geometry.hashgrid import HashGrid, HashGridConfig
from threestudio_like.kernels import kernel_choice, use_kernels
from threestudio_like.kernels.mlp import fused_mlp, relu_stack_weights
from threestudio_like.kernels.nerf_fields import ACTIVATIONS, BIASES, FieldSpec, nerf_fields
from threestudio_like.registry import register
from threestudio_like.utils.checks import check_above, check_at_least, check_learning_rates


@dataclass
class ImplicitVolumeConfig:
    radius: float = 1.0
    pos_encoding: HashGridConfig = field(default_factory=HashGridConfig)
    mlp_neurons: int = 64
    mlp_hidden_layers: int = 1
    density_activation: str = "softplus"  # softplus | exp (truncated-gradient exp, as threestudio's trunc_exp)
    density_bias: str = "blob_magic3d"  # blob_magic3d | blob_dreamfusion | none
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    normal_type: str = "finite_difference"
    finite_difference_eps: float = 0.01  # world units
    lr_encoding: float = 0.01
    lr_network: float = 0.001
    isosurface_threshold: float = 25.0
    cpu_kernel: Any = "auto"  # the network: auto (the compiled fused MLP when it builds) | true | false (nn.Sequential)

    def __post_init__(self) -> None:
        self.cpu_kernel = kernel_choice(self.cpu_kernel, "cpu_kernel")
        check_choice(self.density_activation, ("softplus", "exp"), "density_activation")
        check_choice(self.density_bias, ("blob_magic3d", "blob_dreamfusion", "none"), "density_bias")
        check_choice(self.normal_type, ("finite_difference",), "normal_type")
        if self.radius <= 0 or self.density_blob_std <= 0 or self.finite_difference_eps <= 0:
            raise ValueError(
                f"radius={self.radius}, density_blob_std={self.density_blob_std} and "
                f"finite_difference_eps={self.finite_difference_eps} must be > 0"
            )
        if self.mlp_neurons < 1 or self.mlp_hidden_layers < 0:
            raise ValueError(f"mlp_neurons={self.mlp_neurons} must be >= 1 and mlp_hidden_layers={self.mlp_hidden_layers} >= 0")
        check_at_least(self, 0, "density_blob_scale")
        check_learning_rates(self, "lr_encoding", "lr_network")
        check_above(self, 0.0, "isosurface_threshold")


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(clamp(x, max=15)), so a spike cannot blow up the update."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def make_mlp(n_input: int, n_output: int, neurons: int, hidden_layers: int) -> nn.Sequential:
    """Linear–ReLU stack without biases (like tiny-cuda-nn's fused MLP, so a fresh field is the blob)."""
    layers: list[nn.Module] = []
    width = n_input
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, neurons, bias=False), nn.ReLU(inplace=True)]
        width = neurons
    layers.append(nn.Linear(width, n_output, bias=False))
    return nn.Sequential(*layers)


@register("geometry", "implicit-volume")
class ImplicitVolume(Geometry):
    Config = ImplicitVolumeConfig
    albedo_rows = slice(1, 4)  # the network's outputs: raw density, then 3 albedo logits

    def __init__(self, cfg: ImplicitVolumeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        self.encoding = HashGrid(cfg.pos_encoding)
        # one network: 1 raw density + 3 albedo logits
        self.network = make_mlp(self.encoding.output_dim, 4, cfg.mlp_neurons, cfg.mlp_hidden_layers)

    # --- fields ---------------------------------------------------------------------------
    def density_bias(self, points: Tensor) -> Tensor:
        """points [N,3] (world) → the initial blob's pre-activation density [N]."""
        cfg = self.cfg
        if cfg.density_bias == "blob_magic3d":
            return cfg.density_blob_scale * (1.0 - points.norm(dim=-1) / cfg.density_blob_std)
        if cfg.density_bias == "blob_dreamfusion":
            return cfg.density_blob_scale * torch.exp(-0.5 * points.square().sum(-1) / cfg.density_blob_std**2)
        return points.new_zeros(points.shape[0])

    def activate_density(self, raw: Tensor) -> Tensor:
        return F.softplus(raw) if self.cfg.density_activation == "softplus" else _TruncExp.apply(raw)

    def _fields(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [N,3] (world) → (density [N] ≥ 0, zero outside the ball; albedo [N,3] in (0,1))."""
        unit = (points / self.radius + 1.0) * 0.5
        weights = self.kernel_weights(points)
        features = self.encoding(unit, feature_major=weights is not None)
        if weights is not None and not points.requires_grad:  # the fused kernels end to end
            return nerf_fields(fused_mlp(features, weights), points, self.field_spec())
        out = self.network(features) if weights is None else fused_mlp(features, weights)
        density = self.activate_density(out[:, 0] + self.density_bias(points))
        inside = points.square().sum(-1) <= self.radius**2
        return torch.where(inside, density, torch.zeros_like(density)), torch.sigmoid(out[:, 1:])

    def field_spec(self) -> FieldSpec:
        """The density bias, activation and ball as the compiled fields kernel reads them."""
        cfg = self.cfg
        return FieldSpec(BIASES[cfg.density_bias], float(cfg.density_blob_scale), float(cfg.density_blob_std),
                         ACTIVATIONS[cfg.density_activation], self.radius**2)

    def kernel_weights(self, like: Tensor) -> Optional[list[Tensor]]:
        """The network's weights when it runs on the fused CPU kernel for inputs of ``like``'s dtype
        and device, else None (the kernel computes bias-free Linear–ReLU stacks in float32/64)."""
        weights = relu_stack_weights(self.network)
        if weights is None or like.dtype not in (torch.float32, torch.float64) or any(w.dtype != like.dtype for w in weights):
            return None
        return weights if use_kernels(self.cfg.cpu_kernel, like, *weights) else None

    def run_network(self, features: Tensor) -> Tensor:
        """features [N, encoding.output_dim] → the network's outputs [N,4], on the fused CPU kernel when chosen."""
        weights = self.kernel_weights(features)
        return self.network(features) if weights is None else fused_mlp(features, weights)

    def forward(self, points: Tensor, with_normal: bool = False) -> dict[str, Tensor]:
        """points [N,3] (world) → density [N], albedo [N,3] in (0,1), and normal [N,3] if asked."""
        density, albedo = self._fields(points)
        result = {"density": density, "albedo": albedo}
        if with_normal:
            result["normal"] = self.normal(points)
        return result

    def density(self, points: Tensor) -> Tensor:
        return self._fields(points)[0]

    def color(self, points: Tensor) -> Tensor:
        return self._fields(points)[1]

    def normal(self, points: Tensor) -> Tensor:
        """points [N,3] → unit normals −∇σ/‖∇σ‖ [N,3] by central differences (eps in world units)."""
        eps = self.cfg.finite_difference_eps
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        offsets = torch.cat([offsets, -offsets])  # [6,3]: +x +y +z −x −y −z
        shifted = (points[:, None, :] + offsets).clamp(-self.radius, self.radius)
        sigma = self.density(shifted.reshape(-1, 3)).view(-1, 6)
        gradient = (sigma[:, :3] - sigma[:, 3:]) / (2.0 * eps)
        return F.normalize(-gradient, dim=-1)

    # --- training hooks --------------------------------------------------------------------
    def isosurface_threshold(self) -> float:
        return float(self.cfg.isosurface_threshold)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [
            {"params": list(self.encoding.parameters()), "lr": self.cfg.lr_encoding, "name": "encoding"},
            {"params": list(self.network.parameters()), "lr": self.cfg.lr_network, "name": "network"},
        ]

    def update_step(self, step: int, max_steps: int) -> None:
        self.encoding.update_step(step)
