"""The exported GLB in the viewers users open it in: Blender's own glTF importer (background mode,
Cycles on the CPU) and <model-viewer> in headless Chromium, through bench/view_asset.py.

A ball whose front (+x, the export's front) is red and whose back is blue must arrive as one textured
piece, red seen from the front and blue from the back. Each test skips when its viewer is missing
(`apt-get install -y blender python3-numpy`; `make web chromium`).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from bench import view_asset
from tests.export.test_export import ball, cfg, front_red
from threestudio_like.export import export_geometry
from threestudio_like.page.assets import model_viewer_script
from threestudio_like.page.browser import chromium_path


def centre_colour(png) -> np.ndarray:
    """Mean RGB in [0,1] of the central 10 % square of an image."""
    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255.0
    h, w = image.shape[:2]
    return image[int(0.45 * h):int(0.55 * h), int(0.45 * w):int(0.55 * w)].reshape(-1, 3).mean(0)


def assert_front_red_back_blue(views: dict) -> None:
    front, back = centre_colour(views["front"]), centre_colour(views["back"])
    assert front[0] > front[2] + 0.2, f"front view centre {front} is not red"
    assert back[2] > back[0] + 0.2, f"back view centre {back} is not blue"
    for name in ("side", "top", "below"):  # every view shows the object, not an empty background
        image = np.asarray(Image.open(views[name]).convert("RGB"), dtype=np.float32)
        assert image.std() > 10, f"the {name} view is blank"


@pytest.fixture(scope="module")
def glb(tmp_path_factory):
    return export_geometry(ball(0.5, front_red), tmp_path_factory.mktemp("export") / "export", cfg())["glb"]


def test_blender_imports_one_textured_piece_facing_the_right_way(glb, tmp_path):
    if shutil.which("blender") is None:
        pytest.skip("no blender on PATH (apt-get install -y blender python3-numpy)")
    paths = view_asset.blender_views(glb, tmp_path, 96)
    report = json.loads((tmp_path / "blender.json").read_text())
    assert (report["objects"], report["loose_parts"], report["image_textured"]) == (1, 1, True)
    assert report["faces"] > 100
    assert_front_red_back_blue(dict(zip(view_asset.VIEWS, paths)))


def test_model_viewer_shows_the_front_red_and_the_back_blue(glb, tmp_path):
    pytest.importorskip("playwright")
    if model_viewer_script() is None or chromium_path() is None:
        pytest.skip("model-viewer or Chromium missing (make web chromium)")
    paths = view_asset.model_viewer_views(glb, tmp_path, 128)
    assert_front_red_back_blue(dict(zip(view_asset.VIEWS, paths)))
    strip = view_asset.strip(paths, tmp_path / "strip.png")
    assert Image.open(strip).size == (6 * 128, 128)
