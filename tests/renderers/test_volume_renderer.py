"""The implicit-volume geometry and the NeRF volume renderer (torch path; nerfacc agreement on CUDA)."""
import math

import pytest
import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.data.cameras import make_cameras, orbit_cameras
from threestudio_like.geometry.base import Geometry
from threestudio_like.geometry.hashgrid import per_level_scale_for
from threestudio_like.materials.plain_albedo import PlainAlbedo, PlainAlbedoConfig
from threestudio_like.materials.point_light import PointLightConfig, PointLightMaterial
from threestudio_like.registry import lookup
from threestudio_like.renderers.background import SolidColorBackground, SolidColorConfig
from threestudio_like.renderers.volume import ray_sphere


class AnalyticGeometry(Geometry):
    """Uniform density σ inside a ball (``ball_radius``) or a box (half-widths ``cube``), zero elsewhere."""

    def __init__(self, sigma: float, ball_radius: float = None, cube: float = None, color=(0.2, 0.6, 0.9), flip_normals: bool = False):
        super().__init__()
        self.radius = 1.0
        self.sigma, self.ball_radius, self.cube, self.flip = sigma, ball_radius, cube, flip_normals
        self.rgb = torch.tensor(color)

    def inside(self, points):
        if self.cube is not None:
            return (points.abs() <= torch.tensor(self.cube)).all(-1)
        return points.norm(dim=-1) <= self.ball_radius

    def density(self, points):
        return torch.where(self.inside(points), self.sigma, 0.0)

    def normal(self, points):
        return F.normalize(points, dim=-1) * (-1.0 if self.flip else 1.0)

    def forward(self, points, with_normal=False):
        out = {"density": self.density(points), "albedo": self.rgb.expand(len(points), 3)}
        if with_normal:
            out["normal"] = self.normal(points)
        return out


def renderer(**overrides):
    cls = lookup("renderer", "nerf-volume-renderer")
    return cls(parse_structured(cls.Config, overrides, "system.renderer"))


def small_nerf(**overrides):
    cls = lookup("geometry", "implicit-volume")
    values = {"pos_encoding": {"n_levels": 6, "log2_hashmap_size": 13, "per_level_scale": per_level_scale_for(16, 128, 6), "start_level": 6}}
    values.update(overrides)
    return cls(parse_structured(cls.Config, values, "system.geometry"))


PLAIN, WHITE = PlainAlbedo(PlainAlbedoConfig()), SolidColorBackground(SolidColorConfig())


def front_cameras(n=1, size=24, distance=2.5, fovy=40.0):
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return make_cameras(full(0.0), torch.linspace(0, 300, n), full(distance), full(fovy), size, size)


# --------------------------------------------------------------------------------------------------
# The geometry
# --------------------------------------------------------------------------------------------------
def test_fresh_nerf_is_the_blob_with_outward_normals_and_nothing_outside():
    torch.manual_seed(0)
    geometry = small_nerf()
    points = torch.randn(400, 3) * 0.4
    points = points[points.norm(dim=-1) < 0.99]
    blob = F.softplus(10.0 * (1.0 - points.norm(dim=-1) / 0.5))
    torch.testing.assert_close(geometry.density(points), blob, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(geometry.color(points), torch.full((len(points), 3), 0.5), atol=1e-3, rtol=0)
    assert torch.all(geometry.density(torch.tensor([[1.01, 0.0, 0.0], [0.8, 0.8, 0.0]])) == 0)
    shell = F.normalize(torch.randn(100, 3), dim=-1) * 0.4
    out = geometry(shell, with_normal=True)
    assert out["density"].shape == (100,) and out["albedo"].shape == (100, 3)
    cosine = (out["normal"] * F.normalize(shell, dim=-1)).sum(-1)
    assert cosine.min() > 0.99  # −∇σ of the blob points away from the centre


def test_nerf_parameter_groups_update_step_and_config_errors():
    geometry = small_nerf(pos_encoding={"n_levels": 6, "log2_hashmap_size": 13, "start_level": 2, "update_steps": 10})
    groups = {g["name"]: g for g in geometry.parameter_groups()}
    assert groups["encoding"]["lr"] == 0.01 and groups["network"]["lr"] == 0.001
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert grouped == {id(p) for p in geometry.parameters()}
    geometry.update_step(25, 100)
    assert geometry.encoding.active_levels == 4
    assert geometry.isosurface_threshold() == 25.0
    exp_geometry = small_nerf(density_activation="exp")
    assert exp_geometry.density(torch.zeros(1, 3)).item() == pytest.approx(math.exp(10.0), rel=1e-2)
    with pytest.raises(ConfigError, match="density_activation='relu'"):
        small_nerf(density_activation="relu")
    with pytest.raises(ConfigError, match="unknown config key"):
        small_nerf(pos_encoding={"n_level": 4})


# --------------------------------------------------------------------------------------------------
# Analytic cases
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [False, True])
def test_uniform_ball_opacity_is_one_minus_exp_sigma_chord(training):
    """σ uniform over the whole unit ball: every interval lies inside, so the sum is exact."""
    sigma = 1.7
    cameras = front_cameras(n=2, size=20)
    out = renderer(grid_prune=False).render(AnalyticGeometry(sigma, ball_radius=1.0), PLAIN, WHITE, cameras, training=training)
    origins, dirs = cameras.rays()
    near, far, hit = ray_sphere(origins.reshape(-1, 3), dirs.reshape(-1, 3), 1.0)
    chord = torch.where(hit, far - near, 0.0).view(2, 20, 20, 1)
    assert hit.float().mean() > 0.5 and chord.max() > 1.9
    expected = 1.0 - torch.exp(-sigma * chord)
    torch.testing.assert_close(out["opacity"], expected, atol=1e-5, rtol=1e-4)
    color = torch.tensor([0.2, 0.6, 0.9])
    torch.testing.assert_close(out["rgb"], expected * color + (1.0 - expected), atol=1e-5, rtol=1e-4)


def test_opaque_ball_depth_is_distance_to_surface():
    cameras = front_cameras(n=1, size=16, distance=2.0)
    out = renderer(grid_prune=False, num_samples_per_ray=256).render(AnalyticGeometry(500.0, ball_radius=0.5), PLAIN, WHITE, cameras)
    origins, dirs = cameras.rays()
    near, _, hit = ray_sphere(origins.reshape(-1, 3), dirs.reshape(-1, 3), 0.5)
    solid = hit & (out["opacity"].reshape(-1) > 0.999)
    assert solid.sum() > 20
    step = 2 * math.sqrt(3) / 256
    assert (out["depth"].reshape(-1)[solid] - near[solid]).abs().max() < 1.05 * step


def test_empty_scene_shows_the_background():
    out = renderer().render(AnalyticGeometry(0.0, ball_radius=1.0), PLAIN, WHITE, front_cameras(size=8))
    assert torch.all(out["opacity"] == 0) and torch.all(out["depth"] == 0)
    torch.testing.assert_close(out["rgb"], torch.ones(1, 8, 8, 3))


def test_occupancy_culling_changes_nothing_where_empty_space_is_empty():
    """A box aligned with the 32³ grid's cells: culled samples all had σ = 0 exactly."""
    half = torch.tensor([0.5, 0.25, 0.125])  # unequal, so a swapped axis in the grid shows
    geometry = AnalyticGeometry(3.0, cube=half.tolist())
    cameras = orbit_cameras(3, elevation=20.0, distance=2.2, fovy=45.0, width=24, height=24)
    culled = renderer(grid_prune=True)
    culled.update_step(0, 100, geometry)
    occupied = culled.grid.binaries
    centres = (torch.stack(torch.meshgrid(*[torch.arange(32)] * 3, indexing="ij"), -1) + 0.5) / 16 - 1
    assert torch.equal(occupied, (centres.abs() < half).all(-1))
    out_culled = culled.render(geometry, PLAIN, WHITE, cameras)
    evaluated_culled = culled.last_num_samples
    full = renderer(grid_prune=False)
    out_full = full.render(geometry, PLAIN, WHITE, cameras)
    for key in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(out_culled[key], out_full[key], atol=1e-6, rtol=1e-6)
    assert out_full["opacity"].max() > 0.9
    assert evaluated_culled < 0.5 * full.last_num_samples


def test_grid_refreshes_on_schedule_and_survives_a_state_dict_round_trip():
    small, large = AnalyticGeometry(5.0, cube=[0.25] * 3), AnalyticGeometry(5.0, cube=[0.5] * 3)
    r = renderer(grid_update_every=4, grid_warmup_steps=1000)
    assert r.grid.binaries.all()  # never updated: cull nothing
    r.update_step(0, 100, small)
    n_small = int(r.grid.binaries.sum())
    assert n_small == 8**3  # half-width 0.25 = 8 cells of 1/16 per axis
    r.update_step(1, 100, large)  # not an update step
    assert int(r.grid.binaries.sum()) == n_small
    r.update_step(4, 100, large)
    assert int(r.grid.binaries.sum()) == 16**3
    restored = renderer(grid_update_every=4)
    restored.load_state_dict(r.state_dict())
    assert torch.equal(restored.grid.binaries, r.grid.binaries) and bool(restored.grid.updated)


def test_eval_chunks_give_the_same_image():
    torch.manual_seed(0)
    geometry = small_nerf()
    cameras = front_cameras(n=2, size=16, distance=1.8)
    r = renderer(eval_chunk_size=10_000)
    one = r.render(geometry, PLAIN, WHITE, cameras, with_normal=True)
    r.cfg.eval_chunk_size = 37  # same renderer: same occupancy grid
    many = r.render(geometry, PLAIN, WHITE, cameras, with_normal=True)
    for key in one:
        torch.testing.assert_close(one[key], many[key], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Orientation, shapes, gradients
# --------------------------------------------------------------------------------------------------
def test_orientation_term_is_zero_for_normals_facing_the_camera_and_positive_when_flipped():
    cameras = front_cameras(n=1, size=16, distance=2.0)
    r = renderer(grid_prune=False, num_samples_per_ray=128)
    facing = r.render(AnalyticGeometry(200.0, ball_radius=0.6), PLAIN, WHITE, cameras, with_normal=True)
    flipped = r.render(AnalyticGeometry(200.0, ball_radius=0.6, flip_normals=True), PLAIN, WHITE, cameras, with_normal=True)
    hit = facing["opacity"][..., 0] > 0.99
    assert hit.sum() > 20
    assert facing["orient"].max() < 1e-3
    assert flipped["orient"][hit].mean() > 0.3
    # composited normals of the front surface point back at the camera (+x side, camera on +x)
    assert facing["normal"][hit][:, 0].mean() > 0.5


def test_training_render_shapes_ranges_and_gradients_reach_the_nerf():
    torch.manual_seed(0)
    geometry = small_nerf()
    r = renderer()
    r.update_step(0, 100, geometry)
    cameras = front_cameras(n=2, size=16, distance=1.5, fovy=60.0)
    material = PointLightMaterial(PointLightConfig(ambient_only_steps=0))
    out = r.render(geometry, material, WHITE, cameras, shading="diffuse", training=True, with_normal=True)
    shapes = {key: tuple(value.shape) for key, value in out.items()}
    assert shapes == {"rgb": (2, 16, 16, 3), "opacity": (2, 16, 16, 1), "depth": (2, 16, 16, 1),
                      "normal": (2, 16, 16, 3), "orient": (2, 16, 16, 1)}
    assert 0 <= out["rgb"].min() and out["rgb"].max() <= 1
    assert 0 <= out["opacity"].min() and out["opacity"].max() <= 1 + 1e-6 and out["opacity"].max() > 0.5
    assert out["normal"].norm(dim=-1).max() <= 1 + 1e-5 and out["orient"].min() >= 0
    assert 0 < r.last_num_samples < 2 * 16 * 16 * 64
    (out["rgb"].mean() + out["orient"].mean() + out["opacity"].mean()).backward()
    for group in geometry.parameter_groups():
        grads = [p.grad for p in group["params"]]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), group["name"]
        assert sum(float(g.abs().sum()) for g in grads) > 0, group["name"]


def test_renderer_config_errors():
    with pytest.raises(ConfigError, match="use_nerfacc='maybe'"):
        renderer(use_nerfacc="maybe")
    assert renderer(use_nerfacc="true").cfg.use_nerfacc is True
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="use_nerfacc=true needs a CUDA device"):
            renderer(use_nerfacc=True).render(AnalyticGeometry(1.0, ball_radius=0.5), PLAIN, WHITE, front_cameras(size=4))


# --------------------------------------------------------------------------------------------------
# CUDA: nerfacc and the torch path agree
# --------------------------------------------------------------------------------------------------
def test_nerfacc_path_matches_torch_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("nerfacc")
    torch.manual_seed(0)
    device = torch.device("cuda")
    geometry = small_nerf().to(device)
    cameras = orbit_cameras(3, elevation=15.0, distance=1.6, fovy=50.0, width=32, height=32).to(device)
    outs = {}
    for use in (True, False):
        r = renderer(use_nerfacc=use, num_samples_per_ray=128).to(device)
        torch.manual_seed(1)  # the grid update draws random points in each cell
        r.update_step(0, 100, geometry)
        r.update_step(16, 100, geometry)
        outs[use] = r.render(geometry, PLAIN.to(device), WHITE.to(device), cameras, with_normal=True)
        if use:
            grid = r.grid.binaries.clone()
        else:
            assert torch.equal(grid, r.grid.binaries)
    assert outs[True]["opacity"].max() > 0.5
    for key in ("rgb", "opacity", "depth", "normal"):
        torch.testing.assert_close(outs[True][key], outs[False][key], atol=2e-2, rtol=0)
        assert (outs[True][key] - outs[False][key]).abs().mean() < 2e-3


def test_normals_are_skipped_only_where_weights_are_negligible():
    torch.manual_seed(0)
    geometry = small_nerf(density_blob_scale=200.0)  # a sharp blob: samples behind its surface carry no weight
    cameras = front_cameras(n=1, size=16, distance=1.8)
    material = PointLightMaterial(PointLightConfig(ambient_only_steps=0))
    counted = []
    normal = geometry.normal
    geometry.normal = lambda points: counted.append(len(points)) or normal(points)
    r = renderer(normal_min_weight=0.0)
    every = r.render(geometry, material, WHITE, cameras, shading="diffuse", with_normal=True)
    r.cfg.normal_min_weight = 1e-4
    some = r.render(geometry, material, WHITE, cameras, shading="diffuse", with_normal=True)
    assert counted[0] == r.last_num_samples and counted[1] < 0.6 * counted[0]
    for key in ("rgb", "normal", "orient"):
        torch.testing.assert_close(every[key], some[key], atol=5e-3, rtol=0)
