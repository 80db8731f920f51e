"""create_from's occupancy cleaning (geometry/morphology.py): closing, cavities, the EDT signed distance."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy import ndimage

from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.geometry import marching_tets as mt
from threestudio_like.geometry import morphology
from threestudio_like.geometry.base import Geometry
from threestudio_like.registry import lookup


class AnalyticSolid(Geometry):
    """A geometry whose density is 10·sigmoid(40·sdf) of a known solid (sdf > 0 inside): level 5 is its surface."""

    def __init__(self, sdf):
        super().__init__()
        self.sdf = sdf

    def density(self, points):
        return 10.0 * torch.sigmoid(40.0 * self.sdf(points))

    def color(self, points):
        return torch.full_like(points, 0.5)

    def isosurface_threshold(self):
        return 5.0


def ball(center, radius):
    return lambda p: radius - (p - torch.tensor(center)).norm(dim=-1)


def union(*solids):
    return lambda p: torch.stack([s(p) for s in solids]).max(0).values


def converted(sdf, **overrides):
    """The DMTet (fixed lattice over [−1,1]³, cell 2/resolution) made from AnalyticSolid(sdf), as trimesh."""
    cls = lookup("geometry", "tetrahedra-sdf-grid")
    values = {"isosurface_resolution": 32, "fit_grid_to_surface": False, "isosurface_remove_outliers": False,
              "mlp_neurons": 8, "pos_encoding": {"n_levels": 2, "log2_hashmap_size": 10, "base_resolution": 4}}
    values.update(overrides)
    grid = cls.create_from(AnalyticSolid(sdf), parse_structured(cls.Config, values, "system.geometry"), copy_net=False)
    return grid, grid.isosurface().to_trimesh()


def pieces(mesh):
    return len(mesh.split(only_watertight=False))


def test_closing_joins_two_spheres_a_gap_apart_and_keeps_a_single_spheres_radius():
    cell, radius = 2.0 / 32, 0.3
    offset = radius + 0.75 * cell  # the spheres 1.5 cells apart
    two = union(ball((-offset, 0.0, 0.0), radius), ball((offset, 0.0, 0.0), radius))
    assert pieces(converted(two)[1]) == 2
    _, joined = converted(two, convert_closing_radius=cell)  # 2r = 2 cells > the gap
    assert pieces(joined) == 1 and joined.is_watertight
    # the bridge is the fillet a rolling ball of radius r leaves: at the middle plane its half width is
    # the height where that ball touches both spheres, less r
    fillet = np.sqrt((radius + cell) ** 2 - offset**2) - cell
    middle = joined.vertices[np.abs(joined.vertices[:, 0]) < 0.25 * cell]
    assert len(middle) and abs(np.linalg.norm(middle[:, 1:], axis=1).max() - fillet) < 0.5 * cell
    grid, single = converted(ball((0.1, -0.05, 0.0), radius), convert_closing_radius=cell)
    radii = np.linalg.norm(single.vertices - [0.1, -0.05, 0.0], axis=1)
    assert pieces(single) == 1 and np.abs(radii - radius).max() < 0.5 * grid.cell
    assert abs(np.median(radii) - radius) < 0.1 * grid.cell


def test_closing_fills_a_hole_narrower_than_its_diameter_and_keeps_a_wider_one():
    def slab_with_holes(p):
        slab = torch.minimum(0.15 - p[:, 2].abs(), 0.6 - p[:, :2].abs().max(-1).values)
        narrow = (p[:, :2] - torch.tensor([-0.3, 0.0])).norm(dim=-1) - 0.06  # diameter 0.12
        wide = (p[:, :2] - torch.tensor([0.3, 0.0])).norm(dim=-1) - 0.15  # diameter 0.30
        return torch.minimum(slab, torch.minimum(narrow, wide))

    _, holed = converted(slab_with_holes, isosurface_resolution=48)
    assert holed.is_watertight and holed.euler_number == -2  # genus 2: both holes there
    _, closed = converted(slab_with_holes, isosurface_resolution=48, convert_closing_radius=0.07)
    assert closed.is_watertight and closed.euler_number == 0  # genus 1: the wide hole stays
    near_wide = closed.vertices[np.abs(np.linalg.norm(closed.vertices[:, :2] - [0.3, 0.0], axis=1) - 0.15) < 0.02]
    assert len(near_wide) > 20, "the wide hole keeps its wall"


def test_cavities_are_filled_and_closing_never_drops_inside_voxels():
    shell = lambda p: torch.minimum(0.4 - p.norm(dim=-1), p.norm(dim=-1) - 0.2)  # noqa: E731
    assert pieces(converted(shell, convert_fill_cavities=False)[1]) == 2  # outer and inner surface
    for closing in (0.0, 0.05):  # on the lattice (plain conversion) and on the finer cleaned grid
        _, solid = converted(shell, convert_closing_radius=closing)  # filling is the default
        assert pieces(solid) == 1 and solid.volume == pytest.approx(4 / 3 * np.pi * 0.4**3, rel=0.05)
    rng = np.random.default_rng(0)
    noise = rng.random((24, 24, 24)) > 0.7
    assert (morphology.close(noise, 1.5) >= noise).all()
    cube = np.zeros((20, 20, 20), dtype=bool)
    cube[4:15, 3:12, 6:17] = True  # convex: its closing is itself, also where it touches the border
    assert (morphology.close(cube, 3.0) == cube).all()
    cube[:4, 3:12, 6:17] = True  # still a box, now reaching the array's border
    assert (morphology.close(cube, 3.0) == cube).all()


def test_edt_signed_distance_of_a_sphere_matches_the_true_distance():
    n, radius = 48, 15.3  # voxels
    ijk = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1) - (n - 1) / 2 + 0.2
    truth = radius - np.linalg.norm(ijk, axis=-1)
    inside = truth > 0
    distance = morphology.signed_distance(inside)
    assert np.abs(distance - truth).max() < 1.0
    assert ((distance > 0) == inside).all()
    # a first-order estimate next to the surface (a smooth field's level over its gradient) makes it sub-voxel
    field = np.exp(-(np.linalg.norm(ijk, axis=-1) / 20.0) ** 2)
    level = np.exp(-(radius / 20.0) ** 2)
    gradient = np.linalg.norm(np.stack(np.gradient(field)), axis=0)
    refined = morphology.signed_distance(inside, (field - level) / gradient)
    band = np.abs(truth) < 1.0
    assert np.abs(refined - truth)[band].max() < 0.1 < np.abs(distance - truth)[band].max()
    assert (morphology.signed_distance(np.zeros((4, 4, 4), bool)) == -np.inf).all()
    assert ndimage.label(morphology.close(inside, 2.0))[1] == 1


def test_a_floater_is_dropped_and_a_second_object_kept():
    main, second = ball((-0.35, 0.0, 0.0), 0.4), ball((0.55, 0.0, 0.0), 0.25)  # 4 cells apart
    floater = ball((0.5, 0.6, 0.6), 0.07)  # about 6 lattice vertices inside, the main ball about 1100
    scene = union(main, second, floater)
    _, everything = converted(scene, convert_min_part_fraction=0.0)
    assert pieces(everything) == 3
    _, cleaned = converted(scene)  # the default fraction, 0.01 of the largest part
    assert pieces(cleaned) == 2
    assert np.linalg.norm(cleaned.vertices - [0.5, 0.6, 0.6], axis=1).min() > 0.3
    _, strict = converted(scene, convert_min_part_fraction=0.5)  # the second object has 0.24 of the main's volume
    assert pieces(strict) == 1 and strict.vertices[:, 0].max() < 0.1


def lattice_pieces(occupancy):
    """Connected pieces of marching tetrahedra's surface of an occupancy [n,n,n] (vertex values ±1)."""
    r = occupancy.shape[0] - 1
    sdf = torch.from_numpy(np.where(occupancy, 1.0, -1.0).reshape(-1)).float()
    v, f = mt.marching_tetrahedra(lambda ids: mt.lattice_points(ids, r, torch.zeros(3), 1.0), sdf, r)
    return pieces(trimesh.Trimesh(v.numpy(), f.numpy()))


def test_cavities_and_parts_are_found_in_marching_tetrahedras_own_connectivity():
    # the Kuhn tetrahedra's edges: axis steps, face diagonals e_a + e_b and the main diagonal, both ways
    steps = [np.eye(3, dtype=int)[i] for i in range(3)]
    expected = {tuple(s) for s in steps} | {tuple(steps[a] + steps[b]) for a in range(3) for b in range(a + 1, 3)} | {(1, 1, 1)}
    expected |= {tuple(-np.array(e)) for e in expected} | {(0, 0, 0)}
    assert {tuple(o - 1) for o in np.argwhere(mt.KUHN_NEIGHBOURS)} == expected
    for direction, opens in (((1, 1, 1), True), ((1, -1, -1), False)):
        solid = np.zeros((13, 13, 13), dtype=bool)
        solid[1:12, 1:12, 1:12] = True
        for k in range(6):  # an empty chain from the centre to the outside, one diagonal step at a time
            solid[tuple(6 + k * np.array(direction))] = False
        assert (lattice_pieces(solid) == 1) == opens  # closed off: each empty vertex is its own inner shell
        filled = morphology.fill_cavities(solid, mt.KUHN_NEIGHBOURS)
        assert (filled == solid).all() == opens and lattice_pieces(filled) == 1
        assert morphology.fill_cavities(solid)[6, 6, 6]  # in 6-connectivity every diagonal chain is enclosed
    parts = np.zeros((12, 12, 12), dtype=bool)
    parts[1:6, 1:6, 1:6] = True
    parts[6, 6, 6] = parts[7, 5, 5] = True  # one (1,1,1) step from the block: the same part; (1,-1,-1) on: apart
    kept = morphology.drop_small_parts(parts, 0.5, mt.KUHN_NEIGHBOURS)
    assert kept[6, 6, 6] and not kept[7, 5, 5] and kept.sum() == 126


@pytest.mark.parametrize("key, value, accepted", [
    ("convert_min_part_fraction", -0.1, "must lie in [0, 1]"),
    ("convert_closing_radius", -0.1, "must lie in [0, radius=1.0)"),
    ("convert_closing_radius", 2.0, "must lie in [0, radius=1.0)"),
    ("convert_supersample", 0, "an integer from 1 to 4"),
])
def test_bad_cleaning_values_are_one_clear_line(key, value, accepted):
    cls = lookup("geometry", "tetrahedra-sdf-grid")
    with pytest.raises(ConfigError) as error:
        parse_structured(cls.Config, {key: value}, "system.geometry")
    message = str(error.value)
    assert f"{key}={value}" in message and accepted in message and "\n" not in message
