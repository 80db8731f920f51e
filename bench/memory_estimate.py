"""Estimate the GPU memory of a Stable Diffusion training step without a GPU.

    python bench/memory_estimate.py [--render 64] [--vae-res 512] [--batch 1] [--trace-render 32]

Weights are counted exactly (SD 2.1-base architecture, fp16). Autograd activations are the bytes of
the tensors autograd saves for the backward pass (parameters excluded), counted with
``saved_tensors_hooks``: for the VAE encoder and the LoRA UNet on the meta device (shapes only, no
compute), for the NeRF render by a real CPU render at ``--trace-render`` pixels scaled to ``--render``
(render memory grows with the number of samples, i.e. with pixels). Square attention maps
(N×N, N ≥ 1024) are reported apart: the meta device materialises them, CUDA's fused SDPA kernels do
not. What this leaves out — allocator rounding and fragmentation, short-lived temporaries, CUDA
context — is why the output is an estimate; bench/speed.py measures the real peak on a GPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import sd21_base as arch  # noqa: E402

GIB = 2**30


def saved_gib(fn) -> tuple[float, float]:
    """(GiB saved for backward by ``fn()`` excluding square attention maps, GiB of those maps)."""
    other: dict[int, int] = {}
    attention: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            square = t.dim() >= 2 and t.shape[-1] == t.shape[-2] >= 1024
            (attention if square else other)[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(other.values()) / GIB, sum(attention.values()) / GIB


def model_terms(args) -> list[tuple[str, float, str]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from threestudio_like.priors.lora import LoRAVariationalUNet

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(arch.SD21_BASE_UNET).half().requires_grad_(False)
        vae = AutoencoderKL.from_config(arch.SD21_BASE_VAE).half().requires_grad_(False)
    size = lambda module: sum(p.numel() * p.element_size() for p in module.parameters()) / GIB  # noqa: E731
    rgb = torch.zeros(args.batch, 3, args.vae_res, args.vae_res, device="meta", dtype=torch.float16, requires_grad=True)
    vae_act, vae_attn = saved_gib(lambda: vae.encode(rgb).latent_dist.sample())
    terms = [
        ("UNet weights (fp16)", size(unet), "exact"),
        ("VAE encoder weights (fp16; decoder offloaded)", size(vae.encoder) + size(vae.quant_conv), "exact"),
        (f"VAE encoder activations at {args.vae_res}² (autograd)", vae_act, f"trace (+{vae_attn:.2f} attention maps)"),
    ]
    lora = LoRAVariationalUNet(unet, 4, "epsilon", shared=True)
    latent = args.vae_res // 8
    x_t = torch.zeros(args.batch, 4, latent, latent, device="meta")
    t = torch.zeros(args.batch, dtype=torch.long, device="meta")
    cond = torch.zeros(args.batch, arch.SD21_BASE_TEXT_TOKENS, 1024, device="meta")
    lora_act, lora_attn = saved_gib(lambda: lora(x_t, t, cond, torch.zeros(args.batch, 16, device="meta")))
    lora_params = sum(p.numel() for p in lora.trainable_parameters()) * 4 * 4 / GIB  # fp32 + grad + 2 AdamW moments
    terms += [
        ("VSD: ε_φ training forward (autograd)", lora_act, f"trace (+{lora_attn:.2f} attention maps)"),
        ("VSD: LoRA + camera MLP, grads, AdamW state", lora_params, "exact"),
    ]
    return terms


def render_terms(args) -> list[tuple[str, float, str]]:
    from bench.speed import build_scene, parse_args, render

    scene_args = parse_args(["--device", "cpu", "--render", str(args.trace_render), "--batch", str(args.batch)])
    scene = build_scene(scene_args, torch.device("cpu"))
    torch.manual_seed(0)
    values = [saved_gib(lambda: render(scene, torch.device("cpu")))[0] for _ in range(args.trace_views)]
    scale = (args.render / args.trace_render) ** 2
    params = sum(p.numel() for p in scene.geometry.parameters()) * 4 * 4 / GIB  # fp32 + grad + 2 Adam moments
    low, high = min(values) * scale, max(values) * scale
    return [
        ("NeRF parameters, grads, Adam state", params, "exact"),
        (f"NeRF render {args.render}² (autograd, {scene_args.samples} samples/ray, FD normals)", (low + high) / 2,
         f"trace at {args.trace_render}² ×{scale:.0f}: {low:.2f}–{high:.2f} over {args.trace_views} cameras"),
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", type=int, default=64)
    parser.add_argument("--vae-res", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--trace-render", type=int, default=32)
    parser.add_argument("--trace-views", type=int, default=4)
    args = parser.parse_args(argv)
    terms = model_terms(args) + render_terms(args)
    print(f"{'term':<72}{'GiB':>7}  how")
    for name, gib, how in terms:
        print(f"{name:<72}{gib:>7.2f}  {how}")
    sds = sum(g for n, g, _ in terms if not n.startswith("VSD"))
    print(f"{'SDS total (before temporaries)':<72}{sds:>7.2f}")
    print(f"{'VSD total, shared UNet (before temporaries)':<72}{sum(g for _, g, _ in terms):>7.2f}")


if __name__ == "__main__":
    main()
