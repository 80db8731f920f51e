"""The fused CPU MLP (threestudio_like/kernels/csrc/mlp.cpp) gives the plain matrix products'
outputs and gradients to float rounding: random inputs, every row count around the kernel's tile
(64 or 128 rows), any number of hidden layers, strided inputs, NaN; and the implicit volume's
fields on both paths. Skipped, with the reason, where the kernels cannot be built."""
from __future__ import annotations

import pytest
import torch

from threestudio_like.geometry.hashgrid import HashGridConfig
from threestudio_like.geometry.nerf import ImplicitVolume, ImplicitVolumeConfig, make_mlp
from threestudio_like.kernels import build
from threestudio_like.kernels.mlp import fused_mlp, relu_stack_weights


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if not build.library_loaded():
        pytest.skip(f"the CPU kernels cannot be built here: {build.unavailable_reason()}")


def textbook(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """y = W_L·max(0, …max(0, W_0·x)) row by row, as matrix products."""
    h = x
    for i, w in enumerate(weights):
        h = h @ w.t()
        if i < len(weights) - 1:
            h = torch.relu(h)
    return h


def outputs_and_grads(fn, x: torch.Tensor, weights: list[torch.Tensor], probe: torch.Tensor):
    leaves = [x.detach().requires_grad_(True)] + [w.detach().clone().requires_grad_(True) for w in weights]
    y = fn(leaves[0], leaves[1:])
    grads = torch.autograd.grad((y * probe).sum(), leaves) if len(y) else [torch.zeros_like(t) for t in leaves]
    return y.detach(), grads


def random_network(widths: list[int], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [torch.randn(b, a, dtype=dtype) / a**0.5 for a, b in zip(widths[:-1], widths[1:])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("widths", [[16, 64, 4], [5, 7, 3], [16, 64, 64, 4], [6, 3]])
def test_fused_mlp_matches_the_matrix_products(widths, dtype):
    weights = random_network(widths, dtype, seed=len(widths))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for n in (0, 1, 63, 64, 65, 127, 128, 129, 1000):
        x = torch.randn(n, widths[0], dtype=dtype)
        probe = torch.randn(n, widths[-1], dtype=dtype)
        (k_y, k_grads), (t_y, t_grads) = (outputs_and_grads(fn, x, weights, probe) for fn in (fused_mlp, textbook))
        assert k_y.shape == (n, widths[-1])
        torch.testing.assert_close(k_y, t_y, **tol, msg=f"{n} rows: outputs")
        for i, (k, t) in enumerate(zip(k_grads, t_grads)):
            torch.testing.assert_close(k, t, **tol, msg=f"{n} rows: gradient {i}")
        if n:  # a lumpy network: some hidden units off, some on, so both sides of the ReLU are exercised
            hidden = torch.relu(x @ weights[0].t()) if len(weights) > 1 else None
            assert hidden is None or (0 < (hidden == 0).float().mean() < 1)


def test_strided_inputs_give_the_same_numbers():
    """Row-major, feature-major (the hash grid's layout for the kernel) and a sliced view."""
    weights = random_network([16, 64, 4], torch.float32, seed=0)
    wide = torch.randn(300, 40)
    x = wide[:, 3:19]  # strides (40, 1)
    probe = torch.randn(300, 4)
    reference = outputs_and_grads(textbook, x.contiguous(), weights, probe)
    for layout in (x, x.contiguous(), x.t().contiguous().t()):
        y, grads = outputs_and_grads(fused_mlp, layout, weights, probe)
        torch.testing.assert_close(y, reference[0], rtol=1e-5, atol=1e-5)
        for k, t in zip(grads, reference[1]):
            torch.testing.assert_close(k, t, rtol=1e-5, atol=1e-5)


def test_nan_propagates_as_in_the_matrix_products():
    weights = random_network([8, 32, 4], torch.float32, seed=3)
    x = torch.randn(200, 8)
    x[17, 2] = float("nan")
    probe = torch.randn(200, 4)
    (k_y, k_grads), (t_y, t_grads) = (outputs_and_grads(fn, x, weights, probe) for fn in (fused_mlp, textbook))
    assert torch.isnan(k_y[17]).all() and not torch.isnan(k_y[torch.arange(200) != 17]).any()
    torch.testing.assert_close(k_y, t_y, rtol=1e-5, atol=1e-5, equal_nan=True)
    for k, t in zip(k_grads, t_grads):
        assert torch.equal(torch.isnan(k), torch.isnan(t))
        torch.testing.assert_close(k, t, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_two_threads_agree_with_one():
    weights = random_network([16, 64, 4], torch.float32, seed=4)
    x, probe = torch.randn(5000, 16), torch.randn(5000, 4)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(outputs_and_grads(fused_mlp, x, weights, probe))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])  # rows are independent: the outputs are identical
    for a, b in zip(results[0][1], results[1][1]):  # the weights' sums are split by chunk: rounding only
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_only_the_bias_free_relu_stack_goes_to_the_kernel():
    assert relu_stack_weights(make_mlp(16, 4, 64, 2)) is not None
    assert relu_stack_weights(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2, bias=False))) is None
    assert relu_stack_weights(torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Tanh(), torch.nn.Linear(4, 2, bias=False))) is None


@pytest.mark.parametrize("bias", ["blob_magic3d", "blob_dreamfusion", "none"])
@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_implicit_volume_fields_match_on_both_paths(bias, activation):
    """The fused MLP and the compiled density/albedo pass against nn.Sequential and the PyTorch
    operations: points inside and outside the ball, raw densities past softplus's threshold (20)
    and past the truncated exp's gradient clamp (15)."""
    encoding = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, start_level=4)
    cfg = ImplicitVolumeConfig(pos_encoding=encoding, mlp_hidden_layers=2, density_bias=bias, density_activation=activation,
                               radius=1.5, density_blob_scale=12.0)
    geometry = ImplicitVolume(cfg)
    with torch.no_grad():
        geometry.encoding.table.normal_(0.0, 1.0)
        geometry.network[-1].weight.mul_(600.0)  # raw outputs of ±20 and more (a fresh layer gives ±0.04)
    torch.manual_seed(6)
    points = (torch.rand(777, 3) * 2.0 - 1.0) * 1.5  # a quarter or so outside the ball
    params = list(geometry.parameters())

    def run(choice):
        geometry.cfg.cpu_kernel = choice
        out = geometry(points)
        loss = (out["density"] * torch.linspace(-1, 1, len(points))).sum() + (out["albedo"] * torch.rand(len(points), 3)).sum()
        return out, torch.autograd.grad(loss, params)

    torch.manual_seed(7)
    k_out, k_grads = run(True)
    torch.manual_seed(7)
    t_out, t_grads = run(False)
    inside = points.square().sum(-1) <= 1.5**2
    assert (~inside).sum() > 50 and (k_out["density"][~inside] == 0).all()
    assert (k_out["density"][inside] > 20).any() and (k_out["density"][inside] < 1).any()  # past both thresholds, and below
    # exp turns the MLP's rounding of a raw density of ~50 (a few 1e-6, the sums' order) into that relative error
    torch.testing.assert_close(k_out["density"], t_out["density"], rtol=1e-4 if activation == "exp" else 1e-5, atol=1e-5)
    torch.testing.assert_close(k_out["albedo"], t_out["albedo"], rtol=1e-5, atol=1e-5)
    for k, t in zip(k_grads, t_grads):
        torch.testing.assert_close(k, t, rtol=1e-4, atol=1e-5 * float(t.abs().max()))


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_compiled_fields_pass_nan_as_the_torch_operations_do(activation):
    """A NaN raw density: NaN density inside the ball, 0 outside, and NaN gradients in both places
    (autograd through torch.where multiplies the zero by the activation's NaN derivative)."""
    from threestudio_like.kernels.nerf_fields import ACTIVATIONS, BIASES, FieldSpec, nerf_fields

    spec = FieldSpec(BIASES["blob_magic3d"], 10.0, 0.5, ACTIVATIONS[activation], 1.0)
    points = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0], [0.0, 0.0, 0.5]])
    raw = torch.tensor([[float("nan"), 0.0, 1.0, -1.0], [float("nan"), 2.0, 0.0, 0.0], [30.0, 0.0, 0.0, 0.0]], requires_grad=True)
    density, albedo = nerf_fields(raw, points, spec)
    g_raw, = torch.autograd.grad(density.sum() + albedo.sum(), raw)
    geometry = ImplicitVolume(ImplicitVolumeConfig(density_activation=activation))
    raw_t = raw.detach().requires_grad_(True)
    d_t = geometry.activate_density(raw_t[:, 0] + geometry.density_bias(points))
    d_t = torch.where(points.square().sum(-1) <= 1.0, d_t, torch.zeros_like(d_t))
    a_t = torch.sigmoid(raw_t[:, 1:])
    g_t, = torch.autograd.grad(d_t.sum() + a_t.sum(), raw_t)
    assert torch.isnan(density[0]) and density[1] == 0
    torch.testing.assert_close(density, d_t, equal_nan=True)
    torch.testing.assert_close(albedo, a_t)
    assert torch.equal(torch.isnan(g_raw), torch.isnan(g_t)) and torch.isnan(g_raw[1, 0])
    torch.testing.assert_close(g_raw, g_t, equal_nan=True)


def test_cpu_kernel_key_of_the_implicit_volume():
    with pytest.raises(ValueError, match="cpu_kernel='fast' is not accepted; use one of auto, true, false"):
        ImplicitVolumeConfig(cpu_kernel="fast")
    assert ImplicitVolumeConfig(cpu_kernel="false").cpu_kernel is False


def test_backward_without_kept_activations_recomputes_the_same_numbers():
    """A forward outside autograd keeps no hidden activations; the backward then recomputes them."""
    ops = torch.ops.threestudio_like_cpu
    weights = random_network([16, 64, 64, 4], torch.float32, seed=5)
    x, grad = torch.randn(300, 16), torch.randn(300, 4)
    y_kept, hidden = ops.mlp_forward(x, weights, True)
    y_bare, nothing = ops.mlp_forward(x, weights, False)
    assert torch.equal(y_kept, y_bare) and nothing.numel() == 0 and hidden.numel() >= 300 * 128
    kept, recomputed = ops.mlp_backward(x, weights, grad, hidden, True), ops.mlp_backward(x, weights, grad, nothing, True)
    assert all(torch.equal(a, b) for a, b in zip(kept, recomputed))
    with pytest.raises(RuntimeError, match="hidden must be mlp_forward's kept activations"):
        ops.mlp_backward(x[:100], weights, grad[:100], hidden, True)


def test_compiled_fields_float32_exp_and_softplus_across_their_range():
    """The fields pass's own float32 exp and log1p (written to vectorise) against float64 softplus and
    sigmoid: densities from far below 0 (the subnormal range) to past the threshold 20, albedo logits
    from −100 to 100 and ±inf, every value within a few float32 ulp."""
    import math

    from threestudio_like.kernels import library_loaded

    if not library_loaded():
        pytest.skip("the CPU kernels cannot be built here")
    raw = torch.zeros(4003, 4)
    raw[:4000, 0] = torch.linspace(-100.0, 30.0, 4000)
    raw[:4000, 1:] = torch.linspace(-100.0, 100.0, 12000).view(4000, 3)
    raw[4000:, 1:] = torch.tensor([[math.inf, -math.inf, 0.0]] * 3)
    points = torch.zeros(4003, 3)  # all inside the ball, no bias
    ops = torch.ops.threestudio_like_cpu
    for activation in (0, 1):  # softplus, exp
        density, albedo = ops.nerf_fields_forward(raw, points, 0, 0.0, 1.0, activation, 1.0)
        x = raw[:, 0].double()
        expected = torch.nn.functional.softplus(x) if activation == 0 else torch.exp(x)
        torch.testing.assert_close(density.double(), expected.float().double(), rtol=4e-7, atol=1e-44)
        torch.testing.assert_close(albedo.double(), torch.sigmoid(raw[:, 1:].double()).float().double(), rtol=4e-7, atol=1.2e-38)
        torch.testing.assert_close(albedo, torch.sigmoid(raw[:, 1:]), rtol=4e-7, atol=1.2e-38)
