"""python -m threestudio_like.compare on two tiny finished runs (a NeRF and 3D Gaussians)."""
import subprocess
import sys

import imageio.v3 as iio
import pytest

from threestudio_like import cli, compare

TINY = [
    "data.width=16", "data.height=16", "data.batch_size=1", "data.eval_width=16", "data.eval_height=16",
    "trainer.max_steps=3", "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "trainer.export_at_end=false",
    "trainer.test_at_end=false", "system.quality.enabled=false", "use_timestamp=false",
    "system.prompt_processor.prompt=a red ball",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    made = []
    for config, extra in (("configs/sds-nerf.yaml", []), ("configs/asd-gs.yaml", ["system.geometry.init_num_points=256"])):
        name = config.split("/")[-1][:-5]
        argv = ["--config", config, "--train", f"exp_root_dir={root}", f"tag={name}", *TINY, *extra]
        assert cli.main(argv) == 0
        made.append(root / name / name)  # outputs/<name>/<tag>, the config's name being its file's
    return made


def test_compare_writes_video_grid_and_table(runs, tmp_path):
    out = tmp_path / "cmp"
    assert compare.main([*map(str, runs), "-o", str(out), "--frames", "6", "--grid-views", "3"]) == 0
    frames = list(iio.imiter(out / "compare.mp4"))
    assert len(frames) == 6
    height, width = frames[0].shape[:2]
    # two tiles enlarged 16 → 128 side by side, under a label strip
    assert width == 2 * compare.MIN_TILE and height == compare.MIN_TILE + compare.LABEL_HEIGHT
    grid = iio.imread(out / "compare.png")
    assert grid.shape[:2] == (2 * (compare.MIN_TILE + compare.LABEL_HEIGHT), 3 * compare.MIN_TILE)
    # each run shows something other than the white background
    row_height = compare.MIN_TILE + compare.LABEL_HEIGHT
    for row in range(2):
        tiles = grid[row * row_height + compare.LABEL_HEIGHT:(row + 1) * row_height]
        assert (tiles < 200).any()
    table = (out / "compare.md").read_text()
    assert "| key | sds-nerf | asd-gs |" in table  # labelled by config name
    assert "| system.geometry_type | implicit-volume | gaussian-splatting |" in table
    assert "| system.guidance_type | sds | asd |" in table
    assert "system.prompt_processor.prompt" not in table  # equal in both runs: not a difference
    assert f"| sds-nerf | {runs[0]} | 3 |" in table and "train time" in table
    assert (out / "curves.png").is_file()


def test_labels_come_from_the_differing_config():
    make = lambda name, seed: compare.Run(path=compare.Path(f"/x/{name}{seed}"), cfg=None, checkpoint=None,  # noqa: E731
                                          flat={"name": name, "seed": seed, "system.guidance_type": name[:3]})
    runs = [make("sds-nerf", 0), make("vsd-nerf", 0)]
    compare.assign_labels(runs)
    assert [r.label for r in runs] == ["sds-nerf", "vsd-nerf"]
    runs = [make("sds-nerf", 0), make("sds-nerf", 1)]
    compare.assign_labels(runs)
    assert [r.label for r in runs] == ["seed 0", "seed 1"]


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert compare.main([str(runs[0]), str(missing), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
    no_ckpt = tmp_path / "half"
    (no_ckpt / "configs").mkdir(parents=True)
    (no_ckpt / "configs" / "parsed.yaml").write_text((runs[0] / "configs" / "parsed.yaml").read_text())
    assert compare.main([str(no_ckpt), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint" in err[0]
    assert not (tmp_path / "o").exists(), "nothing is written when an input is bad"


def test_module_entry_point(root, tmp_path):
    result = subprocess.run([sys.executable, "-m", "threestudio_like.compare", str(tmp_path / "missing"), "-o", str(tmp_path)],
                            capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
