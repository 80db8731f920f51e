"""The fused MLP's compiled forward and backward (csrc/mlp.cpp) as an autograd Function."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


class _FusedMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, keep_hidden: bool, x: Tensor, *weights: Tensor) -> Tensor:
        y, hidden = torch.ops.threestudio_like_cpu.mlp_forward(x, list(weights), keep_hidden)
        ctx.save_for_backward(x, hidden, *weights)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        x, hidden, *weights = ctx.saved_tensors
        want_x = ctx.needs_input_grad[1]
        grad_x, *grad_w = torch.ops.threestudio_like_cpu.mlp_backward(x, weights, grad, hidden, want_x)
        return (None, grad_x if want_x else None, *(g if need else None for g, need in zip(grad_w, ctx.needs_input_grad[2:])))


def relu_stack_weights(network: nn.Sequential) -> Optional[list[Tensor]]:
    """The weights of a bias-free Linear, ReLU, …, Linear stack (what the kernel computes), or
    None for any other network."""
    layers = list(network)
    linears, relus = layers[0::2], layers[1::2]
    if not all(type(m) is nn.Linear and m.bias is None for m in linears) or not all(type(m) is nn.ReLU for m in relus):
        return None
    return [m.weight for m in linears] if len(linears) == len(relus) + 1 else None


def fused_mlp(x: Tensor, weights: list[Tensor]) -> Tensor:
    """x [N,K] (any strides) → W_L·relu(…relu(W_0·x)) [N,O] for weights W_l [n_out,n_in] of x's
    dtype; gradients reach x (as a feature-major [K,N] tensor seen as [N,K]) and the weights. When
    autograd will need them, the hidden activations are kept for the backward (else it recomputes them)."""
    keep_hidden = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights))
    return _FusedMLP.apply(keep_hidden, x, *weights)
