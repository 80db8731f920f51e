"""Mesh export on analytic density fields: surface, cleanup, texture, files and the mesh preview."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from threestudio_like.data.cameras import make_cameras
from threestudio_like.export import (
    ExportConfig, ExportError, bake_texture, export_geometry, extract_mesh, load_export, render_mesh,
)
from threestudio_like.export.texture import sample_texture, texture_image
from threestudio_like.geometry.base import Geometry

RES = 64
VOXEL = 2.0 / (RES - 1)
RED, BLUE = (1.0, 0.1, 0.0), (0.0, 0.1, 1.0)


class Blobs(Geometry):
    """Union of soft ellipsoids: σ = k · max_i sigmoid((1 − |(p − c_i)/a_i|) · s); surface at σ = k/2."""

    def __init__(self, centers, axes, k=50.0, sharpness=20.0, color=None):
        super().__init__()
        self.radius = 1.0
        self.centers = torch.tensor(centers, dtype=torch.float32)
        self.axes = torch.tensor(axes, dtype=torch.float32)
        self.k, self.sharpness = k, sharpness
        self.color_fn = color or (lambda p: torch.full_like(p, 0.5))

    def density(self, points):
        d = ((points[:, None, :] - self.centers) / self.axes).norm(dim=-1)  # [N, blobs]
        return self.k * torch.sigmoid((1.0 - d) * self.sharpness).max(dim=-1).values

    def color(self, points):
        return self.color_fn(points)

    def isosurface_threshold(self):
        return self.k / 2


def ball(r=0.5, color=None):
    # sharpness in units of 1/r so the soft shell is a few voxels wide whatever the radius
    return Blobs([[0.0, 0.0, 0.0]], [[r, r, r]], sharpness=20.0, color=color)


def front_red(p):
    """Red on the front (+x) half, blue on the back."""
    front = (p[:, :1] > 0).float()
    return front * torch.tensor(RED) + (1 - front) * torch.tensor(BLUE)


def checker(p):
    """A 3D checkerboard with cells of 1/6 (offset so cell walls are not on grid planes)."""
    odd = (torch.floor(p * 6.0 + 0.25).long().sum(dim=-1) % 2).float()[:, None]
    return odd * torch.tensor(RED) + (1 - odd) * torch.tensor(BLUE)


def cfg(**kw):
    return ExportConfig(isosurface_resolution=RES, texture_size=128, progress=False, **kw)


def test_sphere_is_closed_with_the_right_radius_and_outward_normals():
    mesh = extract_mesh(ball(0.5), cfg())
    assert mesh.is_watertight and mesh.volume > 0
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(r - 0.5).max() < VOXEL
    assert abs(r.mean() - 0.5) < 0.2 * VOXEL
    outward = (mesh.vertex_normals * mesh.vertices).sum(axis=1) / r
    assert outward.mean() > 0.95
    assert mesh.metadata["isosurface_threshold"] == 25.0


def test_auto_threshold_falls_back_to_a_fraction_of_the_max():
    weak = Blobs([[0.0, 0.0, 0.0]], [[0.5, 0.5, 0.5]], k=3.0)
    weak.isosurface_threshold = lambda: 25.0  # never reached: max density is 3
    mesh = extract_mesh(weak, cfg())
    assert mesh.metadata["isosurface_threshold"] == pytest.approx(1.5, rel=1e-3)  # 0.5 × max: the σ = k/2 shell
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - 0.5).max() < VOXEL


def test_floater_removal_drops_a_small_separate_blob():
    geometry = Blobs([[-0.2, 0.0, 0.0], [0.7, 0.0, 0.0]], [[0.5] * 3, [0.1] * 3])
    kept = extract_mesh(geometry, cfg(min_component_fraction=0.05))
    assert len(kept.split(only_watertight=False)) == 1 and kept.bounds[1, 0] < 0.35
    both = extract_mesh(geometry, cfg(min_component_fraction=0.0))
    assert len(both.split(only_watertight=False)) == 2 and both.bounds[1, 0] > 0.75


class Shell(Geometry):
    """σ = 50 between radii 0.3 and 0.6, 0 elsewhere; with ``opening`` a cylinder of radius 0.15
    along +z is cut through the wall, so the hollow reaches the outside (a cup, not a cavity)."""

    def __init__(self, opening=False):
        super().__init__()
        self.radius, self.opening = 1.0, opening

    def density(self, points):
        r = points.norm(dim=-1)
        solid = (r > 0.3) & (r < 0.6)
        if self.opening:
            solid &= ~((points[:, :2].norm(dim=-1) < 0.15) & (points[:, 2] > 0))
        return 50.0 * solid.float()

    def color(self, points):
        return torch.full_like(points, 0.5)


def test_an_enclosed_hollow_leaves_no_inner_shell_and_the_outer_surface_as_it_was():
    filled = extract_mesh(Shell(), cfg(min_component_fraction=0.0))
    assert len(filled.split(only_watertight=False)) == 1 and filled.is_watertight
    assert np.linalg.norm(filled.vertices, axis=1).min() > 0.6 - VOXEL  # nothing near r = 0.3
    hollow = extract_mesh(Shell(), cfg(min_component_fraction=0.0, fill_cavities=False))
    radii = np.linalg.norm(hollow.vertices, axis=1)
    assert len(hollow.split(only_watertight=False)) == 2 and radii.min() < 0.3 + VOXEL
    # the outer surface is the same vertices, bit for bit
    outer = hollow.vertices[radii > 0.45]
    assert len(outer) == len(filled.vertices)
    np.testing.assert_array_equal(np.unique(outer, axis=0), np.unique(filled.vertices, axis=0))


def test_a_hollow_open_to_the_outside_is_not_filled():
    cup = extract_mesh(Shell(opening=True), cfg(min_component_fraction=0.0))
    radii = np.linalg.norm(cup.vertices, axis=1)
    assert radii.min() < 0.3 + VOXEL  # the inside wall stays: it can be seen through the opening
    unfilled = extract_mesh(Shell(opening=True), cfg(min_component_fraction=0.0, fill_cavities=False))
    assert len(cup.faces) == len(unfilled.faces)


def test_decimation_reaches_the_target_and_keeps_the_shape():
    pytest.importorskip("fast_simplification")
    mesh = extract_mesh(ball(0.5), cfg(decimate_target_faces=2000))
    assert len(mesh.faces) <= 2100
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - 0.5).max() < 2 * VOXEL


@pytest.mark.parametrize("threshold", ["auto", 60.0])
def test_empty_field_fails_with_one_line_and_writes_nothing(tmp_path, threshold):
    geometry = ball(0.5) if threshold != "auto" else Blobs([[0.0, 0.0, 0.0]], [[0.5] * 3], k=0.0)
    with pytest.raises(ExportError) as error:
        export_geometry(geometry, tmp_path / "export", cfg(isosurface_threshold=threshold))
    message = str(error.value)
    assert "\n" not in message and "no surface" in message and "max density" in message
    assert ("isosurface_threshold below 50" in message) if threshold != "auto" else ("max density 0 " in message)
    assert list(tmp_path.iterdir()) == []


def test_bad_threshold_is_a_one_line_config_error():
    with pytest.raises(ValueError, match="isosurface_threshold='high' is not accepted"):
        ExportConfig(isosurface_threshold="high")


@pytest.mark.parametrize("key", ["decimate_target_faces", "texture_padding", "texture_dilation"])
def test_negative_counts_are_one_line_config_errors(key):
    with pytest.raises(ValueError, match=f"{key}") as error:
        ExportConfig(**{key: -1})
    assert "\n" not in str(error.value) and ">= 0" in str(error.value)


def test_textured_obj_reads_back_with_uvs_and_its_texture(tmp_path):
    paths = export_geometry(ball(0.5, front_red), tmp_path / "export", cfg())
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"model.obj", "model.mtl", "texture_kd.png", "model.glb", "export.json"}
    mtl = paths["mtl"].read_text()
    assert "map_Kd texture_kd.png" in mtl and "Kd 1.000 1.000 1.000" in mtl
    mesh = trimesh.load(paths["obj"], force="mesh")
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    assert texture_image(mesh).size == (128, 128)
    colors = sample_texture(texture_image(mesh), mesh.visual.uv)
    front = mesh.vertices[:, 2] > 0.1  # OBJ is +Y up with the front (+x world) facing +Z
    assert np.abs(colors[front] - RED).max(axis=1).mean() < 0.05


def test_glb_has_a_pbr_texture_and_is_y_up_with_the_front_facing_z(tmp_path):
    tall = Blobs([[0.0, 0.0, 0.0]], [[0.25, 0.25, 0.8]], color=front_red)  # tall along world z
    paths = export_geometry(tall, tmp_path / "export", cfg())
    scene = trimesh.load(paths["glb"])
    (mesh,) = scene.geometry.values()
    material = mesh.visual.material
    assert isinstance(material, trimesh.visual.material.PBRMaterial) and material.baseColorTexture is not None
    extents = mesh.extents
    assert extents[1] == pytest.approx(1.0, abs=1e-4) and extents[1] > 2.5 * max(extents[0], extents[2])
    assert np.abs(mesh.bounds.mean(axis=0)).max() < 1e-4  # centred unit box
    colors = sample_texture(material.baseColorTexture, mesh.visual.uv)
    front, back = mesh.vertices[:, 2] > 0.05, mesh.vertices[:, 2] < -0.05
    assert np.abs(colors[front] - RED).max(axis=1).mean() < 0.05
    assert np.abs(colors[back] - BLUE).max(axis=1).mean() < 0.05
    world = load_export(paths["dir"])  # export.json maps the file back to the world frame
    assert np.allclose(world.extents, [0.5, 0.5, 1.6], atol=2 * VOXEL)


def test_checkerboard_bake_matches_the_field_at_vertices_and_face_centres():
    geometry = ball(0.5, checker)
    mesh = bake_texture(geometry, extract_mesh(geometry, cfg()), texture_size=256, progress=False)
    image = texture_image(mesh)
    at_vertices = sample_texture(image, mesh.visual.uv)
    truth = checker(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
    centres_uv = mesh.visual.uv[mesh.faces].mean(axis=1)
    centres = checker(torch.as_tensor(mesh.vertices[mesh.faces].mean(axis=1), dtype=torch.float32)).numpy()
    at_centres = sample_texture(image, centres_uv)
    # bilinear lookup blurs a texel-wide band along cell walls, so: > 80% of the samples within 0.1
    # per channel (measured 0.87 at vertices, 0.88 at face centres) and > 95% on the right side of
    # a wall, within 0.5 (measured 0.97, 0.98); a wrong UV mapping scores about 0.5 on both
    for got, want in ((at_vertices, truth), (at_centres, centres)):
        error = np.abs(got - want).max(axis=1)
        assert (error < 0.1).mean() > 0.8 and (error < 0.5).mean() > 0.95


def test_vertex_colour_export_writes_colours_into_obj_and_glb(tmp_path):
    paths = export_geometry(ball(0.5, front_red), tmp_path / "export", cfg(texture=False))
    assert "texture" not in paths and "mtl" not in paths
    obj = trimesh.load(paths["obj"], force="mesh")
    glb = trimesh.load(paths["glb"], force="mesh")
    for mesh in (obj, glb):
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
        front = mesh.vertices[:, 2] > 0.05
        assert np.abs(colors[front] - RED).max(axis=1).max() < 0.01


def test_a_second_export_to_the_same_path_does_not_overwrite_the_first(tmp_path):
    first = export_geometry(ball(0.5), tmp_path / "export", cfg(texture=False))
    digest = hashlib.sha256(first["glb"].read_bytes()).hexdigest()
    second = export_geometry(ball(0.4), tmp_path / "export", cfg(texture=False))
    assert second["dir"] == tmp_path / "export-2" and first["dir"] == tmp_path / "export"
    assert hashlib.sha256(first["glb"].read_bytes()).hexdigest() == digest
    assert json.loads(second["json"].read_text())["faces"] < json.loads(first["json"].read_text())["faces"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export-2"]  # no temp folders left


def textured_cube() -> trimesh.Trimesh:
    """A unit cube (side 1) whose six faces show six colours from a hand-made texture of 6 strips."""
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    cube.unmerge_vertices()
    normals = np.asarray(cube.face_normals)
    # strip index: +x, −x, +y, −y, +z, −z
    strip = np.argmax(np.abs(normals), axis=1) * 2 + (normals[np.arange(len(normals)), np.argmax(np.abs(normals), axis=1)] < 0)
    corners = np.array([[0.3, 0.3], [0.7, 0.3], [0.5, 0.7]])
    uv = np.zeros((len(cube.vertices), 2))
    for f, face in enumerate(cube.faces):
        uv[face] = np.stack([(strip[f] + corners[:, 0]) / 6.0, corners[:, 1]], axis=1)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], dtype=np.uint8)
    image = Image.fromarray(np.repeat(np.repeat(palette[None], 8, axis=1), 8, axis=0))  # 8 × 48
    cube.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    return cube, palette / 255.0


def test_preview_renders_a_textured_cube_with_the_right_face_colours():
    cube, palette = textured_cube()
    views = {"front": (0.0, 0.0, 0), "left": (0.0, 90.0, 2), "back": (0.0, 180.0, 1), "top": (89.9, 0.0, 4)}
    elevation = torch.tensor([v[0] for v in views.values()])
    azimuth = torch.tensor([v[1] for v in views.values()])
    cameras = make_cameras(elevation, azimuth, torch.full((4,), 3.0), torch.full((4,), 40.0), 64, 64)
    out = render_mesh(cube, cameras)
    for b, (_, _, strip) in enumerate(views.values()):
        assert torch.allclose(out["rgb"][b, 32, 32], torch.tensor(palette[strip], dtype=torch.float32), atol=1e-3)
    # the front face (side 1 at distance 2.5) covers (1/2.5 · f)² pixels, f = 32 / tan 20°
    side = 1.0 / 2.5 * 32.0 / np.tan(np.deg2rad(20.0))
    assert out["mask"][0].sum().item() == pytest.approx(side ** 2, rel=0.05)
    assert out["depth"][0, 32, 32, 0].item() == pytest.approx(2.5, abs=1e-3)
    assert torch.equal(out["rgb"][0, 0, 0], torch.ones(3))  # background
