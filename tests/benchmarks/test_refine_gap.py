"""bench/refine_gap.py: the error split by region, the outline bound on the true surface, the chain."""
import json
import math

import torch
import trimesh

from bench import refine_gap
from threestudio_like import metrics
from threestudio_like.data.cameras import make_cameras
from threestudio_like.priors.scenes import parse_prompt


def test_region_errors_split_the_squared_error_by_mask():
    truth_rgb = torch.ones(1, 4, 4, 3)
    truth_mask = torch.zeros(1, 4, 4, 1)
    truth_mask[0, :2, :2] = 1.0  # 4 true pixels, coloured 0.2
    truth_rgb[0, :2, :2] = 0.2
    mask = torch.zeros(1, 4, 4, 1)
    mask[0, 0, :3] = 1.0  # ours covers two true pixels and one outside
    rgb = torch.ones(1, 4, 4, 3)
    rgb[0, 0, :3] = 0.3
    out = refine_gap.region_errors(rgb, mask, truth_rgb, truth_mask)
    # squared errors per pixel: both 2 × 0.01, truth only 2 × 0.64, ours only 1 × 0.49, elsewhere 0
    total = 2 * 0.01 + 2 * 0.64 + 0.49
    assert math.isclose(out["share_both"], 0.02 / total, rel_tol=1e-6)
    assert math.isclose(out["share_truth_only"], 1.28 / total, rel_tol=1e-6)
    assert math.isclose(out["share_render_only"], 0.49 / total, rel_tol=1e-6)
    assert out["share_neither"] == 0.0
    assert (out["pixels_both"], out["pixels_truth_only"], out["pixels_render_only"], out["pixels_neither"]) == (2, 2, 1, 11)
    assert math.isclose(out["psnr"], -10 * math.log10(total / 16), rel_tol=1e-6)
    assert math.isclose(out["psnr_inside"], -10 * math.log10(0.01), rel_tol=1e-6)


def test_the_outline_bound_of_the_true_surface_is_the_true_view_and_a_shrunk_one_misses_the_rim():
    scene = parse_prompt("a red ball on a blue box")
    cameras = make_cameras(torch.tensor([20.0, 20.0]), torch.tensor([22.5, 202.5]), torch.full((2,), 2.5), torch.full((2,), 40.0), 32, 32)
    truth = scene.render(cameras)
    vertices, faces = scene.surface_mesh(96)
    exact = refine_gap.true_colour_render(trimesh.Trimesh(vertices, faces, process=False), scene, cameras)
    assert metrics.psnr(exact["rgb"], truth["rgb"]) > 30.0
    centre = 0.5 * (vertices.min(0) + vertices.max(0))
    shrunk = trimesh.Trimesh(centre + 0.9 * (vertices - centre), faces, process=False)
    inset = refine_gap.true_colour_render(shrunk, scene, cameras)
    split = refine_gap.region_errors(inset["rgb"], inset["mask"], truth["rgb"], truth["mask"])
    assert split["pixels_truth_only"] > 20 and split["pixels_render_only"] == 0
    assert split["share_truth_only"] > 0.5  # the missing rim, not the colour, is most of the error
    assert split["psnr"] < metrics.psnr(exact["rgb"], truth["rgb"]) - 3.0


def test_the_chain_is_followed_back_through_convert_records(tmp_path):
    stage1, geometry, texture = (tmp_path / name for name in ("coarse", "geometry", "texture"))
    for folder in (stage1, geometry, texture):
        folder.mkdir()
    (geometry / "convert_from.json").write_text(json.dumps({"run": str(stage1)}))
    (texture / "convert_from.json").write_text(json.dumps({"run": str(geometry)}))
    assert refine_gap.chain_of(texture) == [stage1, geometry, texture]


def test_a_folder_that_is_not_a_run_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert refine_gap.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path) in err and "run folder" in err
