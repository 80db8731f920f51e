"""Colour for the surface no training view sees (exporter.fill_unseen, export/visibility.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from threestudio_like.data.cameras import RandomCameraConfig, make_cameras
from threestudio_like.export import ExportConfig, bake_texture, export_geometry, load_export
from threestudio_like.export.texture import texture_image
from threestudio_like.export.visibility import (
    FillSettings, TrainingViews, background_like, background_rim, colour_unseen, covering_cameras, fill_unseen, seen_points,
)
from threestudio_like.geometry.base import Geometry
from threestudio_like.geometry.mesh import Mesh

HALF = 0.3  # the test box spans [−0.3, 0.3]³
RED, BLUE, YELLOW, GREEN, WHITE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (1.0, 1.0, 1.0)


def box_mesh(half: float = HALF, subdivisions: int = 3) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=(2 * half,) * 3)
    for _ in range(subdivisions):
        mesh = mesh.subdivide()
    return mesh


def side_colours(p: torch.Tensor) -> torch.Tensor:
    """Green on the bottom face (z = −0.3, what no camera above it sees), else by quadrant: red where
    x ≥ |y| (the +x side), blue where x ≤ −|y| (−x), yellow elsewhere (±y and the top)."""
    x, y, z = p.unbind(-1)
    out = torch.tensor(YELLOW).expand(len(p), 3).clone()
    out[x >= y.abs()] = torch.tensor(RED)
    out[x <= -y.abs()] = torch.tensor(BLUE)
    out[z < -HALF + 1e-5] = torch.tensor(GREEN)  # the bottom face only: texel centres on the sides lie higher
    return out


class BoxGeometry(Geometry):
    """A mesh geometry (it offers isosurface(), as DMTet does) with a colour function of position."""

    def __init__(self, color=side_colours):
        super().__init__()
        self.radius, self.color_fn, self.mesh = 1.0, color, box_mesh()

    def isosurface(self):
        return Mesh.from_trimesh(self.mesh)

    def color(self, points):
        return self.color_fn(points)


def above(low: float = 0.0, high: float = 40.0) -> TrainingViews:
    """Training views at elevations [low, high] all around, 2 away: for low ≥ 0 the bottom is unseen."""
    camera_range = RandomCameraConfig(elevation_range=[low, high], camera_distance_range=[1.8, 2.0], fovy_range=[35.0, 40.0])
    return TrainingViews(camera_range, None)


def texel_colours(mesh: trimesh.Trimesh, faces: np.ndarray) -> np.ndarray:
    """uint8 [K,3]: the texel of the baked image under each face's UV centroid (nearest texel; u
    left → right, v bottom → top)."""
    image = np.asarray(texture_image(mesh).convert("RGB"))
    size = image.shape[0]
    uv = mesh.visual.uv[mesh.faces[faces]].mean(axis=1)
    column = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    row = np.clip(((1.0 - uv[:, 1]) * size).astype(int), 0, size - 1)
    return image[row, column]


def test_an_unseen_bottom_takes_the_colour_of_the_nearest_side_and_seen_texels_stay_bit_for_bit():
    geometry = BoxGeometry()
    plain = bake_texture(geometry, geometry.mesh, texture_size=256, progress=False)
    filled = bake_texture(geometry, geometry.mesh, texture_size=256, progress=False, seen_by=above())
    assert np.array_equal(plain.visual.uv, filled.visual.uv)  # the same atlas: texels are comparable
    centres = filled.triangles_center
    bottom = filled.face_normals[:, 2] < -0.99
    assert filled.metadata["unseen_fraction"] == pytest.approx(1 / 6, abs=0.03)  # one face of six
    got = texel_colours(filled, np.nonzero(bottom)[0])
    # the nearest point of the seen sides to (x, y, −0.3) is on the side nearest to (x, y): +x is red,
    # −x blue, ±y yellow; the search may return a point up to 1.5× as far, so only texels whose
    # second-nearest side is farther than that are asked
    x, y = centres[bottom, 0], centres[bottom, 1]
    distance = np.stack([HALF - x, HALF + x, HALF - y, HALF + y], 1)
    order = np.sort(distance, axis=1)
    clear = order[:, 1] > 1.5 * order[:, 0] + 0.01
    expected = np.array([RED, BLUE, YELLOW, YELLOW], dtype=np.uint8)[distance.argmin(1)] * 255
    assert clear.sum() > 0.5 * bottom.sum()
    assert np.array_equal(got[clear], expected[clear])
    assert {tuple(c) for c in expected[clear]} == {(255, 0, 0), (0, 0, 255), (255, 255, 0)}
    assert (texel_colours(plain, np.nonzero(bottom)[0]) == np.array([0, 255, 0])).all()  # unfilled: the free colour
    others = np.nonzero(~bottom)[0]
    assert np.array_equal(texel_colours(plain, others), texel_colours(filled, others))


def test_views_from_below_see_the_bottom_and_leave_the_texture_as_it_was():
    geometry = BoxGeometry()
    plain = bake_texture(geometry, geometry.mesh, texture_size=128, progress=False)
    everywhere = bake_texture(geometry, geometry.mesh, texture_size=128, progress=False, seen_by=above(-60.0, 60.0))
    assert everywhere.metadata["unseen_fraction"] == 0.0
    assert np.array_equal(np.asarray(texture_image(plain)), np.asarray(texture_image(everywhere)))


def test_the_trainer_path_writes_the_filled_texture_and_its_fraction(tmp_path):
    paths = export_geometry(BoxGeometry(), tmp_path / "export", ExportConfig(texture_size=128, progress=False), above())
    mesh = load_export(paths["dir"])  # back in the z-up world frame
    bottom = np.nonzero(mesh.face_normals[:, 2] < -0.99)[0]
    assert len(bottom) > 0 and not (texel_colours(mesh, bottom) == np.array([0, 255, 0])).all(axis=1).any()
    import json

    assert json.loads(paths["json"].read_text())["unseen_fraction"] == pytest.approx(1 / 6, abs=0.03)
    off = export_geometry(BoxGeometry(), tmp_path / "off", ExportConfig(texture_size=128, progress=False, fill_unseen=False), above())
    assert json.loads(off["json"].read_text())["unseen_fraction"] is None


def inner_bottom_green(p: torch.Tensor) -> torch.Tensor:
    """:func:`side_colours` with green only inside the bottom face: its edge vertices, which the
    sides share, take their side's colour."""
    out = side_colours(p)
    edge = (p[:, :2].abs().max(dim=-1).values > HALF - 1e-4) & (p[:, 2] < -HALF + 1e-5)
    out[edge] = side_colours(p[edge] + torch.tensor([0.0, 0.0, 1e-3]))
    return out


def test_vertex_colours_are_filled_too(tmp_path):
    cfg = ExportConfig(texture=False, progress=False)
    paths = export_geometry(BoxGeometry(inner_bottom_green), tmp_path / "export", cfg, above())
    mesh = load_export(paths["dir"])
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3]
    inner_bottom = (mesh.vertices[:, 2] < -HALF + 1e-4) & (np.abs(mesh.vertices[:, :2]).max(axis=1) < HALF - 1e-4)
    assert inner_bottom.sum() > 10 and not (colours[inner_bottom] == [0, 255, 0]).all(axis=1).any()


def one_camera(elevation: float, azimuth: float, size: int = 96):
    return make_cameras(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([2.0]), torch.tensor([40.0]), size, size)


def test_a_camera_sees_the_faces_turned_to_it_and_not_what_an_occluder_hides():
    front = box_mesh(0.2, 2)  # a box at the origin and a small one hidden behind it seen from +x
    hidden = box_mesh(0.05, 2).apply_translation([-0.5, 0.0, 0.0])
    both = trimesh.util.concatenate([front, hidden])
    vertices = torch.as_tensor(both.vertices, dtype=torch.float32)
    faces = torch.as_tensor(both.faces)
    points = torch.as_tensor(np.array(both.triangles_center), dtype=torch.float32)
    normals = torch.as_tensor(np.array(both.face_normals), dtype=torch.float32)
    from_front = seen_points(points, normals, vertices, faces, one_camera(0.0, 0.0)).numpy()
    from_back = seen_points(points, normals, vertices, faces, one_camera(0.0, 180.0)).numpy()
    n = both.face_normals
    in_hidden = np.arange(len(both.faces)) >= len(front.faces)
    facing_x = (n[:, 0] > 0.99) & ~in_hidden
    assert from_front[facing_x].all() and not from_front[(n[:, 0] < -0.99) & ~in_hidden].any()
    assert not from_front[in_hidden].any()  # behind the big box
    assert from_back[in_hidden & (n[:, 0] < -0.99)].all()  # turned to the camera at −x, nothing between


def test_oblique_faces_count_as_seen_only_within_the_angle():
    # a plane through the origin tilted 80° away from a camera on +x: seen within 85°, not 75°
    tilt = math.radians(80.0)
    normal = np.array([math.cos(tilt), 0.0, math.sin(tilt)])
    u = np.array([-math.sin(tilt), 0.0, math.cos(tilt)])
    v = np.array([0.0, 1.0, 0.0])
    corners = np.array([-u - v, u - v, u + v, -u + v]) * 0.2
    plane = trimesh.Trimesh(corners, [[0, 2, 1], [0, 3, 2]], process=False)
    assert np.allclose(plane.face_normals[0], normal)
    points = torch.as_tensor(np.array(plane.triangles_center), dtype=torch.float32)
    normals = torch.as_tensor(np.array(plane.face_normals), dtype=torch.float32)
    args = (torch.as_tensor(plane.vertices, dtype=torch.float32), torch.as_tensor(plane.faces), one_camera(0.0, 0.0, 256))
    # angle between the normal and the direction to the camera, 2 away on +x: about 80°
    assert seen_points(points, normals, *args, max_angle=85.0).all()
    assert not seen_points(points, normals, *args, max_angle=75.0).any()


def test_covering_cameras_span_the_range_at_its_farthest_and_widest():
    camera_range = RandomCameraConfig(elevation_range=[-10.0, 60.0], camera_distance_range=[1.5, 2.5], fovy_range=[30.0, 45.0])
    cameras = covering_cameras(camera_range, 48, 64)
    assert len(cameras) == 48 and cameras.width == cameras.height == 64
    assert cameras.elevation.min().item() == pytest.approx(-10.0) and cameras.elevation.max().item() == pytest.approx(60.0)
    assert torch.allclose(cameras.distance, torch.tensor(2.5)) and torch.allclose(cameras.fovy, torch.tensor(math.radians(45.0)))
    assert torch.allclose(cameras.position.norm(dim=-1), torch.tensor(2.5), atol=1e-5)
    for ring in cameras.elevation.unique():  # each ring goes all around: no azimuth gap wider than its step
        azimuth = torch.sort(cameras.azimuth[cameras.elevation == ring]).values
        gaps = torch.diff(torch.cat([azimuth, azimuth[:1] + 360.0]))
        assert gaps.max().item() == pytest.approx(360.0 / len(azimuth), abs=1e-3)
    single = covering_cameras(RandomCameraConfig(elevation_range=[20.0, 20.0]), 8, 32)
    assert len(single) == 8 and (single.elevation == 20.0).all()


def test_fill_takes_the_nearest_seen_colour_and_keeps_the_seen_exactly():
    points = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [10.0, 0, 0], [3.0, 0, 0]], dtype=np.float32)
    colours = np.array([GREEN, WHITE, BLUE, RED, YELLOW], dtype=np.float32)
    seen = np.array([False, True, True, True, False])
    filled = fill_unseen(colours, points, seen)
    assert np.array_equal(filled[0], WHITE) and np.array_equal(filled[4], BLUE)
    assert np.array_equal(filled[seen], colours[seen])
    # a seen point painted like the background gives no colour: the next nearest seen does
    sources = ~background_like(colours, seen, WHITE, 0.75)
    assert sources.tolist() == [True, False, True, True, True]
    assert np.array_equal(fill_unseen(colours, points, seen, sources)[0], BLUE)


@pytest.mark.parametrize("seen", [np.ones(3, dtype=bool), np.zeros(3, dtype=bool)], ids=["all seen", "none seen"])
def test_fill_with_everything_or_nothing_seen_returns_the_colours_unchanged(seen):
    colours = np.random.default_rng(0).random((3, 3)).astype(np.float32)
    points = np.random.default_rng(1).random((3, 3)).astype(np.float32)
    assert np.array_equal(fill_unseen(colours, points, seen), colours)


def test_background_like_is_relative_to_the_object_contrast():
    # a pale-blue object on white: its own colours are 0.5 from white, a blend 0.2 from it
    colours = np.array([[0.7, 0.7, 1.0]] * 8 + [[0.9, 0.9, 1.0]], dtype=np.float32)
    seen = np.ones(9, dtype=bool)
    assert background_like(colours, seen, WHITE, 0.75).tolist() == [False] * 8 + [True]
    assert not background_like(colours, seen, None, 0.75).any() and not background_like(colours, seen, WHITE, 0.0).any()


@pytest.mark.parametrize("key,value", [("fill_unseen_views", 0), ("fill_unseen_resolution", 8),
                                       ("fill_unseen_max_angle", 0.0), ("fill_unseen_background_fraction", 1.5),
                                       ("fill_unseen_rim_distance", -0.1)])
def test_bad_fill_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        ExportConfig(**{key: value})


def test_fill_settings_follow_the_config():
    assert ExportConfig(fill_unseen_views=12, fill_unseen_max_angle=60.0).fill_settings() == FillSettings(12, 256, 60.0, 0.75)


def test_the_background_rim_is_background_like_surface_next_to_the_unseen():
    points = np.array([[0.0, 0, 0], [0.05, 0, 0], [0.2, 0, 0], [0.5, 0, 0]], dtype=np.float32)
    seen = np.array([False, True, True, True])
    background = np.array([False, True, False, True])  # the pale points at 0.05 and 0.5
    assert background_rim(points, seen, background, 0.1).tolist() == [False, True, False, False]
    assert background_rim(points, seen, background, 0.6).tolist() == [False, True, False, True]
    assert not background_rim(points, seen, background, 0.0).any()
    assert not background_rim(points, np.ones(4, dtype=bool), background, 0.6).any()  # nothing unseen


@pytest.mark.parametrize("rim_distance", [0.0, 0.12])
def test_a_pale_band_above_the_unseen_bottom_is_recoloured_only_with_a_rim_distance(rim_distance):
    """A blue box seen from 10°–60°: its bottom is unseen; a white band along the sides' lower edge
    (z < −0.22, as a hanging underside shows the lowest views) and a white patch high on one side."""
    mesh = box_mesh()
    points, faces = trimesh.sample.sample_surface_even(mesh, 6000, seed=0)
    points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    normals = torch.as_tensor(np.asarray(mesh.face_normals)[faces], dtype=torch.float32)
    colours = np.tile(np.array(BLUE, dtype=np.float32), (len(points), 1))
    side = np.abs(normals[:, 2].numpy()) < 0.5
    band = side & (points[:, 2].numpy() < -0.22)
    patch = side & (points[:, 2].numpy() > 0.15) & (points[:, 0].numpy() > HALF - 1e-4) & (np.abs(points[:, 1].numpy()) < 0.1)
    colours[band | patch] = WHITE
    views = TrainingViews(RandomCameraConfig(elevation_range=[10.0, 60.0]), background=WHITE)
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    filled, unseen = colour_unseen(colours, points, normals, vertices, torch.as_tensor(np.asarray(mesh.faces)), views,
                                   FillSettings(views=24, resolution=96, rim_distance=rim_distance))
    bottom = normals[:, 2].numpy() < -0.5
    assert 0.1 < unseen and np.allclose(filled[bottom], BLUE)  # the unseen bottom takes no white either way
    assert np.allclose(filled[patch], WHITE)  # far from the unseen: kept as seen
    low = band & (points[:, 2].numpy() < -0.25)  # the band's lower part, within 0.05 of the bottom edge
    assert np.allclose(filled[low], BLUE if rim_distance else WHITE)
