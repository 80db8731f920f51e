"""The pure-PyTorch hash encoding: layout, values, gradients, progressive band."""
import pytest
import torch

from threestudio_like.config import ConfigError, parse_structured
from tests.hashgrid_reference import plain_encoding
from threestudio_like.geometry.hashgrid import HashGrid, HashGridConfig, level_resolutions, per_level_scale_for


def small_config(**overrides) -> HashGridConfig:
    values = dict(n_levels=6, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4,
                  per_level_scale=per_level_scale_for(4, 64, 6), start_level=6)
    values.update(overrides)
    return HashGridConfig(**values)


reference_encoding = plain_encoding  # the per-level, per-corner loop of the paper


def level_rows(grid: HashGrid, level: int) -> slice:
    res, size = grid.resolutions[level], 2**grid.cfg.log2_hashmap_size
    start = int(grid.offsets[level])
    return slice(start, start + ((res + 1) ** 3 if level < grid.n_dense else size))


def test_levels_dense_then_hashed_and_table_layout():
    grid = HashGrid(small_config())
    assert grid.resolutions == level_resolutions(grid.cfg) == [4, 6, 12, 21, 36, 64]
    assert grid.n_dense == 3  # (12+1)^3 = 2197 <= 4096 < (21+1)^3
    assert grid.table.shape == (3 * 2**12 + 5**3 + 7**3 + 13**3, 2)
    idx, w = grid.corner_indices(torch.rand(500, 3), grid.cfg.n_levels)
    idx = idx.view(6, 500, 8).long()
    for level in range(6):
        rows = level_rows(grid, level)
        assert idx[level].min() >= rows.start and idx[level].max() < rows.stop
    torch.testing.assert_close(w.sum(-1), torch.ones(6 * 500))


def test_matches_reference_values_and_point_gradients():
    torch.manual_seed(0)
    grid = HashGrid(small_config())
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)  # large values so a wrong corner or weight shows
    x = torch.rand(300, 3)
    x[:5] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 0.5, 0.5], [0.999, 0.001, 1.0]])
    torch.testing.assert_close(grid(x), reference_encoding(grid, x), atol=1e-5, rtol=1e-5)
    x.requires_grad_(True)
    (ours,) = torch.autograd.grad(grid(x).square().sum(), x)
    (ref,) = torch.autograd.grad(reference_encoding(grid, x).square().sum(), x)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_wide_indices_for_large_tables_agree():
    """A finest level × table size past 2^31 switches to int64 index arithmetic."""
    cfg = small_config(n_levels=3, log2_hashmap_size=22, base_resolution=128, per_level_scale=4.0, start_level=3)
    grid = HashGrid(cfg)
    assert grid.index_dtype == torch.int64
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    x = torch.rand(200, 3)
    torch.testing.assert_close(grid(x), reference_encoding(grid, x), atol=1e-5, rtol=1e-5)


def test_initial_values_are_small_and_shape_is_levels_times_features():
    grid = HashGrid(HashGridConfig(n_levels=8, log2_hashmap_size=14, start_level=8))
    out = grid(torch.rand(1000, 3))
    assert out.shape == (1000, 16)
    assert out.abs().max() <= 1e-4 and out.abs().max() > 0
    assert grid(torch.rand(0, 3)).shape == (0, 16)
    # points outside [0,1]^3 are clamped, not wrapped around
    torch.testing.assert_close(grid(torch.tensor([[1.5, -0.2, 0.3]])), grid(torch.tensor([[1.0, 0.0, 0.3]])))


def test_gradients_reach_the_table_and_match_finite_differences():
    torch.manual_seed(1)
    grid = HashGrid(small_config()).double()
    x = torch.rand(64, 3, dtype=torch.float64)
    probe = torch.randn(64, grid.output_dim, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (grid(x) * probe).sum()

    loss().backward()
    grad = grid.table.grad
    touched = grad.abs().sum(-1).nonzero()[:, 0]
    assert len(touched) > 100 and torch.isfinite(grad).all()
    eps = 1e-6
    for row in touched[torch.randperm(len(touched))[:6]].tolist():
        for feature in range(2):
            with torch.no_grad():
                grid.table[row, feature] += eps
                up = loss()
                grid.table[row, feature] -= 2 * eps
                down = loss()
                grid.table[row, feature] += eps
            assert float((up - down) / (2 * eps)) == pytest.approx(float(grad[row, feature]), rel=1e-5, abs=1e-9)


def test_progressive_band_masks_and_unmasks_levels():
    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=12, base_resolution=4, start_level=2, start_step=100, update_steps=50)
    grid = HashGrid(cfg)
    with torch.no_grad():
        grid.table.fill_(1.0)
    x = torch.rand(10, 3)
    expected = {0: 2, 149: 2, 150: 3, 300: 6, 10_000: 6}
    for step, active in expected.items():
        grid.update_step(step)
        out = grid(x).view(10, 6, 2)
        assert grid.active_levels == active
        torch.testing.assert_close(out[:, :active], torch.ones(10, active, 2))
        assert torch.all(out[:, active:] == 0.0)
    # the masked levels get no gradient
    grid.update_step(150)
    grid(x).sum().backward()
    for level in range(3, 6):
        assert grid.table.grad[level_rows(grid, level)].abs().sum() == 0
    assert grid.table.grad.abs().sum() > 0
    # the band is state: a reloaded grid sees the same active levels
    restored = HashGrid(cfg)
    restored.load_state_dict(grid.state_dict())
    assert restored.active_levels == 3


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="n_features_per_level=3"):
        parse_structured(HashGridConfig, {"n_features_per_level": 3}, "geometry.pos_encoding")
    with pytest.raises(ConfigError, match="per_level_scale"):
        parse_structured(HashGridConfig, {"per_level_scale": 0.5}, "geometry.pos_encoding")
