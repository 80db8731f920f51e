"""Time one training step with the Stable Diffusion prior, part by part (SDS and VSD).

    python bench/speed.py                               # CUDA: SD 2.1-base architecture, random weights, fp16
    python bench/speed.py --device cpu --tiny --steps 5 # a small stand-in on the CPU
    python bench/speed.py --cpu-row [--peers DIR]       # the offline demo steps on the CPU (bench/speed_cpu.py)

Random weights cost the same time and memory as trained ones (bench/sd21_base.py holds the
architecture). The step follows threestudio's dreamfusion-sd settings by default: a hash-grid NeRF
rendered at 64×64 (batch 1, 512 samples per ray, point-light shading, environment-map background),
resized to 512² for the VAE encoder (with autograd), the UNet at classifier-free-guidance batch 2B.
VSD adds ε_φ (LoRA on the shared UNet): one B forward without grad for the gradient and one B
forward+backward for its own loss. Every part is timed with CUDA events (perf_counter on the CPU);
the table holds the median of each part and of the whole step over the timed steps after warm-up,
the peak GPU memory, and the step time over the floor = UNet forward at batch 2B + VAE encoder
forward and backward, each timed alone.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import sd21_base as arch  # noqa: E402
from threestudio_like.data.cameras import RandomCameraConfig, RandomCameraSampler  # noqa: E402
from threestudio_like.diffusion import guided  # noqa: E402
from threestudio_like.guidance.base import GuidanceConfig  # noqa: E402
from threestudio_like.guidance.sds import SDS  # noqa: E402
from threestudio_like.guidance.vsd import VSD, VSDConfig  # noqa: E402
from threestudio_like.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior  # noqa: E402

PARTS = ("render", "vae_encode", "unet", "unet_lora", "lora_train_forward", "guidance_math", "backward", "optimizer")


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        sizes = [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != 2 or min(size) < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected N×resolution pairs like 2000x32,10000x128")
    return sizes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small stand-in models and scene (CPU runs)")
    parser.add_argument("--methods", default="sds,vsd")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--render", type=int, default=None, help="render size (default 64, tiny 32)")
    parser.add_argument("--vae-res", type=int, default=None, help="VAE input size (default 512, tiny 64)")
    parser.add_argument("--samples", type=int, default=None, help="samples per ray (default 512, tiny 32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    cpu = parser.add_argument_group("CPU row (--cpu-row): the embedded-prior demo steps, see bench/speed_cpu.py")
    cpu.add_argument("--cpu-row", action="store_true", help="time the NeRF and Gaussian demo steps part by part instead")
    cpu.add_argument("--peers", default=os.environ.get("PEERS_DIR", "peers"), help="folder with nerfstudio/ and gsplat/ checkouts")
    cpu.add_argument("--warmup-steps", type=int, default=200, help="training steps before timing")
    cpu.add_argument("--repeats", type=int, default=15)
    cpu.add_argument("--gs-sizes", type=_sizes, default=None, help="Gaussian peer sizes, e.g. 2000x32,10000x128")
    cpu.add_argument("--nerf-only", action="store_true", help="only the NeRF step (both CPU paths) and the hash grid peer")
    cpu.add_argument("--gaussian-only", action="store_true", help="only the Gaussian step and the rasterizer peer")
    args = parser.parse_args(argv)
    args.render = args.render or (32 if args.tiny else 64)
    args.vae_res = args.vae_res or (64 if args.tiny else 512)
    args.samples = args.samples or (32 if args.tiny else 512)
    return args


class PartTimer:
    """Per-part wall time of a step: CUDA events on a GPU (read once per step), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._step: list = []

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._step.append((name, start, end))
        else:
            start = time.perf_counter()
            yield
            self._step.append((name, start, time.perf_counter()))

    def end_step(self, keep: bool) -> None:
        """Sum this step's intervals per part (ms); store them when ``keep``."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for name, start, end in self._step:
            totals[name] += start.elapsed_time(end) if self.cuda else (end - start) * 1000.0
        self._step = []
        if keep:
            for name, value in totals.items():
                self.samples[name].append(value)

    def median(self, name: str) -> float:
        values = self.samples.get(name)
        return statistics.median(values) if values else float("nan")


def build_prior(args, device: torch.device, cache_dir: str) -> StableDiffusionPrior:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(arch.TINY_UNET if args.tiny else arch.SD21_BASE_UNET)
    vae = AutoencoderKL.from_config(arch.TINY_VAE if args.tiny else arch.SD21_BASE_VAE)
    scheduler = DDPMScheduler.from_config(arch.SD21_BASE_SCHEDULER)
    cfg = StableDiffusionConfig(dtype=args.dtype, vae_resolution=args.vae_res, compile_unet=args.compile, cache_dir=cache_dir)
    return StableDiffusionPrior.from_components(cfg, device, unet=unet, vae=vae, scheduler=scheduler)


def build_scene(args, device: torch.device) -> SimpleNamespace:
    """NeRF (hash grid), volume renderer, point-light material, environment-map background, Adam."""
    from threestudio_like.geometry.hashgrid import HashGridConfig
    from threestudio_like.geometry.nerf import ImplicitVolume, ImplicitVolumeConfig
    from threestudio_like.materials.point_light import PointLightConfig, PointLightMaterial
    from threestudio_like.renderers.background import EnvironmentMapBackground, EnvironmentMapConfig
    from threestudio_like.renderers.volume import VolumeRenderer, VolumeRendererConfig

    grid = HashGridConfig(n_levels=4, log2_hashmap_size=12, start_level=4) if args.tiny else HashGridConfig()
    geometry = ImplicitVolume(ImplicitVolumeConfig(pos_encoding=grid)).to(device)
    renderer = VolumeRenderer(VolumeRendererConfig(num_samples_per_ray=args.samples), radius=geometry.radius).to(device)
    material = PointLightMaterial(PointLightConfig()).to(device)
    background = EnvironmentMapBackground(EnvironmentMapConfig()).to(device)
    groups = geometry.parameter_groups() + background.parameter_groups()
    optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
    sampler = RandomCameraSampler(RandomCameraConfig(
        width=args.render, height=args.render, batch_size=args.batch, camera_distance_range=[1.0, 1.5],
        fovy_range=[40.0, 70.0], elevation_range=[-10.0, 90.0],
    ))
    return SimpleNamespace(geometry=geometry, renderer=renderer, material=material, background=background,
                           optimizer=optimizer, sampler=sampler, step=0)


def render(scene, device: torch.device):
    """One training render [B,H,W,3] with diffuse point-light shading (normals included)."""
    scene.renderer.update_step(scene.step, 10_000, scene.geometry)
    scene.step += 1
    cameras = scene.sampler.sample().to(device)
    out = scene.renderer.render(scene.geometry, scene.material, scene.background, cameras, shading="diffuse", training=True)
    return out["rgb"], cameras


def prior_pass(ctx, timer: PartTimer):
    """The parts SDS and VSD share: render → VAE encode → noise → prior UNet at 2B (cond, null)."""
    prior, guidance, B = ctx.prior, ctx.guidance, ctx.args.batch
    with timer("render"):
        rgb, cameras = render(ctx.scene, ctx.device)
    with timer("vae_encode"):
        x = prior.encode_images(rgb.permute(0, 3, 1, 2))
    with timer("guidance_math"), torch.no_grad():
        t = guidance.sample_timesteps(B, ctx.device)
        noise = torch.randn_like(x)
        x_t = guidance.add_noise(x.detach(), noise, t)
    with timer("unet"), torch.no_grad():
        eps_y, eps_0 = prior.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), ctx.cond_null).chunk(2)
    return cameras, x, t, noise, x_t, eps_y, eps_0


def sds_step(ctx, timer: PartTimer) -> None:
    """DreamFusion's step: render → VAE → UNet at 2B → g = w(t)(ε_s − ε) → backward → Adam."""
    guidance = ctx.guidance
    _, x, t, noise, x_t, eps_y, eps_0 = prior_pass(ctx, timer)
    with timer("guidance_math"):
        with torch.no_grad():
            grad = guidance.weight(t, x) * (guided(eps_y, eps_0, guidance.cfg.guidance_scale) - noise)
        loss = guidance.as_loss(x, grad)[f"loss_{guidance.name}"]
    with timer("backward"):
        loss.backward()
    with timer("optimizer"):
        ctx.scene.optimizer.step()
        ctx.scene.optimizer.zero_grad(set_to_none=True)


def vsd_step(ctx, timer: PartTimer) -> None:
    """ProlificDreamer's step: SDS's parts with ε_φ in place of ε, plus ε_φ's own loss and AdamW."""
    prior, guidance, phi, B = ctx.prior, ctx.vsd, ctx.vsd.variational, ctx.args.batch
    cameras, x, t, noise, x_t, eps_y, eps_0 = prior_pass(ctx, timer)
    camera = cameras.flat_matrices().to(ctx.device)
    with timer("unet_lora"), torch.no_grad():
        eps_phi = phi(x_t, t, ctx.cond, camera)  # s_φ = 1: the camera-free half is skipped
    with timer("guidance_math"):
        with torch.no_grad():
            grad = guidance.weight(t, x) * (guided(eps_y, eps_0, guidance.cfg.guidance_scale) - eps_phi)
        loss = guidance.as_loss(x, grad)[f"loss_{guidance.name}"]
    with timer("lora_train_forward"):
        t_phi = torch.randint(0, prior.num_train_timesteps, (B,), device=ctx.device)
        noise_phi = torch.randn_like(x)
        keep = (torch.rand(B, 1, device=ctx.device) >= guidance.cfg.camera_dropout).float()  # per item
        pred = phi(guidance.add_noise(x.detach(), noise_phi, t_phi), t_phi, ctx.cond, camera * keep)
        loss_phi = F.mse_loss(pred, noise_phi)
    with timer("backward"):
        (loss + loss_phi).backward()
    with timer("optimizer"):
        for optimizer in (ctx.scene.optimizer, ctx.lora_optimizer):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def floor_ms(ctx, steps: int, warmup: int) -> tuple[float, float]:
    """Median ms of (UNet forward at batch 2B, VAE encoder forward+backward), each timed alone."""
    timer = PartTimer(ctx.device)
    B, R, prior = ctx.args.batch, ctx.args.render, ctx.prior
    size = prior.latent_resolution
    for i in range(warmup + steps):
        rgb = torch.rand(B, 3, R, R, device=ctx.device, requires_grad=True)
        x_t = torch.randn(2 * B, 4, size, size, device=ctx.device)
        t = torch.randint(20, 980, (2 * B,), device=ctx.device)
        with timer("floor_unet"), torch.no_grad():
            prior.predict_noise(x_t, t, ctx.cond_null)
        with timer("floor_vae"):
            prior.encode_images(rgb).sum().backward()
        timer.end_step(keep=i >= warmup)
    return timer.median("floor_unet"), timer.median("floor_vae")


def run_method(ctx, method: str) -> dict:
    step_fn = sds_step if method == "sds" else vsd_step
    if method == "vsd" and ctx.vsd is None:
        ctx.vsd = VSD(VSDConfig(), ctx.prior)  # ε_φ (LoRA on the shared UNet) and its AdamW, as configured
        ctx.lora_optimizer = ctx.vsd.make_optimizer()
    timer = PartTimer(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    steps = []
    for i in range(ctx.args.warmup + ctx.args.steps):
        start = time.perf_counter()
        step_fn(ctx, timer)
        timer.end_step(keep=i >= ctx.args.warmup)  # synchronises on CUDA
        if i >= ctx.args.warmup:
            steps.append((time.perf_counter() - start) * 1000.0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if ctx.device.type == "cuda" else float("nan")
    return {"parts": {p: timer.median(p) for p in PARTS}, "step": statistics.median(steps), "peak_gib": peak}


def print_table(ctx, results: dict, floor: tuple[float, float]) -> None:
    args, methods = ctx.args, list(results)
    name = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    model = "tiny stand-in" if args.tiny else "SD 2.1-base architecture"
    print(f"device: {name}; {model}, random weights, {ctx.prior.dtype}; render {args.render}², batch {args.batch}, "
          f"{args.samples} samples/ray; VAE at {args.vae_res}²; median of {args.steps} steps after {args.warmup} warm-up")
    cell = lambda value, digits=1: f"{value:>12.{digits}f}" if value == value else f"{'—':>12}"  # noqa: E731 (nan → —)
    print(f"{'part (ms)':<22}" + "".join(f"{m.upper():>12}" for m in methods))
    for part in PARTS:
        print(f"{part:<22}" + "".join(cell(results[m]["parts"][part]) for m in methods))
    print(f"{'step (median)':<22}" + "".join(cell(results[m]["step"]) for m in methods))
    print(f"{'peak GPU memory (GiB)':<22}" + "".join(cell(results[m]["peak_gib"], 2) for m in methods))
    total = sum(floor)
    print(f"{'floor (ms)':<22}" + "".join(f"{total:>12.1f}" for _ in methods)
          + f"   (UNet 2B fwd {floor[0]:.1f} + VAE enc fwd+bwd {floor[1]:.1f})")
    print(f"{'step / floor':<22}" + "".join(f"{results[m]['step'] / total:>12.2f}" for m in methods))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.cpu_row:
        from bench import speed_cpu

        args.gs_sizes = args.gs_sizes or list(speed_cpu.GS_SIZES)
        speed_cpu.main(args)
        return
    device = torch.device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"sds", "vsd"})
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; use sds and/or vsd")
    with tempfile.TemporaryDirectory() as cache_dir:
        prior = build_prior(args, device, cache_dir)
        tokens = arch.TINY_TEXT_TOKENS if args.tiny else arch.SD21_BASE_TEXT_TOKENS
        cond = torch.randn(args.batch, tokens, prior.unet.config.cross_attention_dim, device=device)
        ctx = SimpleNamespace(
            args=args, device=device, prior=prior, scene=build_scene(args, device), vsd=None,
            guidance=SDS(GuidanceConfig(guidance_scale=100.0), prior), cond=cond,
            cond_null=torch.cat([cond, torch.randn_like(cond)]),
        )
        floor = floor_ms(ctx, args.steps, args.warmup)
        results = {method: run_method(ctx, method) for method in methods}
    print_table(ctx, results, floor)


if __name__ == "__main__":
    main()
