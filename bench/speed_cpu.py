"""The CPU row of bench/speed.py: the offline demo steps part by part, against this machine's floor
and against the peer implementations they replace.

    python bench/speed.py --cpu-row [--peers DIR] [--warmup-steps 200] [--repeats 15] [--nerf-only | --gaussian-only]

Everything runs on one thread and is timed with thread CPU time (``time.thread_time``: other jobs
on a shared machine do not count), median over ``--repeats``. The floor of a part is
max(FLOPs / GEMM rate, bytes / copy bandwidth) with both rates measured here first (a 512³ sgemm
and a 4 MB copy); FLOPs and bytes are counted from the shapes of that very step (the minimal
traffic: every operand read once, every result written once). The "arithmetic floor" of a step is
its matrix products alone at the GEMM rate (the issue's 4 × goal is measured against it).

Parts of the NeRF step (configs/sds-nerf.yaml after ``--warmup-steps`` training steps, so the
occupancy grid has shrunk as in a real run): the hash grid's forward + backward and the MLP's
forward + backward timed alone on that step's samples; "marching + compositing" is the render's
forward + backward minus those two (the three timed round-robin, so
that a change of load reaches them alike); the guidance call (the embedded prior's exact denoiser at
batch 2B and the SDS arithmetic); Adam; "rest" is the whole step minus all of these. The
Gaussian step (configs/sds-gs.yaml) is split into the render (projection + sparse rasterizer,
forward + backward), the guidance call, Adam and the rest.

Peers (see bench/peers.py; skipped when absent): nerfstudio's torch HashEncoding on the same
table (all levels hashed, so both compute the same function) and gsplat's torch reference
(its projection + ``accumulate`` over the same (Gaussian, pixel) pairs) at several sizes.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench import peers as peer_code
from threestudio_like.cli import build, seed_everything
from threestudio_like.config import load_config

ROOT = Path(__file__).resolve().parents[1]
GS_SIZES = ((2000, 32), (2000, 64), (2000, 128), (5000, 64), (5000, 128), (10000, 32), (10000, 64), (10000, 128))


def thread_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Median thread CPU time of ``fn()`` in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return 1000.0 * statistics.median(times)


def interleaved_ms(fns: list, repeats: int, warmup: int = 2) -> list[float]:
    """Median thread CPU time (ms) of each of ``fns``, timed round-robin: a change in the machine's
    load during the run reaches every part alike, so differences of parts stay meaningful (at the
    price of colder caches: each call follows a different one, so all parts read somewhat high)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.thread_time()
            fn()
            bucket.append(time.thread_time() - start)
    return [1000.0 * statistics.median(bucket) for bucket in times]


def machine_rates(repeats: int) -> SimpleNamespace:
    """Single-thread sgemm rate (GFLOP/s, 512³) and copy bandwidth (GB/s counting read + write) of a
    4 MB array: cache-resident like most of a step's operands, so the floor is on the low side."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    gemm = 2 * 512**3 / (thread_ms(lambda: a @ b, repeats) * 1e-3) / 1e9
    src = torch.randn(2**20)
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 4 / (thread_ms(lambda: dst.copy_(src), repeats) * 1e-3) / 1e9
    return SimpleNamespace(gemm=gemm, copy=copy)


def floor_ms(flops: float, nbytes: float, rates: SimpleNamespace) -> float:
    return 1000.0 * max(flops / (rates.gemm * 1e9), nbytes / (rates.copy * 1e9))


def trained_system(config: str, warmup_steps: int):
    """The demo's system from ``config`` after ``warmup_steps`` training steps (seed 0)."""
    torch.set_num_threads(1)
    cfg = load_config(str(ROOT / config), ["exp_root_dir=/tmp/speed-bench"])
    seed_everything(cfg.seed)
    system, _ = build(cfg, torch.device("cpu"))
    for step in range(warmup_steps):
        system.training_step(step, cfg.trainer.max_steps)
    return system, warmup_steps, cfg.trainer.max_steps


def timed_steps(system, step: int, max_steps: int, repeats: int) -> float:
    counter = iter(range(step, step + 10 * repeats))
    return thread_ms(lambda: system.training_step(next(counter), max_steps), repeats)


def adam_ms(system, repeats: int) -> float:
    """ms of one Adam step over the geometry (random gradients; the field is left as it was)."""
    optimizer = system.optimizers["geometry"]
    saved = [(p, p.detach().clone()) for group in optimizer.param_groups for p in group["params"]]
    for p, _ in saved:
        p.grad = torch.randn_like(p) * 1e-3
    adam = thread_ms(optimizer.step, repeats)
    with torch.no_grad():  # leave the field as it was
        for p, value in saved:
            p.copy_(value)
            p.grad = None
    return adam


def guidance_cost(batch: int, n_refs: int, pixels: int) -> tuple[float, float]:
    """FLOPs and bytes of the exact denoiser at batch 2B: two [2B,D]×[D,K] products, K·D read twice."""
    return 2 * 2 * (2 * batch) * pixels * n_refs, 2 * n_refs * pixels * 4


def adam_cost(system) -> tuple[float, float]:
    n = sum(p.numel() for group in system.optimizers["geometry"].param_groups for p in group["params"])
    return 12 * n, 7 * 4 * n  # read p, g, m, v; write p, m, v


def set_cpu_kernels(system, choice) -> None:
    """The NeRF system's hash grid, MLP, volume renderer and embedded prior on the compiled kernels
    (True) or the torch path (False)."""
    system.geometry.encoding.cfg.cpu_kernel = choice
    system.geometry.cfg.cpu_kernel = choice
    system.renderer.cfg.cpu_kernel = choice
    system.prior.cfg.cpu_kernel = choice


def on_path(system, compiled: bool, fn):
    """``fn`` run with the NeRF system on the compiled kernels or on the torch path."""
    def run():
        set_cpu_kernels(system, compiled)
        return fn()
    return run


def captured_samples(system, cameras) -> torch.Tensor:
    """The points [M,3] the geometry is evaluated on in one training render of ``cameras``."""
    geometry, captured = system.geometry, {}
    forward = geometry.forward

    def capture(points, with_normal=False):
        captured["points"] = points.detach()
        return forward(points, with_normal)

    geometry.forward = capture
    system.render(cameras, shading="albedo", training=True)
    del geometry.forward
    return captured["points"]


def n_references(system, cameras) -> int:
    return system.prior.reference_set(system.prompt.text, cameras.width, cameras.height)[0].shape[0]


def nerf_table(system, cameras, M: int, times: tuple, rates: SimpleNamespace) -> list[tuple]:
    """The NeRF step's parts with their counted FLOPs and bytes; ``times`` = ms of the hash grid, the
    MLP, the render, the guidance, Adam and the whole step, all for ``M`` samples."""
    t_hash, t_mlp, t_render, t_guidance, t_adam, t_step = times
    encoding, network, renderer = system.geometry.encoding, system.geometry.network, system.renderer
    L, Fdim = encoding.active_levels, encoding.cfg.n_features_per_level
    widths = [encoding.output_dim] + [m.out_features for m in network if isinstance(m, torch.nn.Linear)]
    mlp_flops = 3 * 2 * M * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    corners = M * L * 8
    hash_bytes = corners * Fdim * 4 * 3 + encoding.table.numel() * 4 + 2 * M * L * Fdim * 4
    R, S = len(cameras) * cameras.height * cameras.width, math.ceil(2 * renderer.grid.radius / renderer.step_size())
    g_flops, g_bytes = guidance_cost(len(cameras), n_references(system, cameras), 3 * cameras.height * cameras.width)
    a_flops, a_bytes = adam_cost(system)
    rows = [
        ("hash grid fwd+bwd", t_hash, 30 * corners * Fdim, hash_bytes),
        ("MLP fwd+bwd", t_mlp, mlp_flops, 3 * 4 * M * sum(widths)),
        ("marching + compositing", t_render - t_hash - t_mlp, 60 * R * S, 2 * R * S * 4 * 12),  # ~12 [R,S] arrays
        ("guidance (prior + SDS)", t_guidance, g_flops, g_bytes),
        ("Adam", t_adam, a_flops, a_bytes),
    ]
    rows.append(("rest", t_step - sum(r[1] for r in rows), 0.0, 0.0))
    return finish(rows, t_step, mlp_flops + g_flops, rates)


def nerf_tables(args, rates: SimpleNamespace, trained: tuple) -> tuple[dict[bool, list[tuple]], torch.Tensor]:
    """(part, ms, MFLOP, MB, floor ms) of the NeRF demo step on the compiled kernels (key True) and
    on the torch path (False): the parts of both paths and then their whole steps timed round-robin."""
    system, step, max_steps = trained
    geometry, renderer = system.geometry, system.renderer
    cameras = system.sampler.sample()
    points = captured_samples(system, cameras)
    unit = (points / geometry.radius + 1.0) * 0.5
    encoding = geometry.encoding
    M = len(points)
    grad_feat, grad_out = torch.randn(M, encoding.output_dim), torch.randn(M, 4)
    features = encoding(unit).detach().requires_grad_(True)

    def hash_fb():
        encoding(unit).backward(grad_feat)

    def mlp_fb():
        geometry.run_network(features).backward(grad_out)

    def render_fb():
        system.render(cameras, shading="albedo", training=True)["rgb"].sum().backward()

    rgb = system.render(cameras, shading="albedo", training=True)["rgb"].detach()

    def guidance():
        system.guidance(rgb, cameras, system.prompt)

    paths = (True, False)
    fns = [on_path(system, c, fn) for c in paths for fn in (hash_fb, mlp_fb, render_fb, guidance)]
    hash_k, mlp_k, render_k, guidance_k, hash_t, mlp_t, render_t, guidance_t = interleaved_ms(fns, args.repeats)
    t_adam = adam_ms(system, args.repeats)
    system.zero_grad(set_to_none=True)
    counter = iter(range(step, step + 10 * args.repeats))
    steps = [on_path(system, c, lambda: system.training_step(next(counter), max_steps)) for c in paths]
    step_k, step_t = interleaved_ms(steps, args.repeats)
    set_cpu_kernels(system, "auto")
    times = {True: (hash_k, mlp_k, render_k, guidance_k, step_k), False: (hash_t, mlp_t, render_t, guidance_t, step_t)}
    tables = {c: nerf_table(system, cameras, M, (t_hash, t_mlp, t_render, t_guidance, t_adam, t_step), rates)
              for c, (t_hash, t_mlp, t_render, t_guidance, t_step) in times.items()}
    R, S = len(cameras) * cameras.height * cameras.width, math.ceil(2 * renderer.grid.radius / renderer.step_size())
    L, n_refs = encoding.active_levels, n_references(system, cameras)
    print(f"NeRF demo step: {M} samples of {R}·{S}, {L} levels, {n_refs} references; whole step "
          f"{step_k:.1f} ms on the compiled CPU kernels, {step_t:.1f} ms on the torch path")
    return tables, unit


def gaussian_row(args, rates: SimpleNamespace) -> list[tuple]:
    system, step, max_steps = trained_system("configs/sds-gs.yaml", args.warmup_steps)
    cameras = system.sampler.sample()

    def render_fb():
        system.render(cameras, shading="albedo", training=True)["rgb"].sum().backward()

    t_render = thread_ms(render_fb, args.repeats)
    rgb = system.render(cameras, shading="albedo", training=True)["rgb"].detach()
    prior = system.prior.cfg

    def guidance_on(compiled: bool):
        def run():
            prior.cpu_kernel = compiled
            system.guidance(rgb, cameras, system.prompt)
        return run

    t_guidance, t_guidance_torch = interleaved_ms([guidance_on(True), guidance_on(False)], args.repeats)
    prior.cpu_kernel = "auto"
    t_adam = adam_ms(system, args.repeats)
    system.zero_grad(set_to_none=True)
    t_step = timed_steps(system, step, max_steps, args.repeats)
    n, B = system.geometry.num_gaussians, len(cameras)
    pixels = 3 * cameras.height * cameras.width
    n_refs = n_references(system, cameras)
    pairs = pair_count(system, cameras)
    g_flops, g_bytes = guidance_cost(B, n_refs, pixels)
    a_flops, a_bytes = adam_cost(system)
    rows = [
        ("render fwd+bwd (projection + sparse raster)", t_render, 40 * pairs + 400 * n * B, 2 * 4 * 12 * pairs),
        ("guidance (prior + SDS)", t_guidance, g_flops, g_bytes),
        ("Adam", t_adam, a_flops, a_bytes),
    ]
    rows.append(("rest", t_step - sum(r[1] for r in rows), 0.0, 0.0))
    print(f"Gaussian demo step: {n} Gaussians, {pairs} live (Gaussian, pixel) pairs, whole step {t_step:.1f} ms; "
          f"guidance {t_guidance:.1f} ms with the compiled prior, {t_guidance_torch:.1f} ms on its torch path")
    return finish(rows, t_step, g_flops, rates)


def pair_count(system, cameras) -> int:
    from threestudio_like.renderers import gaussian as G

    with torch.no_grad():
        p = system.geometry.activated()
        meta = G.project_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], cameras.viewmats_opencv(),
                                   cameras.intrinsics(), cameras.width, cameras.height)
        return len(live_pairs(meta, p["opacities"], cameras.width, cameras.height)["row"])


def live_pairs(meta: dict, opacities, width: int, height: int, max_alpha: float = 0.999) -> dict:
    from threestudio_like.renderers.gaussian_pairs import live_pairs as pairs_of

    order = torch.argsort(meta["depths"].detach(), dim=1)
    visible = (opacities.expand_as(meta["depths"]) * meta["visible"]).detach()
    return pairs_of(meta["means2d"].detach(), meta["conics"].detach(), visible, meta["radii"], order, width, height, max_alpha)


def finish(rows: list[tuple], t_step: float, gemm_flops: float, rates: SimpleNamespace) -> list[tuple]:
    table = [(name, ms, flops / 1e6, nbytes / 1e6, floor_ms(flops, nbytes, rates)) for name, ms, flops, nbytes in rows]
    floor = sum(r[4] for r in table)
    arithmetic = 1000.0 * gemm_flops / (rates.gemm * 1e9)
    table.append(("whole step", t_step, sum(r[2] for r in table), sum(r[3] for r in table), floor))
    table.append(("arithmetic floor (matrix products)", arithmetic, gemm_flops / 1e6, 0.0, arithmetic))
    return table


def print_parts(title: str, table: list[tuple]) -> None:
    print(f"\n{title}\n| part | ms | MFLOP | MB | floor ms | ratio |\n|---|---|---|---|---|---|")
    for name, ms, mflop, mb, floor in table[:-1]:
        print(f"| {name} | {ms:.2f} | {mflop:.1f} | {mb:.1f} | {floor:.2f} | {ms / floor if floor > 0 else float('nan'):.1f} |")
    step, arithmetic = table[-2][1], table[-1][1]
    print(f"| step / arithmetic floor ({arithmetic:.2f} ms) | | | | | **{step / arithmetic:.1f}** |")


# --------------------------------------------------------------------------------------------------
# Against the peers
# --------------------------------------------------------------------------------------------------
def hash_peer(args, HashEncoding, points) -> None:
    """Our hash grid against nerfstudio's torch HashEncoding: same levels and table, fwd + bwd."""
    from threestudio_like.geometry.hashgrid import HashGrid, HashGridConfig

    torch.manual_seed(0)
    print("\n| hash grid fwd+bwd (same table, all levels hashed) | points | ours ms (compiled) | ours ms (torch path) | nerfstudio ms | "
          "ours / peer (compiled, torch) | max abs Δ out | max abs Δ table grad |\n|---|---|---|---|---|---|---|---|")
    # the demo's and threestudio's resolutions; the finest a half above an integer, so that nerfstudio's
    # float32 floor(16·g^l) and ours give the same integer resolution on every level
    for levels, log2, finest in ((8, 12, 127.5), (16, 12, 4096.5)):
        peer = HashEncoding(num_levels=levels, min_res=16, max_res=finest, log2_hashmap_size=log2, implementation="torch")
        ours = HashGrid(HashGridConfig(n_levels=levels, log2_hashmap_size=log2, base_resolution=16,
                                       per_level_scale=float(peer.growth_factor), start_level=levels))
        if ours.n_dense or ours.resolutions != peer.scalings.int().tolist():
            raise RuntimeError("the comparison needs every level hashed, at the same resolutions")
        with torch.no_grad():
            peer.hash_table.uniform_(-1.0, 1.0)
            ours.table.copy_(peer.hash_table)
        grad = torch.randn(len(points), levels * 2)
        times = {}
        for name, module, kernel in (("torch", ours, False), ("ours", ours, True), ("peer", peer, None)):
            if kernel is not None:
                ours.cfg.cpu_kernel = kernel
            module.zero_grad(set_to_none=True)
            times[name] = thread_ms(lambda m=module: m(points).backward(grad), args.repeats)
            module.zero_grad(set_to_none=True)
            module(points).backward(grad)  # leaves the compiled path's gradient in ours.table.grad
        d_out = (ours(points) - peer(points)).abs().max().item()
        d_grad = (ours.table.grad - peer.hash_table.grad).abs().max().item()
        print(f"| {levels} levels ({ours.resolutions[0]}…{ours.resolutions[-1]}), 2^{log2} | {len(points)} | {times['ours']:.1f} | "
              f"{times['torch']:.1f} | {times['peer']:.1f} | {times['ours'] / times['peer']:.2f}, {times['torch'] / times['peer']:.2f} | "
              f"{d_out:.1e} | {d_grad:.1e} |")


def gaussian_scene(n: int, res: int, batch: int = 4, seed: int = 0):
    """n Gaussians of the demo's initialisation (opacity 0.5) and ``batch`` demo cameras."""
    from threestudio_like.data.cameras import RandomCameraConfig, RandomCameraSampler
    from threestudio_like.geometry.gaussians import GaussianConfig, GaussianSplatting

    torch.manual_seed(seed)
    geometry = GaussianSplatting(GaussianConfig(init_num_points=n, init_opacity=0.5))
    sampler = RandomCameraSampler(RandomCameraConfig(width=res, height=res, batch_size=batch, camera_distance_range=[2.5, 2.5],
                                                     fovy_range=[40.0, 40.0], elevation_range=[-10.0, 60.0]))
    p = {k: v.detach() for k, v in geometry.activated().items()}
    return p, sampler.sample(), torch.rand(batch, n, 4)


def ours_gaussian(p: dict, cameras, colors, res: int):
    from threestudio_like.renderers import gaussian as G

    meta = G.project_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], cameras.viewmats_opencv(), cameras.intrinsics(), res, res)
    opacity = p["opacities"].expand_as(meta["depths"]) * meta["visible"]
    return G.rasterize_sparse(meta["means2d"], meta["conics"], opacity, colors, meta["depths"], meta["radii"], res, res)


def peer_gaussian(ref, p: dict, cameras, colors, res: int):
    """gsplat's torch projection, then ``accumulate`` over the live pairs (the pairs its CUDA
    ``rasterize_to_indices_in_range`` would give, enumerated here without autograd)."""
    from threestudio_like.geometry.gaussian_ops import covariance_3d
    from threestudio_like.renderers import gaussian as G

    C, N = colors.shape[:2]
    covars = covariance_3d(p["quats"], p["scales"])
    radii, means2d, depths, conics, _ = ref.projection(p["means"], covars, cameras.viewmats_opencv(), cameras.intrinsics(), res, res)
    with torch.no_grad():  # our opacity-aware radii and culling choose the same pairs for both
        meta = G.project_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], cameras.viewmats_opencv(), cameras.intrinsics(), res, res)
        e = live_pairs(meta, p["opacities"], res, res)
        gid = e["row_gid"][e["row"]]
        pixel = e["pixel"] % (res * res)
        image_ids, gaussian_ids = gid // N, gid % N
    opacity = (p["opacities"].expand_as(depths) * meta["visible"])
    return ref.accumulate(means2d, conics, opacity, colors, gaussian_ids, pixel, image_ids, res, res)


def gaussian_peer(args, ref) -> None:
    print("\n| Gaussian raster fwd+bwd, batch 4 | pairs | ours ms | gsplat torch ms | ours / peer | max abs Δ image | max rel Δ grad |\n|---|---|---|---|---|---|---|")
    for n, res in args.gs_sizes:
        base, cameras, colors = gaussian_scene(n, res)
        probe = None

        def run(fn):
            leaves = {k: v.clone().requires_grad_(True) for k, v in base.items()}
            feats = colors.clone().requires_grad_(True)
            image, alpha = fn(leaves, cameras, feats, res)
            nonlocal probe
            probe = torch.linspace(0.0, 1.0, image.numel()).view_as(image) if probe is None else probe
            ((image * probe).sum() + alpha.square().sum()).backward()
            return image, [leaves[k].grad for k in ("means", "quats", "scales", "opacities")] + [feats.grad]

        ours_fn = ours_gaussian
        peer_fn = lambda pp, c, f, r: peer_gaussian(ref, pp, c, f, r)  # noqa: E731
        repeats = max(3, args.repeats // (4 if res >= 128 else 1))
        t_ours, t_peer = thread_ms(lambda: run(ours_fn), repeats, 1), thread_ms(lambda: run(peer_fn), repeats, 1)
        (img_o, grads_o), (img_p, grads_p) = run(ours_fn), run(peer_fn)
        d_img = (img_o - img_p).abs().max().item()
        d_grad = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(grads_o, grads_p))
        with torch.no_grad():
            meta_pairs = pair_count_of(base, cameras, res)
        print(f"| {n} Gaussians, {res}² | {meta_pairs} | {t_ours:.0f} | {t_peer:.0f} | {t_ours / t_peer:.2f} | {d_img:.1e} | {d_grad:.1e} |")


def pair_count_of(p: dict, cameras, res: int) -> int:
    from threestudio_like.renderers import gaussian as G

    meta = G.project_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], cameras.viewmats_opencv(), cameras.intrinsics(), res, res)
    return len(live_pairs(meta, p["opacities"], res, res)["row"])


def nerf_rows(args, rates: SimpleNamespace, peers_dir: Path) -> None:
    """The NeRF step on both CPU paths, then the hash grid against nerfstudio's."""
    nerf, points = nerf_tables(args, rates, trained_system("configs/sds-nerf.yaml", args.warmup_steps))
    for compiled, path in ((True, "compiled CPU kernels"), (False, "torch path (cpu_kernel: false)")):
        print_parts(f"NeRF demo step, {path} (configs/sds-nerf.yaml, 32², batch 4, SDS, embedded prior)", nerf[compiled])
    HashEncoding = peer_code.nerfstudio_hash_encoding(peers_dir)
    if HashEncoding is None:
        print(f"\nnerfstudio not found under {peers_dir} ({peer_code.NERFSTUDIO_FILE}): hash grid comparison skipped")
    else:
        hash_peer(args, HashEncoding, points)


def gaussian_rows(args, rates: SimpleNamespace, peers_dir: Path) -> None:
    """The Gaussian step, then the sparse rasterizer against gsplat's torch reference."""
    gaussian = gaussian_row(args, rates)
    print_parts("Gaussian demo step (configs/sds-gs.yaml, 32², batch 4, SDS, embedded prior)", gaussian)
    ref = peer_code.gsplat_reference(peers_dir, max_alpha=0.999)
    if ref is None:
        print(f"\ngsplat not found under {peers_dir} ({peer_code.GSPLAT_FILE}): rasterizer comparison skipped")
    else:
        gaussian_peer(args, ref)


def main(args) -> None:
    torch.set_num_threads(1)
    load = os.getloadavg()
    rates = machine_rates(args.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; sgemm {rates.gemm:.1f} GFLOP/s, copy {rates.copy:.1f} GB/s")
    peers_dir = Path(args.peers)
    if not args.gaussian_only:
        nerf_rows(args, rates, peers_dir)
    if not args.nerf_only:
        gaussian_rows(args, rates, peers_dir)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
