"""Every CPU speed-up is exact to float rounding: each fast path against the straightforward
computation it replaces, on random inputs, outputs and gradients."""
from __future__ import annotations

import pytest
import torch

from tests.hashgrid_reference import plain_encoding
from threestudio_like.geometry.hashgrid import HashGrid, HashGridConfig
from threestudio_like.priors.embedded import exact_x0
from threestudio_like.renderers import gaussian as G


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


@pytest.mark.parametrize("t_index", [0, 1, 2])
def test_exact_x0_matches_the_plain_softmax(t_index):
    torch.manual_seed(t_index)
    K, D, B = 60, 48, 3
    base = torch.rand(D) * 2 - 1
    images = base + 0.3 * torch.randn(K, D)  # references that share most of their content
    alpha_bar = torch.tensor([0.9999, 0.5, 0.01])[t_index].repeat(2 * B)
    clean = images[torch.tensor([0, 7, 31])]
    x = alpha_bar[:B, None].sqrt() * clean + (1 - alpha_bar[:B, None]).sqrt() * torch.randn(B, D)
    x_t = torch.cat([x, x])  # a prompt and its null condition on the same x_t, as in CFG
    cond = torch.zeros(B, K)
    cond[:, :12] = torch.rand(B, 12) + 0.1  # the prompt weighs its scene's references only
    null = torch.exp(-torch.rand(B, K) * 60.0)  # the null set: all, some far below the others
    null[:, -5:] = 0.0
    weights = torch.cat([cond, null])
    mean = images.mean(0)
    fast = exact_x0(x_t, alpha_bar, weights, images - mean, mean, chunk=4)  # chunk 4: rows split across chunks
    plain = plain_posterior_mean(x_t, alpha_bar, weights, images)
    torch.testing.assert_close(fast.double(), plain, rtol=0, atol=2e-6)


def test_exact_x0_validates_weights():
    refs = torch.randn(4, 6)
    with pytest.raises(ValueError, match="every reference weight 0"):
        exact_x0(torch.randn(1, 6), torch.tensor([0.5]), torch.zeros(1, 4), refs, torch.zeros(6))


# --- Gaussian sparse path: pairs past the transmittance cut-off dropped before autograd ----------
def random_splats(n: int, size: int):
    torch.manual_seed(n)
    means2d = torch.rand(2, n, 2) * size
    L = torch.randn(2, n, 2, 2) * 0.6 + torch.eye(2) * 2.0
    cov = L @ L.transpose(-1, -2)
    det = cov[..., 0, 0] * cov[..., 1, 1] - cov[..., 0, 1] ** 2
    conics = torch.stack([cov[..., 1, 1] / det, -cov[..., 0, 1] / det, cov[..., 0, 0] / det], -1)
    opacities = torch.rand(2, n) * 0.6 + 0.4  # dense enough that many pixels reach T < 1e-4
    # the box holding every α ≥ 1/255: 3.33 σ along each axis (exp(−3.33²/2) ≈ 1/255)
    radii = torch.ceil(3.33 * torch.stack([cov[..., 0, 0], cov[..., 1, 1]], -1).sqrt()).to(torch.int32)
    return means2d, conics, opacities, torch.rand(2, n, 3), torch.rand(2, n), radii


def test_sparse_rasterizer_matches_dense_outputs_and_gradients():
    size = 12
    inputs = random_splats(120, size)
    means2d, conics, opacities, features, depths, radii = inputs
    with torch.no_grad():  # the cut-off must actually drop pairs here
        order = torch.argsort(depths, dim=1)
        every = G._pixel_entries(means2d, conics, opacities, radii, order, size, size)
        live = G._live_entries(every, 0.999)
    assert len(live["row"]) < 0.8 * len(every["row"])
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
