"""bench/quality.py: the --quick matrix end to end, the Janus reference views, the doc section."""
import csv
import json
import math

import pytest
import torch

from bench import quality, quality_measures, quality_report
from threestudio_like import metrics
from threestudio_like.data.cameras import make_cameras
from threestudio_like.priors.scenes import parse_prompt


def red_pixels(rgb):
    """Count of label-red pixels [V,H,W,3] → [V] (the mug's front label; its body is white)."""
    return ((rgb[..., 0] > 0.5) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)).sum(dim=(1, 2))


def test_opposite_views_show_the_other_side():
    mug = parse_prompt("a mug")
    views = quality_measures.held_out_views(mug, 32, 32, 2.5, 40.0)
    back = (views.cameras.azimuth.abs() > 135).nonzero().flatten()
    front = (views.cameras.azimuth.abs() < 45).nonzero().flatten()
    assert len(back) and len(front)
    # seen from behind, the true mug hides its label; its front/back reflection shows it
    assert (red_pixels(views.truth["rgb"][back]) == 0).all()
    assert (red_pixels(views.opposite[back]) > 3).all()
    assert (red_pixels(views.truth["rgb"][front]) > 3).all()
    # a render that is the reflection everywhere is flagged on every informative view
    swapped = metrics.front_back_confusion(views.opposite, views.truth["rgb"], views.opposite)
    assert swapped["fraction"] == 1.0
    assert metrics.front_back_confusion(views.truth["rgb"], views.truth["rgb"], views.opposite)["fraction"] == 0.0
    cameras = make_cameras(torch.tensor([10.0]), torch.tensor([30.0]), torch.tensor([2.5]), torch.tensor([40.0]), 8, 8)
    twice = quality_measures.mirrored_cameras(quality_measures.mirrored_cameras(cameras))
    assert torch.allclose(twice.c2w, cameras.c2w, atol=1e-5) and torch.allclose(twice.fovy, cameras.fovy)


def test_doc_section_is_replaced_in_place():
    other = "# Benchmarks\n\n## Speed\n\nspeed table\n"
    once = quality_report.replace_section_block(other, "table v1")
    assert once.startswith(other.rstrip()) and quality_report.SECTION in once and "table v1" in once
    prose = once.replace(quality_report.BEGIN, "Hand-written findings.\n\n" + quality_report.BEGIN) + "\n## Later\n\nkept\n"
    twice = quality_report.replace_section_block(prose, "table v2")
    assert "table v1" not in twice and twice.count("table v2") == 1 and twice.count(quality_report.SECTION) == 1
    assert "Hand-written findings." in twice and "speed table" in twice and twice.rstrip().endswith("kept")


def test_bad_options_exit_with_usage_error(capsys):
    for argv in (["--methods", "sds,magic"], ["--reprs", "voxels"], ["--scenes", "a purple dragon"], ["--quick", "--steps", "0"]):
        with pytest.raises(SystemExit) as raised:
            quality.parse_args(argv)
        assert raised.value.code == 2
    assert "magic" in capsys.readouterr().err


def test_quick_bench_end_to_end(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Speed\n\nspeed table\n")
    out = tmp_path / "bench"
    quick = quality.parse_args(["--quick"])
    assert quick.methods == ["sds", "asd"] and quick.reprs == ["nerf"] and quick.seeds == [0] and quick.steps == 20
    # the --quick budget with one guidance method beside the ceiling: two runs (two worker processes,
    # in parallel on two cores); the other methods' configs train in tests/guidance/test_guidance_configs.py
    assert quality.main(["--quick", "--methods", "sds", "--out", str(out), "--doc", str(doc)]) == 0

    with (out / "quality.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == ["ceiling", "sds"]
    for row in rows:
        assert row["scene"] == "a mug" and row["repr"] == "nerf" and row["steps"] == "20"
        assert 0.0 < float(row["psnr"]) < 100.0 and 0.0 <= float(row["iou"]) <= 1.0
        assert 0.0 <= float(row["janus_fraction"]) <= 1.0 and math.isfinite(float(row["saturation_error"]))
        assert float(row["it_per_s"]) > 0 and float(row["wall_s"]) > 0 and row["skipped_steps"] == "0"
        guided = row["method"] != "ceiling"  # the supervised fit has no guidance gradient to measure
        assert math.isfinite(float(row["grad_snr_db"])) == guided and (float(row["grad_rms"]) > 0) == guided
        run = out / f"{row['method']}-nerf" / "a_mug-seed0"
        assert (run / "ckpts" / "last.ckpt").is_file() and (run / "configs" / "parsed.yaml").is_file()
        curve = list(csv.DictReader((run / "curve.csv").open()))
        assert [int(c["step"]) for c in curve] == list(range(2, 21, 2))
        assert json.loads((run / "bench.json").read_text())["psnr"] == pytest.approx(float(row["psnr"]))
    # the supervised ceiling moved its held-out PSNR up over its 20 steps
    ceiling = list(csv.DictReader((out / "ceiling-nerf" / "a_mug-seed0" / "curve.csv").open()))
    assert float(ceiling[-1]["psnr"]) > float(ceiling[0]["psnr"])

    assert (out / "plots" / "curves-nerf-a_mug.png").stat().st_size > 1000
    text = doc.read_text()
    assert "speed table" in text and quality_report.SECTION in text
    assert "| nerf | ceiling |" in text and "| a mug | nerf | sds | 1 |" in text and "--quick" in text

    # a second call with --report-only rebuilds the same table from the run folders
    assert quality.main(["--report-only", "--out", str(out), "--doc", str(doc)]) == 0
    assert doc.read_text().count(quality_report.SECTION) == 1
