"""Every CPU speed-up is exact to float rounding: each fast path against the straightforward
computation it replaces, on random inputs, outputs and gradients."""
from __future__ import annotations

import math

import pytest
import torch

from tests.hashgrid_reference import plain_encoding
from threestudio_like.geometry.hashgrid import HashGrid, HashGridConfig
from threestudio_like.kernels import library_loaded
from threestudio_like.priors.embedded import exact_x0
from threestudio_like.renderers import gaussian as G
from threestudio_like.renderers import gaussian_pairs as GP
from threestudio_like.renderers.gaussian_composite import CompositePairs
from threestudio_like.renderers.segments import segments


# --- hash grid: complex index_add_ backward -------------------------------------------------------
@pytest.mark.parametrize("features", [2, 4])  # 2: the complex path; 4: the generic one
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hash_grid_outputs_and_gradients_match_the_plain_loop(features, dtype):
    torch.manual_seed(features)
    cfg = HashGridConfig(n_levels=5, n_features_per_level=features, log2_hashmap_size=10, base_resolution=4,
                         per_level_scale=1.8, start_level=5)
    grid = HashGrid(cfg).to(dtype)
    assert 0 < grid.n_dense < cfg.n_levels  # both index kinds are exercised
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    x = torch.rand(700, 3, dtype=dtype, requires_grad=True)
    probe = torch.randn(700, grid.output_dim, dtype=dtype)
    fast = grid(x)
    g_table, g_x = torch.autograd.grad((fast * probe).sum(), (grid.table, x))
    plain = plain_encoding(grid, x)
    p_table, p_x = torch.autograd.grad((plain * probe).sum(), (grid.table, x))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, plain, **tol)
    torch.testing.assert_close(g_table, p_table, **tol)
    # ∂/∂x carries factors of the resolution (up to 4·1.8⁴ ≈ 42): its rounding scales with them
    torch.testing.assert_close(g_x, p_x, rtol=tol["rtol"], atol=tol["atol"] * 50)
    assert (p_table != 0).sum() > 100  # many rows reached, several by more than one corner


# --- embedded prior: shared rows, skipped and pruned references -----------------------------------
def plain_posterior_mean(x_t, alpha_bar, weights, images):
    """x̂0 = Σ_i softmax_i(log w_i − ‖x_t − √ᾱ x_i‖² / 2(1 − ᾱ)) x_i over uncentred images, float64."""
    x_t, images, weights = x_t.double(), images.double(), weights.double()
    a = alpha_bar.double()[:, None, None]
    sq = ((x_t[:, None, :] - a.sqrt() * images[None]) ** 2).sum(-1)  # [N,K]
    logits = weights.log() - sq / (2.0 * (1.0 - a[:, :, 0]))
    return torch.softmax(logits, dim=1) @ images


def prior_case(alpha_bar: float, seed: int, K: int = 61, D: int = 50, B: int = 5):
    """Images [K,D] sharing most of their content, x_t [2B,D] (B noisy images, each twice: a prompt
    and its null condition, as in CFG), ᾱ [2B] and weights [2B,K]: the prompt rows weigh 12
    references, the null rows all but 5, some far below the others. K is no multiple of the kernel's
    block of 8, D none of its 16 lanes, and 2B > 8 rows (its row tile)."""
    torch.manual_seed(seed)
    base = torch.rand(D) * 2 - 1
    images = base + 0.3 * torch.randn(K, D)
    a = torch.full((2 * B,), alpha_bar)
    clean = images[torch.randint(0, K, (B,))] + 0.05 * torch.randn(B, D)
    x = a[:B, None].sqrt() * clean + (1 - a[:B, None]).sqrt() * torch.randn(B, D)
    cond = torch.zeros(B, K)
    cond[:, :12] = torch.rand(B, 12) + 0.1
    null = torch.exp(-torch.rand(B, K) * 60.0)
    null[:, -5:] = 0.0
    return images, torch.cat([x, x]), a, torch.cat([cond, null])


def on_path(cpu_kernel: bool) -> bool:
    if cpu_kernel and not library_loaded():
        pytest.skip("the CPU kernels cannot be built here")
    return cpu_kernel


@pytest.mark.parametrize("cpu_kernel", [False, True])
@pytest.mark.parametrize("chunk", [4, 64])  # 4: rows split across chunks (a prompt apart from its null row)
@pytest.mark.parametrize("alpha_bar", [0.9999, 0.5, 0.0047])  # t small, middle, near T (ᾱ_999 = 0.0047)
def test_exact_x0_matches_the_plain_softmax(alpha_bar, chunk, cpu_kernel):
    images, x_t, a, weights = prior_case(alpha_bar, seed=int(alpha_bar * 100) + chunk)
    mean = images.mean(0)
    fast = exact_x0(x_t, a, weights, images - mean, mean, chunk=chunk, cpu_kernel=on_path(cpu_kernel))
    plain = plain_posterior_mean(x_t, a, weights, images)
    torch.testing.assert_close(fast.double(), plain, rtol=0, atol=2e-6)


@pytest.mark.parametrize("cpu_kernel", [False, True])
def test_exact_x0_gives_nan_where_the_input_is_nan(cpu_kernel):
    images, x_t, a, weights = prior_case(0.5, seed=3)
    x_t[1, 7] = float("nan")  # row 1, whose null twin is row 6: the twin is NaN too (same x_t)
    x_t[6] = x_t[1]
    mean = images.mean(0)
    fast = exact_x0(x_t, a, weights, images - mean, mean, cpu_kernel=on_path(cpu_kernel))
    nan_rows = torch.tensor([1, 6])
    assert torch.isnan(fast[nan_rows]).all()
    rest = torch.tensor([r for r in range(len(x_t)) if r not in (1, 6)])
    plain = plain_posterior_mean(x_t[rest], a[rest], weights[rest], images)
    torch.testing.assert_close(fast[rest].double(), plain, rtol=0, atol=2e-6)


def test_exact_x0_validates_weights():
    refs = torch.randn(4, 6)
    with pytest.raises(ValueError, match="every reference weight 0"):
        exact_x0(torch.randn(1, 6), torch.tensor([0.5]), torch.zeros(1, 4), refs, torch.zeros(6))


# --- Gaussian sparse path: row spans, done pixels skipped, dead pairs dropped before autograd -----
def random_splats(n: int, width: int, height: int):
    torch.manual_seed(n)
    means2d = torch.rand(2, n, 2) * torch.tensor([width, height])
    L = torch.randn(2, n, 2, 2) * 0.6 + torch.eye(2) * 2.0
    L[:, : n // 4] *= torch.tensor([[3.0, 0.3], [0.3, 0.2]])  # a quarter long, thin and tilted
    cov = L @ L.transpose(-1, -2)
    det = cov[..., 0, 0] * cov[..., 1, 1] - cov[..., 0, 1] ** 2
    conics = torch.stack([cov[..., 1, 1] / det, -cov[..., 0, 1] / det, cov[..., 0, 0] / det], -1)
    opacities = torch.rand(2, n) * 0.6 + 0.4  # dense enough that many pixels reach T < 1e-4
    opacities[:, -5:] = 0.005  # barely above 1/255: tiny spans
    # the box holding every α ≥ 1/255: 3.33 σ along each axis (exp(−3.33²/2) ≈ 1/255)
    radii = torch.ceil(3.33 * torch.stack([cov[..., 0, 0], cov[..., 1, 1]], -1).sqrt()).to(torch.int32)
    return means2d, conics, opacities, torch.rand(2, n, 3), torch.rand(2, n), radii


def plain_pairs(means2d, conics, opacities, radii, depths, width, height):
    """Every pixel of every box, one Gaussian at a time in depth order; a pixel keeps a pair while
    α ≥ 1/255 and its transmittance after the pair stays above 1e-4. → {pixel: [(gid, α), ...]},
    the count of pairs with α ≥ 1/255."""
    C, N = depths.shape
    per_pixel, log_T, alpha_pairs = {}, {}, 0
    for cam in range(C):
        for g in torch.argsort(depths[cam]).tolist():
            (mx, my), (rx, ry) = means2d[cam, g].tolist(), radii[cam, g].tolist()
            if rx <= 0:
                continue
            for py in range(height):
                if not abs(py + 0.5 - my) <= ry:
                    continue
                px = torch.tensor([x for x in range(width) if abs(x + 0.5 - mx) <= rx], dtype=torch.long)
                if len(px) == 0:
                    continue
                # σ with the renderer's own float32 arithmetic, so pairs at the 1/255 edge agree too
                sigma = GP.pair_sigma(means2d[cam, g][None], conics[cam, g][None], torch.tensor([py]),
                                      torch.zeros_like(px), px)
                alpha = opacities[cam, g] * torch.exp(-sigma.clamp(max=60.0))
                for x, s, a in zip(px.tolist(), sigma.tolist(), alpha.tolist()):
                    if s < 0 or a < 1 / 255:
                        continue
                    alpha_pairs += 1
                    pixel = (cam * height + py) * width + x
                    after = log_T.get(pixel, 0.0) + math.log1p(-min(a, 0.999))
                    if after > math.log(1e-4):
                        per_pixel.setdefault(pixel, []).append((cam * N + g, a))
                    log_T[pixel] = after
    return per_pixel, alpha_pairs


@pytest.mark.parametrize("chunks", [1, 8])
def test_live_pairs_are_the_plain_enumeration(chunks):
    width, height = 14, 11
    means2d, conics, opacities, _, depths, radii = random_splats(200, width, height)
    with torch.no_grad():  # chunks=1: nothing is skipped, only the row spans cut the candidates
        fast = GP.live_pairs(means2d, conics, opacities, radii, torch.argsort(depths, 1), width, height, chunks=chunks)
    plain, alpha_pairs = plain_pairs(means2d, conics, opacities, radii, depths, width, height)
    assert sum(map(len, plain.values())) < 0.6 * alpha_pairs  # the cut-off drops many pairs here
    gid = fast["row_gid"].index_select(0, fast["row"])
    got = {}
    for pixel, g, py, px in zip(fast["pixel"].tolist(), gid.tolist(), fast["row_py"][fast["row"]].tolist(), fast["px"].tolist()):
        assert pixel == ((g // 200) * height + py) * width + px
        got.setdefault(pixel, []).append(g)
    assert got == {pixel: [g for g, _ in pairs] for pixel, pairs in plain.items()}
    assert torch.equal(fast["pixel"][fast["first"]], torch.tensor(sorted(plain)))
    empty = GP.live_pairs(means2d[:, :0], conics[:, :0], opacities[:, :0], radii[:, :0], depths[:, :0].long(), width, height)
    assert len(empty["pixel"]) == len(empty["first"]) == len(empty["row_gid"]) == 0
    if chunks > 1:  # done pixels were skipped: fewer candidates than one pass makes
        every = GP.candidate_pairs(means2d, conics, opacities, radii, torch.argsort(depths, 1), width, height, chunks=1)
        some = GP.candidate_pairs(means2d, conics, opacities, radii, torch.argsort(depths, 1), width, height, chunks=chunks)
        assert len(some["row"]) < 0.9 * len(every["row"])


def test_composite_backward_is_the_derivative_of_its_forward():
    """The hand-written backward against autograd's numerical derivative (float64), and the forward
    against a per-pixel product written out: T_j = Π_{k<j} (1 − α_k), colour Σ α_j T_j f_j."""
    torch.manual_seed(5)
    pixel = torch.sort(torch.randint(0, 9, (40,))).values  # 9 pixels, some empty, runs of 1–10
    run = segments(pixel)
    alpha = (torch.rand(40, dtype=torch.float64) * 0.999).requires_grad_(True)
    alpha.data[pixel == pixel[-1]] = 0.999  # one pixel at the clamp
    colors = torch.rand(40, 3, dtype=torch.float64, requires_grad=True)
    composite = lambda a, c: CompositePairs.apply(a, c, pixel, run["first"], run["segment"], 10)  # noqa: E731
    assert torch.autograd.gradcheck(composite, (alpha, colors))
    image, opacity = composite(alpha, colors)
    none = torch.zeros(0, dtype=torch.float64, requires_grad=True)  # no pairs at all: an empty image, no gradient
    empty, clear = CompositePairs.apply(none, colors[:0], pixel[:0], run["first"][:0], run["segment"][:0], 10)
    (empty.sum() + clear.sum()).backward()
    assert not empty.any() and not clear.any() and none.grad.shape == (0,)
    for p in range(10):
        a, c = alpha[pixel == p].detach(), colors[pixel == p].detach()
        T = torch.cat([torch.ones(1, dtype=a.dtype), torch.cumprod(1 - a, 0)[:-1]])
        torch.testing.assert_close(image[p], (a * T) @ c if len(a) else torch.zeros(3, dtype=a.dtype))
        torch.testing.assert_close(opacity[p], 1 - torch.prod(1 - a))


def test_sparse_rasterizer_matches_dense_outputs_and_gradients():
    size = 12
    means2d, conics, opacities, features, depths, radii = random_splats(120, size, size)
    probe = torch.randn(2, size, size, 3)
    results = []
    for fn in (G.rasterize_sparse, G.rasterize_dense):
        leaves = [v.clone().requires_grad_(True) for v in (means2d, conics, opacities, features)]
        if fn is G.rasterize_sparse:
            image, alpha = fn(*leaves, depths, radii, size, size)
        else:
            image, alpha = fn(*leaves, depths, size, size, chunk_size=32, use_checkpoint=False)
        grads = torch.autograd.grad((image * probe).sum() + alpha.square().sum(), leaves)
        results.append((image, alpha, grads))
    (img_s, a_s, g_s), (img_d, a_d, g_d) = results
    assert (a_d > 0.999).float().mean() > 0.3  # many pixels stopped by the cut-off (T ≤ 1e-3)
    torch.testing.assert_close(img_s, img_d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a_s, a_d, rtol=1e-5, atol=1e-5)
    for name, gs, gd in zip(("means2d", "conics", "opacities", "features"), g_s, g_d):
        torch.testing.assert_close(gs, gd, rtol=1e-4, atol=1e-5 * float(gd.abs().max()), msg=name)


# --- fused Adam ----------------------------------------------------------------------------------
def test_fused_cpu_adam_matches_the_reference_loop():
    torch.manual_seed(0)
    start = [torch.randn(300, 2), torch.randn(8, 5)]
    runs = []
    for fused in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = torch.optim.Adam([{"params": params[:1], "lr": 0.01}, {"params": params[1:], "lr": 0.001}],
                                     betas=(0.9, 0.99), eps=1e-15, fused=fused)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            optimizer.step()
        runs.append(params)
    for plain, fused in zip(*runs):
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)


# --- volume renderer: packed transmittance, per-axis occupancy lookup ----------------------------
def test_packed_weights_match_the_dense_transmittance():
    from threestudio_like.renderers.occupancy import OccupancyGrid
    from threestudio_like.renderers.segments import segments
    from threestudio_like.renderers.volume import packed_weights

    torch.manual_seed(3)
    R, S = 50, 40
    keep = torch.rand(R, S) < 0.3
    keep[:3] = False  # rays with no sample at all
    flat = torch.nonzero(keep.reshape(-1))[:, 0]
    delta = torch.rand(R, S) * 0.05
    sigma = (torch.rand(len(flat)) * 40.0).requires_grad_(True)  # some rays go opaque
    fast = packed_weights(sigma, delta.reshape(-1)[flat], segments(flat // S))
    # the dense definition: σ = 0 where no sample was kept, T_i = exp(−Σ_{j<i} σ_j δ_j), w = T (1 − e^{−σδ})
    dense = torch.zeros(R * S).index_put((flat,), sigma).view(R, S)
    tau = dense * delta
    plain = (torch.exp(-(torch.cumsum(tau, 1) - tau)) * (1 - torch.exp(-tau))).reshape(-1)[flat]
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-7)
    probe = torch.randn(len(flat))
    (g_fast,) = torch.autograd.grad((fast * probe).sum(), sigma)
    (g_plain,) = torch.autograd.grad((plain * probe).sum(), sigma)
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-5, atol=1e-7)
    grid = OccupancyGrid(8, 1.3)
    grid.binaries.copy_(torch.rand(8, 8, 8) < 0.5)
    points = torch.randn(30, 20, 3)
    assert torch.equal(grid.query_axes(*points.unbind(-1)), grid.query(points))


# --- mesh regularisers: one edge sort shared, face normals kept per v_pos -------------------------
def random_mesh(seed: int, n_vertices: int = 40, n_faces: int = 120):
    """A random triangle soup on few vertices: shared edges, non-manifold ones (k > 2 faces) too."""
    from threestudio_like.geometry.mesh import Mesh

    g = torch.Generator().manual_seed(seed)
    faces = torch.stack([torch.randperm(n_vertices, generator=g)[:3] for _ in range(n_faces)])
    return Mesh(torch.randn(n_vertices, 3, generator=g, dtype=torch.float64, requires_grad=True), faces)


@pytest.mark.parametrize("seed", [0, 1])
def test_mesh_topology_matches_unique_and_a_plain_edge_map(seed):
    mesh = random_mesh(seed)
    tri = mesh.t_pos_idx.tolist()
    edge_faces: dict[tuple[int, int], list[int]] = {}
    for f, (a, b, c) in enumerate(tri):
        for u, v in ((a, b), (b, c), (c, a)):
            edge_faces.setdefault((min(u, v), max(u, v)), []).append(f)
    assert sorted(edge_faces) == [tuple(e) for e in mesh.edges().tolist()]
    assert any(len(fs) > 2 for fs in edge_faces.values())  # the k-face chain case is exercised
    # each edge shared by faces f1 < f2 < … (face-major order, as a stable sort gives) pairs them in a chain
    chains = sorted((fs[i], fs[i + 1]) for fs in edge_faces.values() for i in range(len(fs) - 1))
    assert chains == sorted(map(tuple, mesh.adjacent_faces().tolist()))


def test_face_normals_are_shared_only_for_the_same_positions_and_grad_mode():
    mesh = random_mesh(2)
    v = mesh.v_pos
    plain = torch.cross(v[mesh.t_pos_idx[:, 1]] - v[mesh.t_pos_idx[:, 0]], v[mesh.t_pos_idx[:, 2]] - v[mesh.t_pos_idx[:, 0]], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(mesh.face_areas_normals(), plain, rtol=0, atol=1e-12)
    shared = mesh.face_areas_normals()  # with autograd, although a no_grad value was cached first
    assert shared.requires_grad and mesh.face_areas_normals() is shared
    (grad,) = torch.autograd.grad(shared.square().sum(), v)
    (plain_grad,) = torch.autograd.grad(plain.square().sum(), v)
    torch.testing.assert_close(grad, plain_grad, rtol=0, atol=1e-12)
    mesh.v_pos = v.detach() * 2  # new positions: recomputed
    torch.testing.assert_close(mesh.face_areas_normals(), 4 * plain.detach(), rtol=0, atol=1e-12)


# --- embedded prior: reference pictures from the on-disk cache ------------------------------------
def test_cached_references_are_the_render_bit_for_bit(tmp_path):
    from threestudio_like.priors.embedded import EmbeddedPrior, EmbeddedPriorConfig

    text = "a red ball on a blue box"
    plain = {}
    for kind in ("normal", "rgb"):
        prior = EmbeddedPrior(EmbeddedPriorConfig(reference=kind, cache_dir="", null_library=["a mug"]))
        plain[kind] = prior.references(text, 12, 10)[0]
    first = EmbeddedPrior(EmbeddedPriorConfig(reference="normal", cache_dir=str(tmp_path), null_library=["a mug"]))
    assert torch.equal(first.references(text, 12, 10)[0], plain["normal"])
    assert first.reference_cache.files.misses == 2 and len(list(tmp_path.iterdir())) == 2  # both kinds from one trace
    for kind in ("rgb", "normal"):  # later runs, either kind: read, not rendered
        later = EmbeddedPrior(EmbeddedPriorConfig(reference=kind, cache_dir=str(tmp_path), null_library=["a mug"]))
        assert torch.equal(later.references(text, 12, 10)[0], plain[kind])
        assert (later.reference_cache.files.hits, later.reference_cache.files.misses) == (1, 0)
    other = EmbeddedPrior(EmbeddedPriorConfig(reference="rgb", cache_dir=str(tmp_path), null_library=["a mug"]))
    other.references(text, 10, 12)  # another resolution is another picture
    other.references("a mug", 12, 10)  # another scene too
    assert other.reference_cache.files.misses == 4
    torch_path = EmbeddedPrior(EmbeddedPriorConfig(reference="rgb", cache_dir=str(tmp_path), null_library=["a mug"], cpu_kernel=False))
    traced = torch_path.references(text, 12, 10)[0]  # the other tracer (equal only to rounding): its own entry
    assert torch_path.reference_cache.files.misses == (2 if library_loaded() else 0)
    assert torch.equal(traced, EmbeddedPrior(EmbeddedPriorConfig(cache_dir="", null_library=["a mug"], cpu_kernel=False)).references(text, 12, 10)[0])
