"""The DMTet geometry (tetrahedra-sdf-grid): marching tetrahedra, gradients, create_from, checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree

from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.export import ExportConfig, extract_mesh
from threestudio_like.geometry import marching_tets as mt
from threestudio_like.geometry import tetrahedra_level
from threestudio_like.registry import lookup

SMALL_GRID = {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8, "per_level_scale": 1.5, "start_level": 4}


def tet_config(**overrides):
    cls = lookup("geometry", "tetrahedra-sdf-grid")
    values = {"isosurface_resolution": 32, "pos_encoding": SMALL_GRID, "mlp_neurons": 16}
    values.update(overrides)
    return cls, parse_structured(cls.Config, values, "system.geometry")


def tet_grid(**overrides):
    cls, cfg = tet_config(**overrides)
    return cls(cfg)


def all_points(grid):
    return grid.lattice_points(torch.arange(grid.sdf.shape[0]))


def set_sphere(grid, radius, center=(0.0, 0.0, 0.0)):
    distance = radius - (all_points(grid) - torch.tensor(center)).norm(dim=-1)
    grid.set_sdf_cells(distance / grid.cell)


def ball_on_box_sdf(p):
    """Signed distance, positive inside, of a ball (r 0.25 at z 0.2) on a box (0.8×0.6×0.3 at z −0.2)."""
    ball = 0.25 - (p - torch.tensor([0.0, 0.0, 0.2])).norm(dim=-1)
    q = (p - torch.tensor([0.0, 0.0, -0.2])).abs() - torch.tensor([0.4, 0.3, 0.15])
    box = -(q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0))
    return torch.maximum(ball, box)


def nerf_with_known_field(levels=64):
    """A real implicit-volume whose one dense hash level holds softplus⁻¹ of a known density.

    One level, two features, no hidden layer: raw density = feature 0, albedo logits from feature 1
    (red toward +x, blue toward −x). density = softplus(trilinear table) = 10·sigmoid(40·sdf)·… at
    the lattice, so the level 5 surface is the ball-on-box.
    """
    cls = lookup("geometry", "implicit-volume")
    encoding = {"n_levels": 1, "n_features_per_level": 2, "log2_hashmap_size": 19, "base_resolution": levels,
                "per_level_scale": 1.0, "start_level": 1}
    nerf = cls(parse_structured(cls.Config, {"pos_encoding": encoding, "mlp_hidden_layers": 0, "density_bias": "none",
                                             "isosurface_threshold": 5.0}, "system.geometry"))
    n = levels + 1
    ijk = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    world = ijk.float() * (2.0 / levels) - 1.0
    density = 10.0 * torch.sigmoid(40.0 * ball_on_box_sdf(world)) + 1e-4
    rows = ijk[:, 0] + ijk[:, 1] * n + ijk[:, 2] * n * n  # a dense level's table layout
    with torch.no_grad():
        nerf.encoding.table[rows, 0] = density + torch.log(-torch.expm1(-density))  # softplus⁻¹
        nerf.encoding.table[rows, 1] = 3.0 * world[:, 0]
        nerf.network[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, -1.0]]))
    return nerf


def chamfer(a: trimesh.Trimesh, b: trimesh.Trimesh) -> tuple[float, float]:
    """(mean, max) symmetric vertex-to-surface distance, the surfaces taken as dense samples."""
    d_ab = cKDTree(trimesh.sample.sample_surface(b, 100000, seed=1)[0]).query(a.vertices)[0]
    d_ba = cKDTree(trimesh.sample.sample_surface(a, 100000, seed=1)[0]).query(b.vertices)[0]
    return 0.5 * (d_ab.mean() + d_ba.mean()), max(d_ab.max(), d_ba.max())


# --------------------------------------------------------------------------------------------------
# Marching tetrahedra
# --------------------------------------------------------------------------------------------------
def test_kuhn_tetrahedra_tile_the_cube_with_positive_orientation():
    corners = mt.CORNERS.astype(float)
    volumes = [np.linalg.det(corners[t[1:]] - corners[t[0]]) / 6 for t in mt.KUHN_TETS]
    assert all(v > 0 for v in volumes) and sum(volumes) == pytest.approx(1.0)
    assert len({tuple(sorted(t)) for t in mt.KUHN_TETS.tolist()}) == 6


@pytest.mark.parametrize("deform", [False, True])
def test_sphere_is_closed_outward_and_within_a_cell_of_the_radius(deform):
    grid, r = tet_grid(isosurface_resolution=24), 0.55
    set_sphere(grid, r)
    if deform:  # any deformation inside the bound keeps a closed, outward surface
        with torch.no_grad():
            grid.deformation.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
    mesh = grid.isosurface()
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0, "faces wound outward"
    assert tm.volume == pytest.approx(4 / 3 * math.pi * r**3, rel=0.05)
    radii = mesh.v_pos.norm(dim=-1)
    assert (radii - r).abs().max().item() < grid.cell
    outward = (mesh.face_normals() * mesh.v_pos[mesh.t_pos_idx].mean(1)).sum(-1)
    assert (outward > 0).float().mean() > 0.99


def test_surface_touching_the_lattice_box_is_still_closed():
    grid = tet_grid(isosurface_resolution=16)
    set_sphere(grid, 1.5)  # a sphere bigger than the box: cut off by the box's outer layer
    tm = grid.isosurface().to_trimesh()
    assert tm.is_watertight and tm.volume > 0


def test_vertex_moves_with_sdf_as_the_linear_interpolation_says():
    grid = tet_grid(isosurface_resolution=8)
    set_sphere(grid, 0.5, center=(0.03, -0.02, 0.01))
    with torch.no_grad():
        grid.deformation.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(1))
    mesh = grid.isosurface()
    k = 5
    (grad_sdf,) = torch.autograd.grad(mesh.v_pos[k, 0], grid.sdf, retain_graph=True)
    ends = grad_sdf.nonzero()[:, 0]
    assert len(ends) == 2, "one surface vertex depends on the sdf of its edge's two ends"
    s = grid.sdf.detach()
    a, b = (ends[0], ends[1]) if s[ends[0]] > 0 else (ends[1], ends[0])
    assert s[a] > 0 >= s[b]
    p_a, p_b = (grid.deformed_points(ends.new_tensor([i])).detach()[0] for i in (a, b))
    s_a, s_b = float(s[a]), float(s[b])
    t = s_a / (s_a - s_b)  # the zero of s_a + t (s_b − s_a)
    assert torch.allclose(mesh.v_pos[k].detach(), p_a + t * (p_b - p_a), atol=1e-6)
    # d/ds_a of p_a + s_a/(s_a − s_b)·(p_b − p_a) is −s_b/(s_a − s_b)²·(p_b − p_a); d/ds_b is s_a/(s_a − s_b)²·(...)
    assert grad_sdf[a].item() == pytest.approx(-s_b / (s_a - s_b) ** 2 * float(p_b[0] - p_a[0]), rel=1e-4)
    assert grad_sdf[b].item() == pytest.approx(s_a / (s_a - s_b) ** 2 * float(p_b[0] - p_a[0]), rel=1e-4)
    # finite difference: nudge s_a, re-extract, the same vertex moves by that derivative
    eps = 1e-3
    with torch.no_grad():
        grid.sdf[a] += eps
    moved = grid.isosurface().v_pos[k].detach()
    expected = -s_b / (s_a - s_b) ** 2 * (p_b - p_a) * eps
    assert torch.allclose(moved - mesh.v_pos[k].detach(), expected, atol=1e-6, rtol=1e-2)
    # deformation: p_a = lattice + scale·cell·tanh(raw_a), so ∂p/∂raw_a = (1 − t)·scale·cell·(1 − tanh²)
    (grad_def,) = torch.autograd.grad(mesh.v_pos[k, 1], grid.deformation)
    raw = grid.deformation.detach()[a, 1]
    expected = (1 - t) * grid.cfg.deformation_scale * grid.cell * (1 - math.tanh(raw) ** 2)
    assert grad_def[a, 1].item() == pytest.approx(expected, rel=1e-4)
    assert grad_def[a, 0] == 0 and grad_def[:, 1].count_nonzero() == 2


def test_outlier_removal_drops_a_small_separate_blob():
    def two_blobs(**kw):
        grid = tet_grid(**kw)
        points = all_points(grid)
        big = 0.5 - (points - torch.tensor([-0.3, 0.0, 0.0])).norm(dim=-1)
        small = 0.12 - (points - torch.tensor([0.65, 0.0, 0.0])).norm(dim=-1)
        grid.set_sdf_cells(torch.maximum(big, small) / grid.cell)
        return grid.isosurface().to_trimesh()

    kept = two_blobs(isosurface_remove_outliers=False)
    cleaned = two_blobs(isosurface_remove_outliers=True, isosurface_outlier_n_faces_threshold=0.1)
    assert len(kept.split(only_watertight=False)) == 2
    pieces = cleaned.split(only_watertight=False)
    assert len(pieces) == 1 and pieces[0].is_watertight
    assert cleaned.vertices[:, 0].max() < 0.3, "the blob at x = 0.65 is gone"


# --------------------------------------------------------------------------------------------------
# The Geometry contract
# --------------------------------------------------------------------------------------------------
def test_density_is_positive_inside_and_export_finds_the_same_surface():
    grid = tet_grid()
    set_sphere(grid, 0.5)
    inside, outside = torch.tensor([[0.0, 0.0, 0.1]]), torch.tensor([[0.0, 0.6, 0.0], [0.0, 0.0, 1.5]])
    level = grid.isosurface_threshold()
    assert grid.density(inside).item() > level and (grid.density(outside) < level).all()
    assert grid.density(outside)[1].item() == 0.0, "no density beyond the lattice"
    assert grid.density(torch.tensor([[0.0, 0.0, 0.9]])).item() < 0.05, "no fog where the sdf is clamped"
    exported = extract_mesh(grid, ExportConfig(isosurface_resolution=64, progress=False))
    mean, _ = chamfer(exported, grid.isosurface().to_trimesh())
    assert mean < 0.25 * grid.cell
    assert grid.color(torch.zeros(4, 3)).shape == (4, 3)


def test_parameter_groups_follow_geometry_only_and_fix_geometry():
    names = lambda g: {group["name"] for group in g.parameter_groups()}  # noqa: E731
    assert names(tet_grid()) == {"sdf", "deformation", "encoding", "network"}
    assert names(tet_grid(geometry_only=True)) == {"sdf", "deformation"}
    assert names(tet_grid(isosurface_deformable_grid=False)) == {"sdf", "encoding", "network"}
    fixed = tet_grid(fix_geometry=True)
    assert names(fixed) == {"encoding", "network"}
    assert not fixed.sdf.requires_grad and not fixed.deformation.requires_grad
    first = fixed.isosurface()
    assert fixed.isosurface() is first, "the mesh is extracted once"
    assert not first.v_pos.requires_grad


def test_config_errors_name_the_bad_value():
    cls = lookup("geometry", "tetrahedra-sdf-grid")
    with pytest.raises(ConfigError, match="isosurface_resolution=2"):
        parse_structured(cls.Config, {"isosurface_resolution": 2}, "system.geometry")
    with pytest.raises(ConfigError, match="deformation_scale=0.9"):
        parse_structured(cls.Config, {"deformation_scale": 0.9}, "system.geometry")


# --------------------------------------------------------------------------------------------------
# create_from and checkpoints
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def known_nerf():
    return nerf_with_known_field()


def test_create_from_nerf_reproduces_its_marching_cubes_surface_and_colour(known_nerf):
    reference = extract_mesh(known_nerf, ExportConfig(isosurface_resolution=96, progress=False))
    cls, cfg = tet_config(isosurface_resolution=32, pos_encoding=dict(known_nerf.cfg.pos_encoding.__dict__),
                          mlp_hidden_layers=0)
    grid = cls.create_from(known_nerf, cfg)
    assert float(grid.grid_half) < 0.6, "the lattice shrank to the object's bounding cube"
    surface = grid.isosurface().to_trimesh()
    assert surface.is_watertight and surface.volume > 0
    mean, worst = chamfer(surface, reference)
    assert mean < 0.15 * grid.cell and worst < grid.cell
    truth = ball_on_box_sdf(torch.as_tensor(surface.vertices, dtype=torch.float32)).abs()
    assert truth.mean().item() < 0.01
    points = torch.as_tensor(surface.vertices[:500], dtype=torch.float32)
    torch.testing.assert_close(grid.color(points), known_nerf.color(points))  # weights copied


def test_create_from_with_the_unseen_cap_keeps_a_flat_bottomed_field(known_nerf):
    """The ball-on-box's bottom faces away from every view of −10°…60°, but it is flat (within the
    rounding of its edges, under a cell): the cap leaves every lattice value as the plain conversion
    has it (tests/geometry/test_tetrahedra_cap.py: what it does cap)."""
    from threestudio_like.data.cameras import RandomCameraConfig

    cls, cfg = tet_config(isosurface_resolution=32, convert_cap_unseen=True, convert_cap_angle=45.0)
    plain = cls.create_from(known_nerf, cfg, copy_net=False)
    views = RandomCameraConfig(elevation_range=[-10.0, 60.0], camera_distance_range=[2.5, 2.5], fovy_range=[40.0, 40.0])
    capped = cls.create_from(known_nerf, cfg, copy_net=False, views=views)
    assert torch.equal(capped.sdf, plain.sdf)
    assert abs(float(capped.isosurface().v_pos[:, 2].detach().min()) + 0.35) < 0.2 * capped.cell  # the true bottom


def test_create_from_copies_a_hidden_layer_colour_network_and_keeps_its_levels():
    cls = lookup("geometry", "implicit-volume")
    encoding = dict(SMALL_GRID, start_level=2)
    nerf = cls(parse_structured(cls.Config, {"pos_encoding": encoding, "mlp_neurons": 16}, "system.geometry"))
    with torch.no_grad():
        nerf.encoding.table.uniform_(-1, 1, generator=torch.Generator().manual_seed(2))
    nerf.update_step(2000, 2000)  # a trained field: every level active
    tcls, cfg = tet_config(isosurface_resolution=16, pos_encoding=encoding)
    grid = tcls.create_from(nerf, cfg)
    grid.update_step(0, 100)  # a new stage's schedule starts over, the inherited levels stay on
    assert grid.encoding.active_levels == SMALL_GRID["n_levels"]
    points = torch.rand(300, 3) - 0.5
    torch.testing.assert_close(grid.color(points), nerf.color(points))


def test_create_from_fits_the_colour_when_the_fields_differ(known_nerf):
    cls, cfg = tet_config(isosurface_resolution=24, color_fit_steps=150, color_fit_points=2048)
    grid = cls.create_from(known_nerf, cfg)  # another hash-grid shape: fitted, not copied
    points = torch.as_tensor(grid.isosurface().to_trimesh().vertices, dtype=torch.float32)
    error = (grid.color(points) - known_nerf.color(points)).abs().mean().item()
    assert error < 0.05
    untouched = cls.create_from(known_nerf, cfg, copy_net=False)
    assert (untouched.color(points) - known_nerf.color(points)).abs().mean().item() > 2 * error


def two_colour_gaussian_ball():
    """400 sparse splats (σ 0.03, opacity 0.5) filling a ball of radius 0.3, red above z 0 and blue
    below: solid in their renders, but their density reaches the export level 1 only in clumps."""
    cls = lookup("geometry", "gaussian-splatting")
    gaussians = cls(parse_structured(cls.Config, {"init_num_points": 16}, "system.geometry"))
    g = torch.Generator().manual_seed(0)
    points = F.normalize(torch.randn(400, 3, generator=g), dim=-1) * 0.3 * torch.rand(400, 1, generator=g) ** (1 / 3)
    colors = torch.where(points[:, 2:] > 0, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9]))
    gaussians.init_from_points(points, colors)
    with torch.no_grad():
        gaussians.opacities.fill_(0.0)
        gaussians.scales.fill_(math.log(0.03))
    return gaussians


def test_create_from_gaussians_fits_the_colour_of_a_geometry_only_grid():
    # the geometry stage's grid (geometry_only: its color() runs without autograd) still gets the
    # splats' colour, which the texture stage after it starts from
    gaussians = two_colour_gaussian_ball()
    tcls, cfg = tet_config(isosurface_resolution=16, color_fit_steps=40, color_fit_points=1024, geometry_only=True)
    with torch.no_grad():
        grid = tcls.create_from(gaussians, cfg)
    mesh = grid.isosurface()
    rgb = grid.color(mesh.v_pos.detach())
    top, bottom = mesh.v_pos[:, 2] > 0.15, mesh.v_pos[:, 2] < -0.15
    assert rgb[top, 0].mean() > rgb[top, 2].mean() + 0.3 and rgb[bottom, 2].mean() > rgb[bottom, 0].mean() + 0.3


def test_create_from_gaussians_converts_at_the_level_their_renders_show():
    gaussians = two_colour_gaussian_ball()
    at_export_level = extract_mesh(gaussians, ExportConfig(isosurface_resolution=64, progress=False, min_component_fraction=0))
    assert len(at_export_level.split(only_watertight=False)) >= 5
    tcls, cfg = tet_config(isosurface_resolution=24, color_fit_steps=60, color_fit_points=2048)
    with torch.no_grad():  # as the stage chaining calls it: the colour fit still trains
        grid = tcls.create_from(gaussians, cfg)
    assert grid.source_level in [2.0**-k for k in range(1, 8)]
    mesh = grid.isosurface()
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.volume > 0 and len(tm.split(only_watertight=False)) <= 2
    radii = mesh.v_pos.norm(dim=-1)
    assert radii.median() > 0.25 and radii.max() < 0.42  # (a small hollow inside may remain)
    cameras = tetrahedra_level.silhouette_cameras(1.0)
    iou = tetrahedra_level.mask_iou(tetrahedra_level.surface_masks(grid, cameras), tetrahedra_level.own_masks(gaussians, cameras))
    assert iou > 0.85
    rgb = grid.color(mesh.v_pos.detach())
    top, bottom = mesh.v_pos[:, 2] > 0.15, mesh.v_pos[:, 2] < -0.15
    assert rgb[top, 0].mean() > rgb[top, 2].mean() + 0.3 and rgb[bottom, 2].mean() > rgb[bottom, 0].mean() + 0.3
    # without the silhouette choice the conversion keeps the export level, clumps and all
    _, export_cfg = tet_config(isosurface_resolution=24, color_fit_steps=0, level_from_silhouettes=False)
    clumps = tcls.create_from(gaussians, export_cfg)
    assert clumps.source_level == 1.0 and len(clumps.isosurface().to_trimesh().split(only_watertight=False)) >= 3


def test_checkpoint_round_trip_and_texture_stage_from_a_refined_grid(tmp_path, known_nerf):
    cls, cfg = tet_config(isosurface_resolution=24, pos_encoding=dict(known_nerf.cfg.pos_encoding.__dict__),
                          mlp_hidden_layers=0)
    grid = cls.create_from(known_nerf, cfg)
    with torch.no_grad():
        grid.deformation.normal_(0.0, 0.5)
    path = tmp_path / "geometry.pt"
    torch.save(grid.state_dict(), path)
    restored = cls(cfg)
    restored.load_state_dict(torch.load(path))
    before, after = grid.isosurface(), restored.isosurface()
    assert torch.equal(before.t_pos_idx, after.t_pos_idx) and torch.allclose(before.v_pos, after.v_pos)
    points = before.v_pos.detach()[:200]
    assert torch.equal(grid.color(points), restored.color(points))
    # the texture stage: the same lattice, geometry fixed, deformation and colour carried over
    _, fixed_cfg = tet_config(isosurface_resolution=24, pos_encoding=dict(known_nerf.cfg.pos_encoding.__dict__),
                              mlp_hidden_layers=0, fix_geometry=True)
    fixed = cls.create_from(restored, fixed_cfg)
    assert torch.allclose(fixed.isosurface().v_pos, before.v_pos.detach())
    assert torch.equal(fixed.color(points), grid.color(points))
    other = tet_grid(isosurface_resolution=16)
    with pytest.raises(ValueError, match="isosurface_resolution=24"):
        other.load_state_dict(torch.load(path))


def level_rows(encoding, level: int) -> slice:
    """The table rows of one hash level (dense levels hold (N + 1)³ rows, hashed ones the table size)."""
    size = 2 ** encoding.cfg.log2_hashmap_size
    rows = (encoding.resolutions[level] + 1) ** 3 if level < encoding.n_dense else size
    return slice(encoding.offset_list[level], encoding.offset_list[level] + rows)


def test_color_levels_caps_the_colour_fields_levels_even_over_inherited_ones():
    capped, full = tet_grid(color_levels=2), tet_grid()
    points = torch.rand(256, 3) * 0.8 - 0.4
    for grid in (capped, full):
        grid.inherited_levels.fill_(grid.cfg.pos_encoding.n_levels)  # as a copied NeRF field sets it
        grid.update_step(0, 100)
        with torch.no_grad():
            grid.encoding.table.normal_(0.0, 0.5)
    results = {}
    for name, grid in (("capped", capped), ("full", full)):
        before = grid.color(points).detach()
        with torch.no_grad():  # the finest level: the capped field never reads it
            grid.encoding.table[level_rows(grid.encoding, 3)] += 1.0
        after_fine = grid.color(points).detach()
        with torch.no_grad():  # its second level, which it reads
            grid.encoding.table[level_rows(grid.encoding, 1)] += 1.0
        results[name] = (torch.equal(after_fine, before), torch.equal(grid.color(points).detach(), after_fine))
    assert results == {"capped": (True, False), "full": (False, False)}
    assert capped.encoding.active_levels == 2 and full.encoding.active_levels == 4
    with pytest.raises(ConfigError, match="color_levels=99"):
        tet_config(color_levels=99)
