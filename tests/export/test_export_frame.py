"""Every file of an export in one frame: GLB, OBJ and splats.ply share the placement (centred or on
the ground), splats.ply stands upright for 3DGS viewers, the texture is sized from the surface and
its atlas coverage reported; JPEG textures."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from tests.page_runs import RED, ball_on_box
from threestudio_like.config import ConfigError, load_config
from threestudio_like.export import ExportConfig, export_geometry
from threestudio_like.export.splat_ply import read_splat_ply, transform_splats
from threestudio_like.export.texture import auto_texture_size
from threestudio_like.geometry.base import Splats

SH_C0, SH_C1 = 0.28209479177387814, 0.4886025119029199


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "it1-export"
    cfg = ExportConfig(isosurface_resolution=48, texture_size="auto", texture_texels_per_unit=128, placement="ground",
                       texture_format="jpg", texture_jpeg_quality=80, progress=False)
    geometry = ball_on_box()
    paths = export_geometry(geometry, out, cfg)
    return geometry, paths, json.loads(paths["json"].read_text())


def test_files_share_one_frame_resting_on_the_ground(grounded):
    geometry, paths, info = grounded
    assert set(info["files"]) == {"model.obj", "model.mtl", "texture_kd.jpg", "model.glb", "splats.ply", "export.json"}
    assert all((paths["dir"] / name).is_file() for name in info["files"])
    glb = trimesh.load(paths["glb"], force="mesh")
    obj = trimesh.load(paths["obj"], force="mesh")
    lo, hi = glb.bounds
    assert abs(lo[1]) < 1e-5  # resting on y = 0
    assert np.allclose(0.5 * (lo + hi)[[0, 2]], 0.0, atol=1e-5)  # centred across
    assert max(hi - lo) == pytest.approx(1.0, abs=1e-5)  # unit box
    assert np.allclose(obj.bounds, glb.bounds, atol=1e-5)
    # splats.ply: −Y up (3DGS viewers); turned back 180° about z it lies where the mesh is
    splats = read_splat_ply(paths["splats"])
    centres = splats["means"] * np.array([-1.0, -1.0, 1.0])
    sigma = float(np.exp(splats["scales"]).max())
    assert np.all(centres >= lo - 3 * sigma) and np.all(centres <= hi + 3 * sigma)
    assert centres[:, 1].min() < lo[1] + 3 * sigma and centres[:, 1].max() > hi[1] - 3 * sigma
    # upright: the red ball's Gaussians above the blue box's (towards −y in the file)
    rgb = 0.5 + SH_C0 * splats["f_dc"]
    red = np.abs(rgb - np.array(RED)).max(axis=1) < 0.05
    assert 0 < red.sum() < len(rgb) and splats["means"][red, 1].mean() < splats["means"][~red, 1].mean()
    assert info["frames"]["splats.ply"] == (np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array(info["world_to_file"])).tolist()


def test_texture_size_from_the_surface_coverage_and_jpeg(grounded):
    geometry, paths, info = grounded
    glb = trimesh.load(paths["glb"], force="mesh")
    world_area = glb.area  # in the unit box: lengths in units of the largest side
    expected = int(np.clip(2 ** round(math.log2(math.sqrt(world_area / 0.75) * 128)), 256, 4096))
    assert info["texture_size"] == expected
    assert auto_texture_size(glb, 128) == expected
    assert 0.5 < info["atlas_coverage"] <= 1.0
    assert "map_Kd texture_kd.jpg" in (paths["dir"] / "model.mtl").read_text()
    with Image.open(paths["dir"] / "texture_kd.jpg") as image:
        assert image.format == "JPEG" and image.size == (expected, expected)
    assert trimesh.load(paths["obj"], force="mesh").visual.material.image is not None


def quaternion_matrix(q):
    """Rotation matrix of a unit wxyz quaternion (transcribed from the standard formula)."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def degree_one_colour(sh, d):
    """3DGS's SH colour to degree 1 (without the +0.5): C0 c0 − C1 y c1 + C1 z c2 − C1 x c3."""
    x, y, z = d
    return SH_C0 * sh[0] - SH_C1 * y * sh[1] + SH_C1 * z * sh[2] - SH_C1 * x * sh[3]


def test_splats_move_with_the_frame_covariance_and_view_dependent_colour():
    g = torch.Generator().manual_seed(1)
    n = 5
    splats = Splats(means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
                    log_scales=torch.randn(n, 3, generator=g) * 0.3 - 2, opacity_logits=torch.randn(n, generator=g),
                    sh=torch.randn(n, 4, 3, generator=g))
    turn = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # z-up world → y-up file
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = 0.7 * np.diag([-1.0, -1.0, 1.0]) @ turn, [0.1, -0.2, 0.3]
    out = transform_splats(splats, matrix)
    rotation = matrix[:3, :3] / 0.7
    assert np.allclose(out["means"], splats.means.numpy() @ matrix[:3, :3].T + matrix[:3, 3], atol=1e-6)
    for i in range(n):
        q = splats.quats[i].double().numpy()
        R = quaternion_matrix(q / np.linalg.norm(q))
        cov = R @ np.diag(np.exp(2 * splats.log_scales[i].double().numpy())) @ R.T
        R2 = quaternion_matrix(out["quats"][i].astype(np.float64))
        cov2 = R2 @ np.diag(np.exp(2 * out["log_scales"][i].astype(np.float64))) @ R2.T
        assert np.allclose(cov2, 0.49 * rotation @ cov @ rotation.T, rtol=1e-4, atol=1e-8)
        for d in np.random.default_rng(i).normal(size=(4, 3)):
            d /= np.linalg.norm(d)
            before = degree_one_colour(splats.sh[i].double().numpy(), d)
            after = degree_one_colour(out["sh"][i].astype(np.float64), rotation @ d)
            assert np.allclose(after, before, atol=1e-5)


@pytest.mark.parametrize("override, accepted", [
    ("system.exporter.texture_size=big", "'auto' or a side"), ("system.exporter.texture_format=webp", "png, jpg"),
    ("system.exporter.placement=floor", "center, ground, world"), ("system.exporter.splat_up=z", "-y, +y"),
])
def test_bad_export_options_are_one_line(root, override, accepted):
    with pytest.raises(ConfigError) as error:
        load_config(root / "configs/sds-nerf.yaml", [override])
    assert accepted in str(error.value) and "\n" not in str(error.value)


def test_decimation_leaves_one_piece():
    from threestudio_like.export import extract_mesh

    mesh = extract_mesh(ball_on_box(), ExportConfig(isosurface_resolution=48, decimate_target_faces=1500, progress=False))
    assert len(mesh.faces) <= 1500 and len(mesh.split(only_watertight=False)) == 1
