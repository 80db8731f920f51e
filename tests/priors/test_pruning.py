"""The embedded prior's reference pruning (priors/pruning.py): a bound that never undercuts a true
distance, references pruned only where their posterior is below float32 resolution, and exact_x0
with the pruning equal to a float64 transcription of the posterior mean."""
from __future__ import annotations

import math

import pytest
import torch

from threestudio_like.kernels import library_loaded
from threestudio_like.priors.embedded import exact_x0
from threestudio_like.priors.pruning import prune_log_weights, reference_basis

ALPHAS = [0.9999, 0.98, 0.6, 0.41]  # t small to the largest ᾱ... smallest at which the pruning runs


def picture_set(seed: int, K: int = 150, D: int = 300, rank: int = 12):
    """K images [K,D] that share a background and vary along a few directions (as renders of one
    scene from many cameras do), plus a little detail of their own."""
    torch.manual_seed(seed)
    base = torch.rand(D) * 2 - 1
    directions = torch.randn(rank, D) / math.sqrt(D) * 6.0
    return base + torch.randn(K, rank) @ directions + 0.05 * torch.randn(K, D)


def noisy_rows(images: torch.Tensor, alpha_bar: float, B: int):
    """B noisy images x_t of pictures near the set (one of them exactly a reference), ᾱ [2B], and
    weights [2B,K]: a prompt row (a third of the references) and a null row (all, some far below)."""
    K, D = images.shape
    clean = images[torch.randint(0, K, (B,))] + 0.1 * torch.randn(B, D)
    clean[0] = images[3]
    a = torch.full((B,), alpha_bar)
    x_t = a.sqrt()[:, None] * clean + (1 - a).sqrt()[:, None] * torch.randn(B, D)
    prompt = torch.zeros(B, K)
    prompt[:, : K // 3] = torch.rand(B, K // 3) + 0.1
    null = torch.exp(-torch.rand(B, K) * 40.0)
    return torch.cat([x_t, x_t]), torch.cat([a, a]), torch.cat([prompt, null])


def logits64(x_t, alpha_bar, weights, images):
    """log w_i − ‖x_t − √ᾱ x_i‖² / 2(1 − ᾱ) [N,K] in float64, with 1 − ᾱ rounded as float32 (as the prior computes it)."""
    x_t, images = x_t.double(), images.double()
    a = alpha_bar.float()
    root, two_var = a.sqrt().double()[:, None], 2.0 * (1.0 - a).double()[:, None]
    sq = ((x_t[:, None, :] - root[:, :, None] * images[None]) ** 2).sum(-1)
    return weights.double().log() - sq / two_var


def pruned_weights(images, x_t, a, weights, rank):
    mean = images.mean(0)
    refs = images - mean
    x = x_t - a.sqrt()[:, None] * mean
    K = len(refs)
    basis = reference_basis(refs, rank)
    log_cut = math.log(2.0**-24 / K)
    half = len(x) // 2
    row_of = torch.cat([torch.arange(half), torch.arange(half)])
    return prune_log_weights(x[:half], row_of, a, weights.log(), refs, (refs * refs).sum(1), basis, log_cut), log_cut


@pytest.mark.parametrize("alpha_bar", ALPHAS)
def test_pruned_references_are_below_float32_resolution(alpha_bar):
    images = picture_set(seed=int(alpha_bar * 1000))
    x_t, a, weights = noisy_rows(images, alpha_bar, B=5)
    log_w, log_cut = pruned_weights(images, x_t, a, weights, rank=16)
    logits = logits64(x_t, a, weights, images)
    pruned = torch.isinf(log_w) & (weights > 0)
    gap = logits - logits.amax(dim=1, keepdim=True)
    assert (gap[pruned] < log_cut).all()  # each pruned posterior < cut × the row's largest
    assert torch.isfinite(log_w.gather(1, logits.argmax(dim=1, keepdim=True))).all()  # the best never pruned
    if alpha_bar >= 0.98:
        assert pruned.sum() > 0.5 * (weights > 0).sum()  # at small t most references go


def test_the_bound_holds_for_rows_in_and_far_from_the_span():
    """x on a reference, inside the basis's span, and pure noise: no reference within reach of the
    largest posterior is ever pruned, at ᾱ from 0.9999 down to 0.41."""
    images = picture_set(seed=7)
    mean = images.mean(0)
    basis = reference_basis(images - mean, 16)
    rows = torch.stack([images[5], mean + 3.0 * basis.V[0] - 2.0 * basis.V[4], torch.randn(images.shape[1]) * 3.0])
    for alpha_bar in ALPHAS:
        a = torch.full((3,), alpha_bar)
        weights = torch.rand(3, len(images)) + 0.01
        log_w, log_cut = pruned_weights(images, torch.cat([rows, rows]), torch.cat([a, a]), torch.cat([weights, weights]), 16)
        logits = logits64(torch.cat([rows, rows]), torch.cat([a, a]), torch.cat([weights, weights]), images)
        kept = torch.isfinite(log_w)
        assert kept[logits - logits.amax(dim=1, keepdim=True) >= log_cut].all()


@pytest.mark.parametrize("alpha_bar", ALPHAS + [0.3, 0.0047])  # 0.3, 0.0047: the pruning is not tried
def test_exact_x0_with_the_pruning_matches_the_plain_softmax(alpha_bar):
    if not library_loaded():
        pytest.skip("the CPU kernels cannot be built here")
    images = picture_set(seed=int(alpha_bar * 1000) + 1)
    x_t, a, weights = noisy_rows(images, alpha_bar, B=6)  # 12 rows: more than the kernel's tile of 8
    mean = images.mean(0)
    basis = reference_basis(images - mean, 16)
    fast = exact_x0(x_t, a, weights, images - mean, mean, chunk=64, cpu_kernel=True, basis=basis)
    plain = torch.softmax(logits64(x_t, a, weights, images), dim=1) @ images.double()
    # the float32 logits of these pictures (norms ~20) carry errors to 1.2e-5 at ᾱ = 0.6, the torch path's 1.6e-5
    torch.testing.assert_close(fast.double(), plain, rtol=0, atol=3e-5)
    unpruned = exact_x0(x_t, a, weights, images - mean, mean, chunk=64, cpu_kernel=True)
    torch.testing.assert_close(fast, unpruned, rtol=0, atol=1e-7)


def test_a_nan_row_prunes_nothing_and_stays_nan():
    images = picture_set(seed=3)
    x_t, a, weights = noisy_rows(images, 0.98, B=4)
    x_t[1, 9] = float("nan")
    x_t[5] = x_t[1]  # its null twin
    log_w, _ = pruned_weights(images, x_t, a, weights, rank=16)
    assert torch.equal(torch.isinf(log_w[[1, 5]]), weights[[1, 5]] == 0)
    if library_loaded():
        mean = images.mean(0)
        out = exact_x0(x_t, a, weights, images - mean, mean, cpu_kernel=True, basis=reference_basis(images - mean, 16))
        assert torch.isnan(out[[1, 5]]).all() and torch.isfinite(out[[0, 2, 3, 4, 6, 7]]).all()


def test_the_basis_is_orthonormal_and_its_residuals_complete_the_norms():
    images = picture_set(seed=11)
    refs = images - images.mean(0)
    for rank in (1, 16, 400):  # 400 > K: capped at K
        basis = reference_basis(refs, rank)
        m = min(rank, len(refs))
        torch.testing.assert_close(basis.V @ basis.V.T, torch.eye(m), rtol=0, atol=1e-5)
        torch.testing.assert_close(basis.coord_sq + basis.residual**2, (refs.double() ** 2).sum(1).float(), rtol=1e-5, atol=1e-4)


def test_prune_rank_is_checked():
    from threestudio_like.priors.embedded import EmbeddedPriorConfig

    assert EmbeddedPriorConfig(prune_rank=0).prune_rank == 0  # off
    with pytest.raises(ValueError, match="prune_rank=-1"):
        EmbeddedPriorConfig(prune_rank=-1)
