"""Run and index pages: written from real run folders, opened in headless Chromium."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.browser import region_std, visit
from tests.page_runs import make_run
from threestudio_like.page import write_run_page
from threestudio_like.page.__main__ import main as page_command
from threestudio_like.page.assets import model_viewer_script


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep")
    return [make_run(sweep / "sds-gs" / f"run{i}") for i in range(2)]


def test_run_page_in_chromium_shows_the_asset_video_curves_and_upright_splats(runs, tmp_path):
    if model_viewer_script() is None:
        pytest.skip("the 3D viewer is not installed: run `make web` (npm install of @google/model-viewer)")
    page = write_run_page(runs[0])
    assert page == runs[0] / "page/index.html"
    text = page.read_text()
    assert "https://" not in text and "http://" not in text  # offline: nothing from a CDN
    shot = tmp_path / "page.png"
    ready = ("document.body.dataset.modelLoaded && document.getElementById('splat-viewer').dataset.loaded"
             " && document.getElementById('turntable').readyState >= 2 && document.getElementById('curves').complete"
             " && [document.body.dataset.modelLoaded, document.getElementById('splat-viewer').dataset.loaded,"
             " document.getElementById('turntable').videoWidth, document.getElementById('curves').naturalWidth]")
    result = visit(page.as_uri(), ready, shot, selectors=("#asset-viewer", "#splat-viewer"))
    assert result["errors"] == []
    model, splats, video_width, curves_width = result["value"]
    assert model == "true" and splats == "true"  # model-viewer's load event; the splat viewer drew a frame
    assert video_width == 96 and curves_width > 0  # the turntable decoded, the curves image loaded
    # neither viewer is blank, and the splats stand upright: the red ball above the blue box
    assert region_std(shot, result["boxes"]["#asset-viewer"]) > 10
    x0, y0, x1, y1 = result["boxes"]["#splat-viewer"]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)[y0:y1, x0:x1]
    red = (pixels[..., 0] > 150) & (pixels[..., 2] < 110)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 110)
    assert red.sum() > 500 and blue.sum() > 500
    rows = np.arange(len(pixels))[:, None]
    assert (rows * red).sum() / red.sum() < (rows * blue).sum() / blue.sum()  # screen y grows downwards


def test_index_page_over_a_sweep_folder_and_bad_input(runs, tmp_path, capsys):
    sweep = runs[0].parent.parent
    assert page_command([str(sweep), "-o", str(tmp_path / "index")]) == 0
    index = (tmp_path / "index/index.html").read_text()
    for run in runs:
        assert (run / "page/index.html").is_file()
        assert f"{run.name}/page/index.html" in index
    capsys.readouterr()
    assert page_command([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err and err.startswith("error: ")


def test_page_lists_the_export_and_quality(runs):
    (runs[1] / "quality.json").write_text(json.dumps({"psnr": 21.5, "iou": 0.93}))
    text = write_run_page(runs[1]).read_text()
    info = json.loads((runs[1] / "save/it20-export/export.json").read_text())
    for name in info["files"]:
        assert f"../save/it20-export/{name}" in text
    assert "21.5" in text and "atlas coverage" in text and "splats.ply" in text


def test_serve_answers_on_loopback_only(runs):
    import re
    import subprocess
    import sys
    import urllib.request

    from page_runs import ROOT

    server = subprocess.Popen([sys.executable, "-m", "threestudio_like.page", str(runs[0]), "--serve", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = ""
        while "serving" not in line:
            line = server.stdout.readline()
            assert line or server.poll() is None, server.stderr.read()
        url = re.search(r"(http://\S+)", line).group(1)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/page/index.html")
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200 and b"model-viewer" in answer.read()
        video = url.replace("page/index.html", "save/it20-test.mp4")
        with urllib.request.urlopen(video, timeout=30) as answer:  # the page's relative links resolve
            assert answer.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
