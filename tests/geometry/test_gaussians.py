"""3D Gaussians: the torch rasterizer against closed forms, densification bookkeeping, splat PLY,
density for export, checkpoints with another Gaussian count, initialisation from files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.data.cameras import make_cameras
from threestudio_like.export.splat_ply import read_splat_ply, write_splat_ply
from threestudio_like.geometry.gaussians import GaussianConfig, GaussianSplatting, inverse_sigmoid, rgb_to_sh
from threestudio_like.materials.plain_albedo import PlainAlbedo, PlainAlbedoConfig
from threestudio_like.renderers.background import SolidColorBackground, SolidColorConfig
from threestudio_like.renderers.gaussian import GaussianRasterizer, GaussianRendererConfig, rasterize_torch


def one_camera(size: int = 33, fovy: float = 40.0, distance: float = 2.0, elevation: float = 0.0, azimuth: float = 0.0):
    full = lambda v: torch.tensor([float(v)])  # noqa: E731
    return make_cameras(full(elevation), full(azimuth), full(distance), full(fovy), size, size)


def gaussians(means, sigmas, opacities, colors, **cfg) -> GaussianSplatting:
    """A geometry holding exactly the given isotropic Gaussians."""
    means = torch.as_tensor(means, dtype=torch.float32)
    geo = GaussianSplatting(GaussianConfig(init_num_points=len(means), **cfg))
    with torch.no_grad():
        geo.means.copy_(means)
        geo.scales.copy_(torch.as_tensor(sigmas, dtype=torch.float32).log()[:, None].expand(-1, 3))
        geo.opacities.copy_(inverse_sigmoid(torch.as_tensor(opacities, dtype=torch.float32)))
        geo.features_dc.copy_(rgb_to_sh(torch.as_tensor(colors, dtype=torch.float32)))
    return geo


def render(geo, cameras, **kw):
    renderer = GaussianRasterizer(GaussianRendererConfig(backend="torch", **kw))
    return renderer.render(geo, PlainAlbedo(PlainAlbedoConfig()), SolidColorBackground(SolidColorConfig([0.0, 0.0, 0.0])),
                           cameras, training=True)


# --- rasterizer ---------------------------------------------------------------------------------
def test_single_gaussian_matches_closed_form():
    cams = one_camera()
    sigma, opacity = 0.08, 0.8
    out = render(gaussians([[0.0, 0.0, 0.0]], [sigma], [opacity], [[1.0, 0.5, 0.25]]), cams)
    alpha = out["opacity"][0, :, :, 0]
    f = float(cams.focal_length()[0])
    var_px = (f * sigma / 2.0) ** 2 + 0.3  # perspective σ in pixels, plus gsplat's eps2d dilation
    centre = 16  # odd image: the mean projects onto the centre of pixel 16
    assert alpha[centre, centre].item() == pytest.approx(opacity, rel=1e-5)
    for r in range(1, 7):
        expected = opacity * math.exp(-(r**2) / (2 * var_px))
        if expected < 1.5 / 255:
            break
        for value in (alpha[centre, centre + r], alpha[centre, centre - r], alpha[centre + r, centre]):
            assert value.item() == pytest.approx(expected, rel=1e-4)
    assert torch.allclose(out["rgb"][0, centre, centre], opacity * torch.tensor([1.0, 0.5, 0.25]), atol=1e-5)
    # depth is Σ w·distance: distance 2 at the centre
    assert out["depth"][0, centre, centre, 0].item() == pytest.approx(opacity * 2.0, rel=1e-5)
    assert alpha[0, 0].item() == 0.0  # beyond the 1/255 cut


def test_nearer_gaussian_wins_in_either_storage_order():
    cams = one_camera()  # camera on +x looking at the origin: larger x is nearer
    means = [[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]]
    colors = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    first = render(gaussians(means, [0.1, 0.1], [0.9, 0.9], colors), cams)["rgb"][0, 16, 16]
    second = render(gaussians(means[::-1], [0.1, 0.1], [0.9, 0.9], colors[::-1]), cams)["rgb"][0, 16, 16]
    assert torch.allclose(first, second, atol=1e-6)
    assert first[0].item() == pytest.approx(0.9, abs=1e-4)  # red in front: α_red
    assert first[2].item() == pytest.approx(0.1 * 0.9, abs=1e-4)  # blue behind: T·α_blue


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_rasterizer_gradients_match_finite_differences(mode):
    torch.manual_seed(0)
    cams = one_camera(size=6, fovy=20.0)
    viewmats, Ks = cams.viewmats_opencv().double(), cams.intrinsics().double()
    means = (torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.04, -0.03], [-0.2, -0.05, 0.02]]) + 0.01 * torch.randn(3, 3)).double()
    quats = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1).double()
    scales = torch.tensor([[0.3, 0.2, 0.25], [0.2, 0.3, 0.2], [0.25, 0.25, 0.3]]).double()
    opacities = torch.tensor([0.5, 0.6, 0.4]).double()
    features = torch.rand(1, 3, 2).double()
    cfg = GaussianRendererConfig(backend="torch", torch_mode=mode, chunk_size=2)  # dense: two chunks, carry checked
    inputs = [x.clone().requires_grad_(True) for x in (means, quats, scales, opacities, features)]

    def fn(m, q, s, o, f):
        image, alpha, _ = rasterize_torch(m, q, s, o, f, viewmats, Ks, 6, 6, cfg)
        return image, alpha

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_sparse_and_dense_rasterizers_agree():
    from threestudio_like.data.cameras import orbit_cameras

    torch.manual_seed(0)
    geo = GaussianSplatting(GaussianConfig(init_num_points=400, init_opacity=0.6))
    with torch.no_grad():
        geo.rotations.normal_()
        geo.scales.add_(0.5 * torch.randn_like(geo.scales))
        geo.features_dc.normal_()
        geo.opacities.normal_(0.0, 3.0)  # some nearly opaque: early termination (T < 1e-4) happens
    cams = orbit_cameras(2, 20.0, 1.6, 50.0, 24, 20)
    sparse, dense = (render(geo, cams, torch_mode=mode) for mode in ("sparse", "dense"))
    for key in ("rgb", "opacity", "depth"):
        assert torch.allclose(sparse[key], dense[key], atol=1e-5), key
    (sparse["rgb"].sum() + sparse["depth"].sum()).backward()
    grad_sparse, geo.means.grad = geo.means.grad.clone(), None
    (dense["rgb"].sum() + dense["depth"].sum()).backward()
    assert torch.allclose(grad_sparse, geo.means.grad, atol=1e-4)
    assert torch.allclose(sparse["means2d"].grad, dense["means2d"].grad, atol=1e-5)


def test_means2d_receives_gradient_for_visible_gaussians():
    geo = gaussians([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0]], [0.1, 0.1], [0.5, 0.5], [[1.0, 1.0, 1.0]] * 2)
    out = render(geo, one_camera(size=16))
    out["rgb"].sum().backward()
    grad = out["means2d"].grad
    assert grad.shape == (1, 2, 2)
    assert out["visible"].tolist() == [[True, False]]  # the second one is far above the view
    assert grad[0, 1].abs().sum() == 0 and out["radii"][0, 1].sum() == 0


def test_normals_face_the_camera():
    geo = gaussians([[0.0, 0.0, 0.0]], [0.2], [0.9], [[1.0, 1.0, 1.0]])
    with torch.no_grad():
        geo.scales[0, 2] = math.log(0.01)  # a flat disc in the xy plane
    renderer = GaussianRasterizer(GaussianRendererConfig(backend="torch"))
    out = renderer.render(geo, PlainAlbedo(PlainAlbedoConfig()), SolidColorBackground(SolidColorConfig()),
                          one_camera(size=9, elevation=89.0), with_normal=True)
    normal = out["normal"][0, 4, 4] / out["opacity"][0, 4, 4]
    assert normal[2].item() == pytest.approx(1.0, abs=1e-3)


def test_sh_colour_depends_on_view():
    geo = gaussians([[0.0, 0.0, 0.0]], [0.1], [0.5], [[0.5, 0.5, 0.5]], sh_degree=1)
    with torch.no_grad():
        geo.features_rest[0, 1] = torch.tensor([1.0, 0.0, 0.0])  # the z basis function, red channel
    above, below = geo.albedo(torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0]]))[:, 0]
    # direction is camera → Gaussian: seen from above d = −z, so red = 0.5 − C1
    assert above[0].item() == pytest.approx(0.5 - 0.4886025, abs=1e-5)
    assert below[0].item() == pytest.approx(0.5 + 0.4886025, abs=1e-5)
    assert above[1].item() == pytest.approx(0.5, abs=1e-6)


# --- densification -----------------------------------------------------------------------------
def densify_setup(max_gaussians: int = 1000):
    torch.manual_seed(0)
    cfg = dict(densify_from_step=0, densify_interval=2, densify_until_step=10, densify_grad_threshold=0.0,
               split_scale_threshold=0.02, max_gaussians=max_gaussians, init_radius=0.3)
    geo = GaussianSplatting(GaussianConfig(init_num_points=40, **cfg))
    with torch.no_grad():
        geo.scales[:20] = math.log(0.05)  # split these
        geo.scales[20:] = math.log(0.005)  # clone these
    optimizer = torch.optim.Adam(geo.parameter_groups(), eps=1e-15)
    strategy = geo.densify_strategy()
    return geo, optimizer, strategy, strategy.initialize_state(geo)


def train_step(geo, optimizer, strategy, state, step: int) -> None:
    """One step as the system runs it: backward, the geometry's hook, the densification strategy, Adam."""
    from threestudio_like.data.cameras import orbit_cameras

    optimizer.zero_grad(set_to_none=True)
    out = render(geo, orbit_cameras(2, 10.0, 2.0, 50.0, 12, 12))
    ((out["rgb"] - 0.3) ** 2).mean().backward()
    geo.after_backward(out, step, optimizer)
    strategy.step_post_backward(geo, optimizer, state, step, out)
    optimizer.step()


def assert_optimizer_consistent(geo, optimizer) -> None:
    by_name = {group["name"]: group["params"] for group in optimizer.param_groups}
    for name in geo.param_names():
        param = getattr(geo, name)
        assert by_name[name] == [param] and by_name[name][0] is param
        for key in ("exp_avg", "exp_avg_sq"):
            assert optimizer.state[param][key].shape == param.shape


def test_densify_clones_and_splits_on_schedule_and_keeps_adam_state():
    geo, optimizer, strategy, state = densify_setup()
    train_step(geo, optimizer, strategy, state, 1)  # not a densification step: Adam state is created, count unchanged
    assert geo.num_gaussians == 40
    with torch.no_grad():
        kept_moment = optimizer.state[geo.means]["exp_avg"][20:].clone()
    train_step(geo, optimizer, strategy, state, 2)  # 20 split (→ 40 children), 20 cloned: 40 − 20 + 40 + 20
    assert geo.num_gaussians == 80
    assert_optimizer_consistent(geo, optimizer)
    # the cloned originals come first and keep their moments (one more Adam step on them since)
    assert torch.allclose(geo.scales[:20].exp(), torch.full((20, 3), 0.005), rtol=0.05)  # 2 Adam steps
    assert torch.allclose(geo.scales[20:40].exp(), torch.full((20, 3), 0.005), rtol=0.05)  # their clones
    assert torch.allclose(geo.scales[40:].exp(), torch.full((40, 3), 0.05 / 1.6), rtol=0.05)  # split children
    assert optimizer.state[geo.means]["exp_avg"][:20].abs().sum() > 0
    assert not torch.equal(optimizer.state[geo.means]["exp_avg"][:20], kept_moment)
    assert len(state.count) == 80 and state.count.sum() == 0  # the statistics restart with the new set
    train_step(geo, optimizer, strategy, state, 3)  # Adam steps on the new sizes without error
    assert geo.num_gaussians == 80 and all(torch.isfinite(getattr(geo, n)).all() for n in geo.param_names())
    train_step(geo, optimizer, strategy, state, 11)  # past densify_until_step: nothing changes
    assert geo.num_gaussians == 80


def test_densify_respects_the_count_cap():
    geo, optimizer, strategy, state = densify_setup(max_gaussians=50)
    train_step(geo, optimizer, strategy, state, 2)
    assert geo.num_gaussians == 50
    assert_optimizer_consistent(geo, optimizer)


def test_prune_removes_transparent_and_huge_gaussians():
    geo, optimizer, strategy, state = densify_setup()
    train_step(geo, optimizer, strategy, state, 1)
    with torch.no_grad():
        geo.opacities[:5] = inverse_sigmoid(torch.tensor(0.001))
        geo.scales[5:8] = math.log(1.0)
    marked = geo.means[8:].detach().clone()
    assert strategy.prune(geo, optimizer, state) == 8
    assert geo.num_gaussians == 32 and torch.equal(geo.means.detach(), marked)
    assert_optimizer_consistent(geo, optimizer)
    optimizer.step()


def test_opacity_reset_caps_opacity_and_clears_its_moments():
    geo, optimizer, strategy, state = densify_setup()
    strategy.cfg.opacity_reset_interval, strategy.cfg.densify_interval = 3, 100
    with torch.no_grad():
        geo.opacities[:10] = inverse_sigmoid(torch.tensor(0.9))
    train_step(geo, optimizer, strategy, state, 1)
    optimizer.zero_grad()
    strategy.step_post_backward(geo, optimizer, state, 3, {})
    assert torch.sigmoid(geo.opacities).max().item() <= 0.01 + 1e-6
    assert optimizer.state[geo.opacities]["exp_avg"].abs().sum() == 0


def test_position_lr_decays_exponentially():
    geo, optimizer, _, _ = densify_setup()
    geo.update_step(0, 100)
    assert geo.position_lr() == pytest.approx(1e-3)
    assert geo.position_lr(50) == pytest.approx(math.sqrt(1e-3 * 2e-5))
    geo.after_backward({}, 100, optimizer)
    assert [g["lr"] for g in optimizer.param_groups if g["name"] == "means"] == [pytest.approx(2e-5)]


# --- checkpoints, export, initialisation ----------------------------------------------------------
def test_load_state_dict_resizes_to_the_checkpoint_count():
    torch.manual_seed(0)
    big = GaussianSplatting(GaussianConfig(init_num_points=30, sh_degree=1))
    small = GaussianSplatting(GaussianConfig(init_num_points=10, sh_degree=1))
    small.load_state_dict(big.state_dict())
    assert small.num_gaussians == 30 and torch.equal(small.means, big.means)
    torch.optim.Adam(small.parameter_groups()).step()  # a fresh optimizer over the resized tensors
    other_degree = GaussianSplatting(GaussianConfig(init_num_points=10, sh_degree=2))
    with pytest.raises(ValueError, match="sh_degree"):
        other_degree.load_state_dict(big.state_dict())


def test_splat_ply_round_trip(tmp_path):
    torch.manual_seed(0)
    geo = GaussianSplatting(GaussianConfig(init_num_points=25, sh_degree=2))
    with torch.no_grad():
        for name in geo.param_names():
            getattr(geo, name).normal_()
    path = write_splat_ply(geo.splats(), tmp_path / "splats.ply")
    back = read_splat_ply(path)
    assert int(back["sh_degree"]) == 3  # padded for viewers
    for key, name in (("means", "means"), ("f_dc", "features_dc"), ("opacities", "opacities"), ("scales", "scales")):
        assert np.array_equal(back[key], getattr(geo, name).detach().numpy())
    unit = torch.nn.functional.normalize(geo.rotations.detach(), dim=-1).numpy()  # written as unit quaternions
    assert np.allclose(back["rotations"], unit, atol=1e-6)
    assert np.array_equal(back["f_rest"][:, :8], geo.features_rest.detach().numpy())
    assert not back["f_rest"][:, 8:].any()
    exact = read_splat_ply(write_splat_ply(geo.splats(), tmp_path / "own.ply", sh_degree=None))
    assert int(exact["sh_degree"]) == 2 and np.array_equal(exact["f_rest"], geo.features_rest.detach().numpy())
    header = path.read_bytes().split(b"end_header")[0].decode()
    names = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    (tmp_path / "bad.ply").write_text("not a ply")
    with pytest.raises(ValueError, match="not a PLY"):
        read_splat_ply(tmp_path / "bad.ply")


def test_density_at_the_mean_is_the_opacity_and_cells_match_brute_force():
    geo = gaussians([[0.1, -0.2, 0.3]], [0.05], [0.7], [[0.2, 0.4, 0.6]])
    assert geo.density(torch.tensor([[0.1, -0.2, 0.3]])).item() == pytest.approx(0.7, rel=1e-5)
    assert geo.density(torch.tensor([[0.15, -0.2, 0.3]])).item() == pytest.approx(0.7 * math.exp(-0.5), rel=1e-5)
    assert torch.allclose(geo.color(torch.tensor([[0.1, -0.2, 0.32], [0.9, 0.9, 0.9]])), torch.tensor([[0.2, 0.4, 0.6]] * 2), atol=1e-5)
    torch.manual_seed(0)
    geo = GaussianSplatting(GaussianConfig(init_num_points=300, init_opacity=0.5))
    with torch.no_grad():
        geo.rotations.normal_()
        geo.scales.add_(0.3 * torch.randn_like(geo.scales))
    points = torch.rand(5000, 3) * 1.2 - 0.6
    p = geo.activated()
    from threestudio_like.geometry.gaussian_ops import covariance_3d

    inv = torch.linalg.inv(covariance_3d(p["quats"], p["scales"]))
    d = points[:, None] - p["means"][None]
    maha = torch.einsum("pgi,gij,pgj->pg", d, inv, d)
    brute = (p["opacities"] * torch.exp(-0.5 * maha) * (maha <= 9.0)).sum(1)
    assert torch.allclose(geo.density(points), brute, atol=1e-5)


def test_init_from_point_cloud_and_mesh_files(tmp_path):
    cloud = trimesh.PointCloud(np.random.default_rng(0).normal(size=(500, 3)) * 0.2, colors=np.tile([[255, 0, 0, 255]], (500, 1)))
    cloud.export(tmp_path / "cloud.ply")
    geo = GaussianSplatting(parse_structured(GaussianConfig, {"init_from": str(tmp_path / "cloud.ply"), "init_num_points": 200}, "geometry"))
    assert geo.num_gaussians == 200
    assert torch.allclose(geo.albedo()[:, 0], torch.full((200,), 0.99), atol=1e-4)  # red (clamped into (0,1))
    trimesh.creation.box(extents=(0.5, 0.5, 0.5)).export(tmp_path / "box.obj")
    geo = GaussianSplatting(parse_structured(GaussianConfig, {"init_from": str(tmp_path / "box.obj"), "init_num_points": 300}, "geometry"))
    assert geo.num_gaussians == 300 and geo.means.detach().abs().max() <= 0.25 + 1e-5
    with pytest.raises(ConfigError, match="not a file"):
        parse_structured(GaussianConfig, {"init_from": str(tmp_path / "missing.ply")}, "geometry")
    (tmp_path / "points.xyz").write_text("0 0 0\n")
    with pytest.raises(ConfigError, match="unsupported format"):
        parse_structured(GaussianConfig, {"init_from": str(tmp_path / "points.xyz")}, "geometry")
    (tmp_path / "broken.obj").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="broken.obj"):
        GaussianSplatting(GaussianConfig(init_from=str(tmp_path / "broken.obj")))


# --- the CUDA path ----------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat)")
def test_torch_rasterizer_matches_gsplat():
    pytest.importorskip("gsplat")
    from threestudio_like.data.cameras import orbit_cameras
    from threestudio_like.renderers.gaussian import rasterize_gsplat

    torch.manual_seed(0)
    geo = GaussianSplatting(GaussianConfig(init_num_points=2000, init_opacity=0.5)).cuda()
    with torch.no_grad():
        geo.rotations.normal_()
        geo.scales.add_(0.3 * torch.randn_like(geo.scales))
        geo.features_dc.normal_()
    cams = orbit_cameras(3, 20.0, 2.0, 50.0, 64, 48).to("cuda")
    p = geo.activated()
    features = torch.cat([geo.albedo(cams.position), torch.rand(3, geo.num_gaussians, 1, device="cuda")], -1)
    args = (p["means"], p["quats"], p["scales"], p["opacities"], features, cams.viewmats_opencv(), cams.intrinsics(), 64, 48)
    cfg = GaussianRendererConfig()
    ours, ours_alpha, ours_meta = rasterize_torch(*args, cfg)
    ref, ref_alpha, ref_meta = rasterize_gsplat(*args, cfg)
    assert torch.allclose(ours_alpha, ref_alpha, atol=2e-3)
    assert torch.allclose(ours, ref, atol=2e-3)
    assert torch.allclose(ours_meta["means2d"], ref_meta["means2d"], atol=1e-3)
    assert (ours_meta["radii"] == ref_meta["radii"].reshape(ours_meta["radii"].shape)).float().mean() > 0.99
