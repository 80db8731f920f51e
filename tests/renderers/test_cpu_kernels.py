"""The compiled CPU kernels (threestudio_like/kernels) give the torch path's outputs and gradients
to float rounding, on random inputs and at the edges; skipped, with the reason, where they cannot
be built."""
from __future__ import annotations

import pytest
import torch

from tests.hashgrid_reference import plain_encoding
from threestudio_like.geometry.hashgrid import HashGrid, HashGridConfig
from threestudio_like.kernels import build


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if not build.library_loaded():
        pytest.skip(f"the CPU kernels cannot be built here: {build.unavailable_reason()}")


def both_paths(module, run):
    """run() once on the compiled kernel and once on the torch path of ``module`` (its cfg.cpu_kernel)."""
    results = []
    for choice in (True, False):
        module.cfg.cpu_kernel = choice
        results.append(run())
    module.cfg.cpu_kernel = "auto"
    return results


# --- hash grid ------------------------------------------------------------------------------------
def edge_points(dtype, n_random: int, resolutions: list[int]) -> torch.Tensor:
    """Random points, plus the box's corners and faces, vertices of every level (lower = N − 1
    clamping at x = 1) and points outside [0,1] (clamped)."""
    torch.manual_seed(0)
    x = torch.rand(n_random, 3, dtype=dtype)
    corners = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=dtype)
    vertices = torch.cat([torch.randint(0, r + 1, (6, 3)).to(dtype) / r for r in resolutions])
    outside = torch.tensor([[-0.3, 0.5, 1.2], [1.5, -2.0, 0.25], [0.0, 1.0, 1.0 + 1e-7]], dtype=dtype)
    return torch.cat([x, corners, vertices, outside])


@pytest.mark.parametrize("features", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hash_kernel_matches_the_torch_path_and_the_textbook_encoding(features, dtype):
    cfg = HashGridConfig(n_levels=5, n_features_per_level=features, log2_hashmap_size=10, base_resolution=4,
                         per_level_scale=1.8, start_level=5)
    grid = HashGrid(cfg).to(dtype)
    assert 0 < grid.n_dense < cfg.n_levels  # dense and hashed levels both exercised
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    x = edge_points(dtype, 500, grid.resolutions).requires_grad_(True)
    probe = torch.randn(len(x), grid.output_dim, dtype=dtype)

    def run():
        out = grid(x)
        return (out, *torch.autograd.grad((out * probe).sum(), (grid.table, x)))

    (k_out, k_table, k_x), (t_out, t_table, t_x) = both_paths(grid, run)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(k_out, t_out, **tol)
    torch.testing.assert_close(k_table, t_table, **tol)
    # ∂/∂x carries the resolutions (up to 4·1.8⁴ ≈ 42) as factors, and so does its rounding
    torch.testing.assert_close(k_x, t_x, rtol=tol["rtol"] * 50, atol=tol["atol"] * 50)
    assert (k_x[-3:] == 0).sum() >= 4  # clamped coordinates get no gradient, as on the torch path
    plain = plain_encoding(grid, x.detach().clamp(0.0, 1.0))  # the textbook per-corner loop
    torch.testing.assert_close(k_out, plain, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


def test_hash_kernel_progressive_levels_and_empty_input():
    cfg = HashGridConfig(n_levels=8, log2_hashmap_size=12, base_resolution=16, per_level_scale=1.3459, start_level=3)
    grid = HashGrid(cfg)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    x = torch.rand(2000, 3)
    grad = torch.randn(2000, grid.output_dim)

    def run():
        grid.table.grad = None
        out = grid(x)
        out.backward(grad)
        return out, grid.table.grad.clone()

    (k_out, k_grad), (t_out, t_grad) = both_paths(grid, run)
    torch.testing.assert_close(k_out, t_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_grad, t_grad, rtol=1e-6, atol=1e-6)
    assert (k_out[:, 3 * 2:] == 0).all() and (k_out[:, : 3 * 2] != 0).any()  # levels 4..8 still masked
    rows_of_inactive = grid.offset_list[3]  # the hashed levels sit first in the table: level 3 is hashed
    assert grid.n_dense <= 3 and (k_grad[rows_of_inactive:rows_of_inactive + 2**12] == 0).all()
    assert grid(torch.zeros(0, 3)).shape == (0, grid.output_dim)


def test_hash_kernel_feature_major_layout_holds_the_same_numbers():
    """The layout the fused MLP reads ([F·L, N] storage seen as [N, F·L]): bit-identical features, and a
    feature-major gradient gives the table the bit-identical gradient of a row-major one."""
    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=11, base_resolution=8, per_level_scale=1.5, start_level=4)
    grid = HashGrid(cfg)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    x, grad = torch.rand(1000, 3), torch.randn(1000, grid.output_dim)
    rows, columns = grid(x), grid(x, feature_major=True)
    assert columns.shape == rows.shape and columns.stride() == (1, 1000) and torch.equal(rows, columns)
    assert (columns[:, 4 * 2:] == 0).all()  # the inactive levels' zeros are written in this layout too
    grads = []
    for g in (grad, grad.t().contiguous().t()):
        grid.table.grad = None
        grid(x, feature_major=True).backward(g)
        grads.append(grid.table.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_hash_kernel_backward_is_the_same_with_two_threads():
    """The table's scatter-add runs one level per thread: no two threads write the same row."""
    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=11, base_resolution=8, per_level_scale=1.5, start_level=6)
    grid = HashGrid(cfg)
    x, grad = torch.rand(5000, 3), torch.randn(5000, grid.output_dim)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            grid.table.grad = None
            grid(x).backward(grad)
            grads.append(grid.table.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1])


def test_cpu_kernel_config_key():
    with pytest.raises(ValueError, match="cpu_kernel='fast' is not accepted; use one of auto, true, false"):
        HashGridConfig(cpu_kernel="fast")
    assert HashGridConfig(cpu_kernel="false").cpu_kernel is False


# --- volume renderer ------------------------------------------------------------------------------
def nerf_and_renderer(grid_resolution: int = 16):
    from threestudio_like.config import parse_structured
    from threestudio_like.registry import lookup

    geometry_cls, renderer_cls = lookup("geometry", "implicit-volume"), lookup("renderer", "nerf-volume-renderer")
    encoding = {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8, "per_level_scale": 2.0, "start_level": 4}
    geometry = geometry_cls(parse_structured(geometry_cls.Config, {"pos_encoding": encoding}, "system.geometry"))
    with torch.no_grad():  # a lumpy field: rays that saturate, rays that stay thin
        geometry.encoding.table.normal_(0.0, 1.0)
    renderer = renderer_cls(parse_structured(renderer_cls.Config, {"num_samples_per_ray": 48, "grid_resolution": grid_resolution},
                                             "system.renderer"))
    return geometry, renderer


def edge_rays(n_random: int):
    """Random rays towards the ball, plus rays that miss it, graze it, start inside it and start
    on its surface → o, d [R,3]."""
    torch.manual_seed(1)
    o = torch.nn.functional.normalize(torch.randn(n_random, 3), dim=-1) * 2.5
    d = torch.nn.functional.normalize(-o + 0.5 * torch.randn(n_random, 3), dim=-1)
    o_edge = torch.tensor([[0.0, 3.0, 0.0], [1.0, 2.0, 0.0], [0.1, -0.2, 0.3], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    d_edge = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.6, 0.0, 0.8], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    return torch.cat([o, o_edge]), torch.cat([d, d_edge])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("prune", [True, False])
def test_compiled_marching_keeps_the_same_samples_and_weights(training, prune):
    geometry, renderer = nerf_and_renderer()
    renderer.cfg.grid_prune = prune
    renderer.grid.binaries.copy_(torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(2)) < 0.5)
    o, d = edge_rays(600)
    params = list(geometry.parameters())
    results = []
    for march in (renderer._march_compiled, renderer._march_torch):
        torch.manual_seed(3)  # the same jitter draws for both
        ray, t, points, albedo, w = march(geometry, o, d, training)
        probe = torch.linspace(-1.0, 1.0, len(w))
        results.append((ray, t, points, w, torch.autograd.grad((w * probe).sum() + albedo.sum(), params)))
    (k_ray, k_t, k_points, k_w, k_grads), (t_ray, t_t, t_points, t_w, t_grads) = results
    assert torch.equal(k_ray, t_ray) and torch.equal(k_t, t_t) and torch.equal(k_points, t_points)
    counts = torch.bincount(k_ray, minlength=len(o))
    assert (counts == 0).sum() >= 2 and counts[-5:-3].eq(0).all()  # rays that miss or only graze: no sample
    assert counts[-3] > 0 and counts[-1] > 0  # from inside the ball
    torch.testing.assert_close(k_w, t_w, rtol=1e-5, atol=1e-7)
    for k, t in zip(k_grads, t_grads):
        torch.testing.assert_close(k, t, rtol=1e-4, atol=1e-5 * float(t.abs().max()))


def plain_composite(sigma, delta, t, color, ray, n_rays):
    """The textbook transcription: per ray, T_i = Π_{j<i} (1 − α_j), w_i = T_i α_i, and the sums of
    w·c, w, w·t; one Python loop over rays."""
    rgb, opacity, depth = torch.zeros(n_rays, 3, dtype=sigma.dtype), torch.zeros(n_rays, 1, dtype=sigma.dtype), torch.zeros(n_rays, 1, dtype=sigma.dtype)
    weights = []
    for r in range(n_rays):
        idx = torch.nonzero(ray == r)[:, 0]
        alpha = 1.0 - torch.exp(-sigma[idx] * delta[idx])
        trans = torch.cumprod(torch.cat([alpha.new_ones(1), 1.0 - alpha[:-1]]), 0)
        w = trans * alpha
        weights.append(w)
        rgb = rgb.index_put((torch.tensor([r]),), (w[:, None] * color[idx]).sum(0, keepdim=True))
        opacity = opacity.index_put((torch.tensor([r]),), w.sum().reshape(1, 1))
        depth = depth.index_put((torch.tensor([r]),), (w * t[idx]).sum().reshape(1, 1))
    return torch.cat(weights), rgb, opacity, depth


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_weights_and_compositing_match_the_textbook_sums(dtype):
    from threestudio_like.kernels.volume import composite_rays, packed_weights

    torch.manual_seed(4)
    n_rays = 12
    counts = torch.tensor([0, 1, 5, 0, 30, 7, 2, 0, 25, 3, 9, 0])  # empty rays among them, the last too
    ray = torch.repeat_interleave(torch.arange(n_rays), counts)
    delta = torch.rand(len(ray), dtype=dtype) * 0.1
    sigma = torch.rand(len(ray), dtype=dtype) * 20.0
    sigma[ray == 4] = 1e4  # a fully opaque ray: T ≤ e^{−100} after its first sample
    delta[ray == 4] += 0.01
    t = torch.cumsum(delta, 0)
    color = torch.rand(len(ray), 3, dtype=dtype)
    g_w, g_rgb, g_op, g_depth = (torch.randn(len(ray), dtype=dtype), torch.randn(n_rays, 3, dtype=dtype),
                                 torch.randn(n_rays, 1, dtype=dtype), torch.randn(n_rays, 1, dtype=dtype))

    def run(fn):
        leaves = (sigma.clone().requires_grad_(True), color.clone().requires_grad_(True))
        outs = fn(*leaves)
        loss = sum((o * g).sum() for o, g in zip(outs, (g_w, g_rgb, g_op, g_depth)))
        return outs, torch.autograd.grad(loss, leaves)

    def compiled(s, c):
        w = packed_weights(s, delta, ray)
        return (w, *composite_rays(ray, w, t, c, n_rays))

    (k_outs, k_grads), (p_outs, p_grads) = run(compiled), run(lambda s, c: plain_composite(s, delta, t, c, ray, n_rays))
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for name, k, p in zip(("w", "rgb", "opacity", "depth", "∂σ", "∂color"), (*k_outs, *k_grads), (*p_outs, *p_grads)):
        torch.testing.assert_close(k, p, **tol, msg=name)
    assert k_outs[2][4, 0] == 1.0 and k_outs[0][ray == 4][1:].max() < 1e-40  # opaque: all weight on the first sample
    assert (k_outs[2][counts == 0] == 0).all()


def test_compiled_render_matches_the_torch_render_with_a_batch_and_normals():
    from threestudio_like.data.cameras import make_cameras
    from threestudio_like.materials.point_light import PointLightConfig, PointLightMaterial
    from threestudio_like.renderers.background import SolidColorBackground, SolidColorConfig

    geometry, renderer = nerf_and_renderer()
    renderer.update_step(0, 100, geometry)  # a real occupancy grid from the field
    n = 3
    cameras = make_cameras(torch.full((n,), 15.0), torch.linspace(0, 240, n), torch.full((n,), 2.0), torch.full((n,), 50.0), 12, 12)
    material, background = PointLightMaterial(PointLightConfig(ambient_only_steps=0)), SolidColorBackground(SolidColorConfig())
    params = list(geometry.parameters())

    def run():
        torch.manual_seed(5)
        out = renderer.render(geometry, material, background, cameras, shading="diffuse", training=True, with_normal=True)
        loss = sum((value * torch.linspace(-1.0, 1.0, value.numel()).view_as(value)).sum() for value in out.values())
        return out, torch.autograd.grad(loss, params)

    (k_out, k_grads), (t_out, t_grads) = both_paths(renderer, run)
    assert set(k_out) == {"rgb", "opacity", "depth", "normal", "orient"}
    assert k_out["opacity"].max() > 0.9 and k_out["opacity"].min() < 0.1  # saturated and empty pixels
    for key in k_out:
        torch.testing.assert_close(k_out[key], t_out[key], rtol=1e-5, atol=1e-6, msg=key)
    for k, t in zip(k_grads, t_grads):
        torch.testing.assert_close(k, t, rtol=1e-4, atol=1e-5 * float(t.abs().max()))


def test_a_failed_build_warns_once_and_renders_on_the_torch_path(tmp_path):
    """No working compiler (CXX=false) and an empty cache: one warning, then the torch path's numbers."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import torch, warnings\n"
        "from threestudio_like.geometry.hashgrid import HashGrid, HashGridConfig\n"
        "grid = HashGrid(HashGridConfig(n_levels=4, log2_hashmap_size=10, start_level=4))\n"
        "x = torch.rand(50, 3)\n"
        "auto = grid(x)\n"
        "grid.cfg.cpu_kernel = False\n"
        "print('same', torch.equal(auto, grid(x)), grid(x).abs().sum().item() > 0)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, CXX="false", TORCH_EXTENSIONS_DIR=str(tmp_path), PYTHONPATH=str(root))
    env.pop("THREESTUDIO_LIKE_CPU_KERNELS", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "same True True"
    warnings_seen = [line for line in done.stderr.splitlines() if "the CPU kernels did not build" in line]
    assert len(warnings_seen) == 1 and "the torch path is used" in warnings_seen[0]
    assert "compiling the CPU kernels (once" in done.stderr


# --- the embedded prior's sphere tracer -----------------------------------------------------------
def every_primitive():
    """Two shapes using all eight primitive kinds, some rotated, one carved."""
    from threestudio_like.priors.sdf import Primitive, Shape

    c, s = 0.8, 0.6  # a rotation about (1, 1, 0)/√2 by acos(0.8)
    k = (1 - c) / 2
    tilt = ((c + k, k, s / 2**0.5), (k, c + k, -s / 2**0.5), (-s / 2**0.5, s / 2**0.5, c))
    first = Shape([Primitive("box", (0.3, 0.2, 0.25), (0.1, 0.0, -0.2)), Primitive("sphere", (0.22,), (0.1, 0.0, 0.2)),
                   Primitive("cylinder", (0.1, 0.4), (0.1, 0.0, 0.0), carve=True),
                   Primitive("prism", (0.3, 0.2, 0.25), (-0.3, 0.3, 0.3), rotation=tilt)])
    second = Shape([Primitive("cone", (0.2, 0.4), (0.5, -0.3, 0.0), rotation=tilt), Primitive("torus", (0.25, 0.06), (-0.4, -0.3, 0.0)),
                    Primitive("capsule", (0.08, 0.15), (0.0, 0.5, -0.1), rotation=tilt), Primitive("pyramid", (0.2, 0.3), (-0.5, 0.2, -0.3))])
    return [first, second]


def test_compiled_scene_distance_matches_the_torch_sdf():
    from threestudio_like.kernels import sdf_trace
    from threestudio_like.priors.sdf import _distance

    shapes = every_primitive()
    torch.manual_seed(0)
    points = torch.rand(5000, 3) * 2.4 - 1.2
    torch.testing.assert_close(sdf_trace.distance(points, sdf_trace.part_table(shapes)), _distance(shapes, points), rtol=0, atol=1e-6)


@pytest.mark.parametrize("prompt", ["a red ball on a blue box", "a house", "a mug", "a green cylinder next to a yellow cone", "an orange torus"])
def test_compiled_tracer_gives_the_torch_tracers_pictures(prompt):
    from threestudio_like.priors.embedded import EmbeddedPrior, EmbeddedPriorConfig

    prior = EmbeddedPrior(EmbeddedPriorConfig(cache_dir=""))
    cameras = prior.reference_cameras(20, 16)[::3]  # 72 of the 216 reference views
    scene = prior.scene(prompt)
    fast, plain = scene.render(cameras, cpu_kernel=True), scene.render(cameras, cpu_kernel=False)
    assert fast["mask"].sum() > 100
    for key in ("rgb", "mask", "depth", "normal"):
        # the same marching to float rounding: a hit point moves by rounding along the ray, its
        # normal by rounding over the 1e-3 difference step; a ray whose last step lands within
        # rounding of the 1e-3 hit threshold could flip (none did here, at 20×16 or 32² or 64²)
        far = (fast[key] - plain[key]).abs() > 2e-3
        assert far.float().mean() <= 1e-3, (key, far.sum().item())


def test_block_uniform_draws_are_torch_rands_and_continue_its_stream():
    """fused.uniform gives torch.rand's float32 numbers bit for bit and leaves the default generator
    where torch.rand would: a fresh seed, mid-stream, across the 624-draw state refreshes, empty."""
    from threestudio_like.kernels import volume as fused

    shapes = [(1, 1), (1, 623), (1, 1), (0, 37), (2, 312), (1, 625), (4096, 37), (3, 5)]
    for seed in (0, 12345):
        torch.manual_seed(seed)
        expected = [torch.rand(*shape) for shape in shapes] + [torch.randn(7), torch.rand(1000)]
        torch.manual_seed(seed)
        got = [fused.uniform(*shape) for shape in shapes] + [torch.randn(7), torch.rand(1000)]  # torch continues
        for e, g in zip(expected, got):
            assert g.dtype == torch.float32 and g.shape == e.shape and torch.equal(g, e)
