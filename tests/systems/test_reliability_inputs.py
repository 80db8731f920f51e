"""Bad input stops the run at start-up: exit code 2, one line naming the key, no traceback, no folder.

In-process ``cli.main`` calls (no process boundary is needed to see what the user sees on stderr).
"""
import pytest
import torch

from threestudio_like.cli import main
from threestudio_like.systems.checkpoint import load_checkpoint

TINY = [
    "trainer.progress_bar=false", "data.width=16", "data.height=16", "data.batch_size=1", "data.eval_width=16",
    "data.eval_height=16", "data.n_val_views=1", "data.n_test_views=2", "system.geometry.pos_encoding.log2_hashmap_size=12",
    "system.geometry.pos_encoding.n_levels=4", "system.geometry.pos_encoding.start_level=4",
    "system.renderer.num_samples_per_ray=16", "system.renderer.grid_resolution=16", "system.quality.enabled=false",
    "system.prior.n_elevations=2", "system.prior.azimuth_step_deg=45",
    "trainer.export_at_end=false", "trainer.test_at_end=false", "trainer.val_check_interval=1000",
]

# (overrides, the text the one line must contain: the key, or the part that does not fit)
BAD = [
    # intervals, sizes, counts
    (["trainer.checkpoint_interval=0"], "trainer.checkpoint_interval=0"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval=0"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5"),
    (["data.width=0"], "data.width=0"),
    (["data.height=-16"], "data.height=-16"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.eval_width=0"], "data.eval_width=0"),
    (["data.n_val_views=0"], "data.n_val_views=0"),
    (["data.n_test_views=-1"], "data.n_test_views=-1"),
    (["data.fovy_range=[0,0]"], "data.fovy_range"),
    (["data.camera_distance_range=[-1,2]"], "data.camera_distance_range"),
    (["data.elevation_range=[60,10]"], "elevation_range"),
    (["system.renderer.grid_update_every=0"], "system.renderer.grid_update_every=0"),
    (["system.renderer.num_samples_per_ray=0"], "system.renderer.num_samples_per_ray=0"),
    (["system.renderer.grid_resolution=-2"], "system.renderer.grid_resolution"),
    (["system.geometry.pos_encoding.n_levels=0"], "system.geometry.pos_encoding"),
    (["system.geometry.pos_encoding.update_steps=0"], "system.geometry.pos_encoding.update_steps=0"),
    (["system.geometry.mlp_neurons=0"], "mlp_neurons"),
    (["system.exporter.texture_size=0"], "texture_size"),
    (["system.exporter.chunk_size=0"], "system.exporter.chunk_size=0"),
    (["system.quality.n_views=0"], "system.quality.n_views=0"),
    (["system.quality.n_surface_points=0"], "system.quality.n_surface_points=0"),
    (["system.prior.chunk_size=0"], "chunk_size"),
    # learning rates, weights, percentages, ordering
    (["system.geometry.lr_encoding=-0.01"], "system.geometry.lr_encoding"),
    (["system.geometry.lr_network=-1"], "system.geometry.lr_network"),
    (["system.geometry.lr_network=1e38"], "system.geometry.lr_network"),
    (["system.loss.lambda_sds=-1"], "system.loss.lambda_sds"),
    (["system.guidance.min_step_percent=-0.1"], "system.guidance.min_step_percent"),
    (["system.guidance.max_step_percent=1.5"], "system.guidance.max_step_percent=1.5"),
    (["system.guidance.min_step_percent=0.9", "system.guidance.max_step_percent=0.5"], "system.guidance.min_step_percent"),
    (["system.guidance.max_step_percent=[0,0.98,0.01,100]"], "system.guidance.min_step_percent"),
    (["system.guidance.guidance_scale=.nan"], "system.guidance.guidance_scale"),
    (["system.geometry.density_blob_std=.nan"], "system.geometry.density_blob_std"),
    (["system.geometry.pos_encoding.per_level_scale=.inf"], "system.geometry.pos_encoding.per_level_scale"),
    (["data.eval_width=100000000"], "data.eval_width"),
    (["system.prompt_processor.perp_neg_f_sb=[1,.nan,0]"], "system.prompt_processor.perp_neg_f_sb"),
    (["system.guidance.grad_clip=0"], "system.guidance.grad_clip"),
    (["system.optimizer.betas=[0.9]"], "system.optimizer.betas"),
    (["system.optimizer.betas=[0.9,1.5]"], "system.optimizer.betas"),
    (["system.background.color=[2,0,0]"], "system.background.color"),
    (["system.prompt_processor.front_threshold=200"], "system.prompt_processor.front_threshold"),
    (["system.prior.camera_sigma_deg=0"], "camera_sigma_deg"),
    # threads, seed, names, folders
    (["cpu_threads=-1"], "cpu_threads=-1"),
    (["cpu_threads=1000000"], "cpu_threads=1000000"),
    (["data.n_test_views=100000000"], "data.n_test_views"),
    (["name='  '"], "name="),
    (["seed=-3"], "seed=-3"),
    (["tag=../../elsewhere"], "tag="),
    (["name=.."], "name="),
    (["name=a/b"], "name="),
    (["system.loss.lambda_sdss=1"], "system.loss.lambda_sdss"),
    (["system.loss.weight=1"], "loss.weight"),
    (["system.geometry_type=octree"], "geometry type 'octree'"),
    (["system.guidance.guidance_scal=3"], "guidance_scal"),
    (["trainer.max_steps=lots"], "trainer.max_steps"),
    (["resume=/nonexistent/last.ckpt"], "resume="),
    (["system.prompt_processor.prompt=" + "a purple dragon " * 700], "characters)"),
]


def run_cli(capsys, args):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def assert_one_line(code, err, needle):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert len(lines[0]) < 600, len(lines[0])


@pytest.mark.parametrize("overrides, needle", BAD, ids=[" ".join(o)[:60] for o, _ in BAD])
def test_bad_value_is_one_line_at_start_up(root, tmp_path, capsys, overrides, needle):
    code, err = run_cli(capsys, ["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={tmp_path}", *TINY, *overrides])
    assert_one_line(code, err, needle)
    assert not any(tmp_path.iterdir()), "a failed start must not create a run folder"


def test_extends_cycle_names_the_files(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    code, err = run_cli(capsys, ["--config", str(tmp_path / "a.yaml"), "--train"])
    assert_one_line(code, err, "cycle")
    assert "a.yaml → " in err and "b.yaml → " in err


def test_output_folder_that_cannot_be_created(root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, ["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={blocker}", *TINY])
    assert_one_line(code, err, "cannot create the run folder")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("tiny")
    assert main(["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={out}", "tag=t",
                 "use_timestamp=false", "trainer.max_steps=2", *TINY]) == 0
    return out / "sds-nerf" / "t"


@pytest.mark.parametrize("config, overrides, needle", [
    ("sds-nerf.yaml", [*TINY, "system.geometry.pos_encoding.log2_hashmap_size=13"], "geometry.encoding"),
    ("vsd-nerf.yaml", TINY, "guidance_type='sds'"),
    ("sds-gs.yaml", ["system.quality.enabled=false"], "geometry_type='implicit-volume'"),
])
def test_checkpoint_that_does_not_fit_names_the_part(root, tiny_checkpoint, capsys, config, overrides, needle):
    ckpt = tiny_checkpoint / "ckpts" / "last.ckpt"
    code, err = run_cli(capsys, ["--config", str(root / "configs" / config), "--export", f"resume={ckpt}", *overrides])
    assert_one_line(code, err, needle)


def test_second_run_into_a_finished_run_is_refused(root, tiny_checkpoint, capsys):
    before = (tiny_checkpoint / "ckpts" / "last.ckpt").read_bytes()
    code, err = run_cli(capsys, ["--config", str(root / "configs/sds-nerf.yaml"), "--train", f"exp_root_dir={tiny_checkpoint.parents[1]}",
                                 "tag=t", "use_timestamp=false", "trainer.max_steps=2", *TINY])
    assert_one_line(code, err, "already holds a run")
    assert (tiny_checkpoint / "ckpts" / "last.ckpt").read_bytes() == before
    assert load_checkpoint(tiny_checkpoint / "ckpts" / "last.ckpt")["step"] == 2


def test_concurrent_run_is_refused_by_the_lock(root, tiny_checkpoint, capsys):
    from threestudio_like.systems.run_folder import RunLock

    lock = RunLock(tiny_checkpoint).acquire()  # stands for a run training in that folder
    try:
        code, err = run_cli(capsys, ["--config", str(tiny_checkpoint / "configs/parsed.yaml"), "--train",
                                     f"resume={tiny_checkpoint / 'ckpts/last.ckpt'}", "trainer.max_steps=3"])
    finally:
        lock.release()
    assert_one_line(code, err, "another run")


def test_timestamped_folders_never_collide(tmp_path):
    import datetime

    from threestudio_like.systems.run_folder import claim_new

    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    folders = [claim_new(tmp_path / "name" / "tag", True, now) for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)
    assert [f.name for f in folders] == ["tag@20260101-120000", "tag@20260101-120000-2", "tag@20260101-120000-3"]


def test_non_finite_step_moves_no_weight_and_no_adam_state(root):
    """guidance_scale=1e30 makes every loss inf: the step is skipped, nothing moves."""
    from threestudio_like.cli import build, seed_everything
    from threestudio_like.config import load_config

    cfg = load_config(root / "configs/sds-nerf.yaml", [*TINY, "system.guidance.guidance_scale=1e30"])
    seed_everything(cfg.seed)
    system, _ = build(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in system.geometry.state_dict().items() if torch.is_tensor(v)}
    logged = system.training_step(0, 10)
    assert logged["loss"] == float("inf") and logged["skipped"] == 1.0
    after = system.geometry.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(len(opt.state) == 0 for opt in system.optimizers.values()), "Adam's state advanced"
    assert all(p.grad is None for opt in system.optimizers.values() for g in opt.param_groups for p in g["params"])
