"""The refinement stage's own parts: chaining runs (geometry_convert_from), normal-map references,
and the asset measures of quality.json."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import trimesh

from threestudio_like.cli import main
from threestudio_like.data.cameras import RandomCameraConfig, RandomCameraSampler, orbit_cameras
from threestudio_like.priors.embedded import EmbeddedPrior, EmbeddedPriorConfig
from threestudio_like.priors.scenes import parse_prompt
from threestudio_like.systems.quality import count_components, measure_asset

SMALL = [
    "trainer.progress_bar=false", "data.n_test_views=2", "data.eval_width=32", "data.eval_height=32",
    "system.exporter.isosurface_resolution=40", "system.exporter.texture_size=64", "system.exporter.progress=false",
    "system.quality.mesh_resolution=40", "system.quality.asset_resolution=32", "system.quality.n_views=2",
]


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("coarse")
    assert main(["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={out}",
                 "trainer.max_steps=4", *SMALL]) == 0
    (run_dir,) = (out / "sds-nerf").iterdir()
    return root, run_dir


def test_a_run_measures_its_exported_asset(coarse_run):
    _, run = coarse_run
    asset = json.loads((run / "quality.json").read_text())["asset"]
    assert {"chamfer", "normal_error_deg", "psnr", "iou", "components", "true_components", "field_psnr"} <= set(asset)
    assert asset["true_components"] == 1  # the ball touches the box
    assert asset["chamfer"] > 0 and 0 <= asset["normal_error_deg"] <= 180


def _convert_error(root, tmp_path, capsys, source, *extra) -> str:
    code = main(["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={tmp_path / 'out'}",
                 f"system.geometry_convert_from={source}", *extra, *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # nothing written for a refused run
    return err


def test_convert_from_a_missing_path_is_one_line(coarse_run, tmp_path, capsys):
    root, _ = coarse_run
    err = _convert_error(root, tmp_path, capsys, tmp_path / "nowhere")
    assert "nowhere" in err and "does not exist" in err


def test_convert_from_a_folder_without_a_run_is_one_line(coarse_run, tmp_path, capsys):
    root, _ = coarse_run
    (tmp_path / "empty").mkdir()
    assert "not in a run folder" in _convert_error(root, tmp_path, capsys, tmp_path / "empty")


def test_convert_from_a_wrong_kind_of_checkpoint_is_one_line(coarse_run, tmp_path, capsys):
    root, run = coarse_run
    fake = tmp_path / "fake"
    (fake / "configs").mkdir(parents=True)
    (fake / "ckpts").mkdir()
    (fake / "configs/parsed.yaml").write_text((run / "configs/parsed.yaml").read_text())
    # a Gaussian-shaped geometry state under a NeRF run's config
    torch.save({"step": 3, "modules": {"geometry": {"xyz": torch.zeros(5, 3)}}}, fake / "ckpts/last.ckpt")
    err = _convert_error(root, tmp_path, capsys, fake / "ckpts/last.ckpt")
    assert "is not a 'implicit-volume' geometry" in err
    (fake / "ckpts/last.ckpt").write_text("not a checkpoint")
    assert "cannot be read" in _convert_error(root, tmp_path, capsys, fake)


def test_convert_into_a_geometry_without_create_from_is_one_line(coarse_run, tmp_path, capsys):
    root, run = coarse_run
    assert "cannot be created from another run" in _convert_error(root, tmp_path, capsys, run)


def test_convert_threshold_replaces_the_source_level_for_its_type_only(coarse_run):
    from threestudio_like.systems.convert import load_source_geometry

    _, run = coarse_run
    own, record = load_source_geometry(run)
    assert record["isosurface_threshold"] == own.isosurface_threshold() == 5.0  # base/nerf.yaml's level
    lowered, record = load_source_geometry(run / "ckpts/last.ckpt", {"implicit-volume": 2.0, "gaussian-splatting": 0.3})
    assert lowered.isosurface_threshold() == record["isosurface_threshold"] == 2.0
    assert load_source_geometry(run, {"gaussian-splatting": 0.3})[0].isosurface_threshold() == 5.0


def test_convert_options_apply_to_their_source_type_only_and_bad_ones_are_one_line(coarse_run, tmp_path, capsys):
    from threestudio_like.config import load_config
    from threestudio_like.systems.convert import with_source_options

    root, run = coarse_run
    system = load_config(root / "configs/refine-geometry.yaml").system
    splats = with_source_options(system.geometry, system.geometry_convert_options, "gaussian-splatting")
    assert splats.convert_closing_radius == 0.06 and splats.convert_fill_cavities  # configs/base/refine.yaml
    assert splats.lr_sdf == splats.lr_deformation == 3 * system.geometry.lr_sdf
    nerf = with_source_options(system.geometry, system.geometry_convert_options, "implicit-volume")
    assert nerf.convert_closing_radius == 0.0 and nerf.convert_fill_cavities and not splats.convert_cap_unseen
    assert nerf.convert_cap_unseen and nerf.convert_cap_angle == 45.0  # the NeRF's unseen underside
    assert nerf == dataclasses.replace(system.geometry, convert_cap_unseen=True, convert_cap_angle=45.0)
    for option, says in (("convert_closing_radius=-1", "convert_closing_radius=-1"), ("closing=1", "closing is not an option")):
        code = main(["--config", str(root / "configs/refine-geometry.yaml"), "--train", f"exp_root_dir={tmp_path / 'out'}",
                     f"system.geometry_convert_from={run}", f"system.geometry_convert_options.implicit-volume.{option}", *SMALL])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "system.geometry_convert_options.implicit-volume" in err and says in err


@pytest.mark.parametrize("override, says", [
    ("system.geometry_convert_options.gaussian-splating.convert_closing_radius=0.1", "'gaussian-splating' is not a geometry type"),
    ("system.geometry_convert_threshold.gaussian-splating=0.3", "'gaussian-splating' is not a geometry type"),
    ("system.geometry_convert_threshold.gaussian-splatting=-1", "geometry_convert_threshold.gaussian-splatting=-1.0 must be a density level > 0"),
    ("system.geometry_convert_threshold.gaussian-splatting=0", "must be a density level > 0"),
    ("system.geometry_convert_options.gaussian-splatting=3", "gaussian-splatting=3 must be a mapping"),
    ("system.geometry_convert_options.gaussian-splatting.convert_closing_radius=-1", "convert_closing_radius=-1 must lie in"),
])
def test_bad_convert_tables_stop_at_start_up_with_one_line_even_without_a_source_run(tmp_path, capsys, override, says):
    """A misspelt source type would never apply: it is refused where the config is read, as are bad
    levels and options, before any run folder exists (no geometry_convert_from needed)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = main(["--config", str(root / "configs/refine-geometry.yaml"), "--train", f"exp_root_dir={tmp_path / 'out'}", override, *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert says in err, err
    assert not (tmp_path / "out").exists()


def test_stage_and_prior_references_must_agree(coarse_run, tmp_path, capsys):
    root, _ = coarse_run
    code = main(["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={tmp_path}",
                 "system.stage=geometry", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "system.prior.reference='rgb' does not match system.stage='geometry'" in err


def test_normal_references_show_the_scenes_true_normals():
    """A ball centred at the origin: the true normal at a surface point p is p/|p|."""
    sampler = RandomCameraSampler(RandomCameraConfig(camera_distance_range=[2.5, 2.5], fovy_range=[40.0, 40.0],
                                                     elevation_range=[0.0, 30.0]))
    prior = EmbeddedPrior(EmbeddedPriorConfig(reference="normal", azimuth_step_deg=90.0, n_elevations=1, supersample=1,
                                              null_library=[]), sampler=sampler)
    text = "a red ball"
    images, cameras = prior.references(text, 24, 24)  # [K,H,W,3]
    truth = prior.scene(text).render(cameras, supersample=1)
    hit = truth["mask"][..., 0] > 0.5
    origins, dirs = cameras.rays()
    points = origins + truth["depth"] * dirs
    expected = (points / points.norm(dim=-1, keepdim=True) + 1.0) / 2.0
    assert hit.sum() > 50 and (~hit).sum() > 50
    assert torch.allclose(images[hit], expected[hit], atol=0.02)
    assert torch.allclose(images[~hit], torch.ones_like(images[~hit]))  # white background
    # the rgb references of the same prior kind stay the shaded colours
    rgb_prior = EmbeddedPrior(EmbeddedPriorConfig(azimuth_step_deg=90.0, n_elevations=1, supersample=1, null_library=[]), sampler=sampler)
    assert torch.allclose(rgb_prior.references(text, 24, 24)[0], truth["rgb"], atol=1e-5)


@pytest.fixture(scope="module")
def true_mesh():
    scene = parse_prompt("a red ball on a blue box")
    vertices, faces = scene.surface_mesh(96)
    mesh = trimesh.Trimesh(vertices, faces)
    colors = scene.albedo(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.round(colors * 255).astype(np.uint8))
    cameras = orbit_cameras(2, 20.0, 2.5, 40.0, 32, 32, azimuth_offset=0.5)
    return scene, mesh, cameras


def test_the_true_surface_measures_near_perfect(true_mesh):
    scene, mesh, cameras = true_mesh
    m = measure_asset(mesh, scene, cameras, n_points=4000)
    # two independent 4000-point samples of one surface lie ~0.01 apart (the sampling floor)
    assert m["chamfer"] < 0.015 and m["normal_error_deg"] < 6.0, m
    assert m["iou"] > 0.95 and m["components"] == m["true_components"] == 1, m


def test_flipped_or_moved_surfaces_measure_badly(true_mesh):
    scene, mesh, cameras = true_mesh
    flipped = mesh.copy()
    flipped.invert()
    assert measure_asset(flipped, scene, cameras, n_points=2000)["normal_error_deg"] > 170
    moved = mesh.copy()
    moved.apply_translation([0.0, 0.0, 0.1])
    assert measure_asset(moved, scene, cameras, n_points=2000)["chamfer"] > 0.03


def test_components_count_pieces_not_uv_seams():
    a, b = trimesh.creation.icosphere(2), trimesh.creation.icosphere(2)
    b.apply_translation([3.0, 0.0, 0.0])
    both = trimesh.util.concatenate([a, b])
    assert count_components(both) == 2
    seamed = trimesh.Trimesh(a.vertices[a.faces].reshape(-1, 3), np.arange(3 * len(a.faces)).reshape(-1, 3), process=False)
    assert count_components(seamed) == 1  # every face its own vertices, as at UV seams


TINY_REFINE = ["data.width=32", "data.height=32", "data.batch_size=2", "system.geometry.isosurface_resolution=16",
               "system.geometry.color_fit_steps=5", "system.prior.azimuth_step_deg=45", "system.prior.n_elevations=2"]


@pytest.fixture(scope="module")
def refined_chain(coarse_run, tmp_path_factory):
    """The chain from the finished coarse NeRF run: geometry stage → texture stage, 3 steps each
    → (coarse, geometry, texture run folders, the chain's output, its exit code)."""
    import contextlib
    import io

    from threestudio_like import chain

    root, coarse = coarse_run
    out_dir, printed = tmp_path_factory.mktemp("chain"), io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = chain.main([str(coarse), str(root / "configs/refine-geometry.yaml"), str(root / "configs/refine-texture.yaml"),
                           f"exp_root_dir={out_dir}", "trainer.max_steps=3", *SMALL, *TINY_REFINE])
    (geometry,) = (out_dir / "refine-geometry").iterdir() if code == 0 else (None,)
    (texture,) = (out_dir / "refine-texture").iterdir() if code == 0 else (None,)
    return coarse, geometry, texture, printed.getvalue(), code


def test_coarse_refine_chain_writes_a_textured_mesh_that_trimesh_reads(refined_chain):
    coarse, geometry, texture, out, code = refined_chain
    assert code == 0, out[-2000:]
    assert json.loads((geometry / "convert_from.json").read_text())["run"] == str(coarse.resolve())
    record = json.loads((texture / "convert_from.json").read_text())
    assert record["run"] == str(geometry.resolve()) and record["stage"] == "geometry" and record["step"] == 3
    export = texture / "save/it3-export"
    assert f"final asset: {export / 'model.glb'}" in out
    info = json.loads((export / "export.json").read_text())
    assert info["surface"] == "isosurface" and info["isosurface_threshold"] is None
    for name in ("model.glb", "model.obj"):
        mesh = trimesh.load(export / name, force="mesh")
        assert len(mesh.faces) > 100 and mesh.visual.kind == "texture"
        assert np.asarray(mesh.visual.material.baseColorTexture if name == "model.glb" else mesh.visual.material.image).shape[:2] == (64, 64)
    asset = json.loads((texture / "quality.json").read_text())["asset"]
    assert asset["components"] >= 1 and np.isfinite(asset["chamfer"])


def test_a_resumed_refined_run_gets_its_source_types_options_back(refined_chain, tmp_path):
    """The geometry stage converted from a NeRF: resumed, its geometry is built with the options of
    system.geometry_convert_options.implicit-volume again (here a learning rate), before the
    checkpoint loads; a checkpoint outside its run folder (no convert_from.json) keeps the plain ones."""
    import shutil
    from pathlib import Path

    from threestudio_like.cli import build
    from threestudio_like.config import load_config

    coarse, geometry, _, out, code = refined_chain
    assert code == 0, out[-2000:]
    root = Path(__file__).resolve().parents[2]
    ckpt = geometry / "ckpts" / "last.ckpt"
    moved = tmp_path / "elsewhere" / "last.ckpt"
    moved.parent.mkdir()
    shutil.copy(ckpt, moved)

    def sdf_rates(resume, *overrides):
        cfg = load_config(root / "configs/refine-geometry.yaml", [
            f"system.geometry_convert_from={coarse}", f"resume={resume}", *SMALL, *TINY_REFINE, *overrides])
        system, _ = build(cfg, torch.device("cpu"))
        (group,) = [g for g in system.optimizers["geometry"].param_groups if g.get("name") == "sdf"]
        return system.geometry.cfg.lr_sdf, group["lr"]

    option = "system.geometry_convert_options.implicit-volume.lr_sdf=0.05"
    assert sdf_rates(ckpt, option) == (0.05, 0.05)
    assert sdf_rates(ckpt) == (0.01, 0.01)
    assert sdf_rates(moved, option) == (0.01, 0.01)


def test_refine_bench_row_from_the_chain_folders(refined_chain, tmp_path):
    """bench/refine.py's row, table and doc section (what bench/quality.py --refine writes) from
    real run folders: each end's numbers are its own quality.json's asset measures."""
    from bench import quality, refine

    coarse, geometry, texture, _, code = refined_chain
    assert code == 0
    row = refine.chain_row("a red ball on a blue box", "nerf", "sds", [coarse, geometry, texture], [50.0, 20.0, 10.0])
    assert (row["coarse_wall_s"], row["refine_wall_s"]) == (50.0, 30.0) and row["refined_run"] == str(texture)
    for side, run in (("coarse", coarse), ("refined", texture)):
        asset = json.loads((run / "quality.json").read_text())["asset"]
        assert row[f"{side}_chamfer"] == asset["chamfer"] and row[f"{side}_components"] == asset["components"]
        assert row[f"{side}_normal_error_deg"] == asset["normal_error_deg"] and row[f"{side}_psnr"] == asset["psnr"]
    assert row["coarse_field_psnr"] == json.loads((coarse / "quality.json").read_text())["asset"]["field_psnr"]
    met = refine.goals(row)
    assert met["wall ≤ coarse"] and met["one piece"] == (row["refined_components"] == row["true_components"])
    out = tmp_path / "bench" / "refine"
    refine.write_csv(out / "refine.csv", [row], columns=list(row))
    assert refine.read_rows(out / "refine.csv") == [row]  # numbers come back as numbers
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    doc.parent.mkdir()
    doc.write_text(f"# Benchmarks\n\n{refine.SECTION}\n\nprose kept\n\n## Next\n")
    # bench/quality.py --refine --report-only: the table and picture from <out>/refine/refine.csv
    assert quality.main(["--report-only", "--refine", "--out", str(out.parent), "--doc", str(doc)]) == 0
    table = (out / "refine.md").read_text().strip()
    text = doc.read_text()
    assert table in text and "prose kept" in text and text.index(refine.BEGIN) < text.index("## Next")
    assert f"| {row['coarse_chamfer']:.4f} → {row['refined_chamfer']:.4f} |" in table and "wall ≤ coarse" in table
    assert (doc.parent / "plots" / "refine.png").stat().st_size > 1000
    (out / "refine.csv").unlink()
    assert quality.main(["--report-only", "--refine", "--out", str(out.parent)]) == 2  # one line, no traceback


def test_a_matrix_run_without_an_export_gets_one_and_its_asset_measures(coarse_run, tmp_path):
    """bench/quality.py's runs export nothing: --refine exports and measures them from the checkpoint."""
    import shutil

    from bench import refine

    _, run = coarse_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("save", "page", "run.lock"))
    measured = json.loads((run / "quality.json").read_text())
    stripped = {k: v for k, v in measured.items() if k != "asset"}
    (copy / "quality.json").write_text(json.dumps(stripped))
    refine.measure_asset_of(copy)
    asset = json.loads((copy / "quality.json").read_text())["asset"]
    assert trimesh.load(next((copy / "save").glob("it*-export")) / "model.glb", force="mesh").faces.shape[0] > 100
    for key in ("chamfer", "normal_error_deg", "psnr", "iou", "components", "field_psnr"):  # the run's own export, again
        assert asset[key] == pytest.approx(measured["asset"][key], rel=1e-4), key


def test_chain_stage_overrides_and_bad_input(capsys):
    from threestudio_like import chain

    assert chain.stage_overrides(["a=1", "1:b=2", "0:c=3"], 2) == [["a=1", "c=3"], ["a=1", "b=2"]]
    with pytest.raises(ValueError, match="names stage 2, but there are 2 stages"):
        chain.stage_overrides(["2:b=2"], 2)
    assert chain.main(["configs/nowhere.yaml", "configs/refine-fine.yaml"]) == 2
    assert "'configs/nowhere.yaml' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["geometry", "texture"])
@pytest.mark.parametrize("method", ["sds", "vsd", "esd", "asd", "csm", "ism"])
def test_every_guidance_trains_in_both_refinement_stages(root, stage, method):
    from threestudio_like.cli import build
    from threestudio_like.config import load_config

    cfg = load_config(root / f"configs/refine-{stage}.yaml", [f"system.guidance_type={method}", *TINY_REFINE])
    system, _ = build(cfg, torch.device("cpu"))
    trained = [p for group in system.optimizers["geometry"].param_groups for p in group["params"]]
    before = [p.detach().clone() for p in trained]
    logged = system.training_step(0, 10)
    assert np.isfinite(logged["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, trained))  # the stage's parameters moved
    names = {g["name"] for g in system.optimizers["geometry"].param_groups}
    assert names == ({"sdf", "deformation"} if stage == "geometry" else {"encoding", "network"})
    if stage == "geometry":
        assert {"loss_normal_consistency", "loss_laplacian_smoothness"} <= set(logged)
