"""Configs compose: representation × method × prior profile, type switches that start afresh, and the
threestudio-named Stable Diffusion configs stopping at start-up without weights."""
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from threestudio_like import registry
from threestudio_like.cli import main
from threestudio_like.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml"))
RUN_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
SD_CONFIGS = [name for name in RUN_CONFIGS if load_config(ROOT / "configs" / name).system.prior_type == "stable-diffusion"]
MISSING = "error: Stable Diffusion weights not found"


def content_lines(path: Path) -> list[str]:
    """The file's lines without comments and blank lines, stripped of trailing space."""
    lines = (line.split(" #")[0].rstrip() for line in path.read_text().splitlines())
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_no_two_config_files_share_a_block_of_six_lines():
    seen: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for name in CONFIGS:
        lines = content_lines(ROOT / "configs" / name)
        for start in range(len(lines) - 5):
            seen[tuple(lines[start : start + 6])].add(str(name))
    shared = {block: files for block, files in seen.items() if len(files) > 1}
    assert not shared, f"six identical lines in {sorted(next(iter(shared.values())))}: {next(iter(shared))}"


@pytest.mark.parametrize("method", registry.names("guidance"))
@pytest.mark.parametrize("representation", ["nerf", "gs"])
def test_every_method_and_representation_has_its_embedded_config(method, representation):
    cfg = load_config(ROOT / "configs" / f"{method}-{representation}.yaml")
    assert cfg.name == f"{method}-{representation}" and cfg.system.guidance_type == method
    assert cfg.system.prior_type == "embedded" and cfg.data.width == 32 and cfg.data.batch_size == 4
    assert cfg.system.geometry_type == {"nerf": "implicit-volume", "gs": "gaussian-splatting"}[representation]


def test_embedded_nerf_keeps_its_cpu_sized_grid_and_sd_gets_threestudios():
    small = load_config(ROOT / "configs/sds-nerf.yaml").system
    assert (small.geometry.pos_encoding.n_levels, small.geometry.pos_encoding.log2_hashmap_size) == (8, 15)
    assert small.renderer.num_samples_per_ray == 64 and small.background.color == [1.0, 1.0, 1.0]
    full = load_config(ROOT / "configs/dreamfusion-sd.yaml").system
    assert (full.geometry.pos_encoding.n_levels, full.geometry.pos_encoding.log2_hashmap_size) == (16, 19)
    assert full.renderer.num_samples_per_ray == 512 and full.guidance.guidance_scale == 100.0
    assert (full.material_type, full.background_type) == ("diffuse-with-point-light", "neural-environment-map")


def test_a_type_switch_drops_the_options_of_the_old_type():
    cfg = load_config(ROOT / "configs/sds-nerf.yaml", ["system.prior_type=stable-diffusion"])
    assert type(cfg.system.prior).__name__ == "StableDiffusionConfig"
    # the options of the new type may follow the switch
    cfg = load_config(ROOT / "configs/sds-nerf.yaml", ["system.prior_type=stable-diffusion", "system.prior.dtype=bfloat16"])
    assert cfg.system.prior.dtype == "bfloat16"
    cfg = load_config(ROOT / "configs/asd-nerf.yaml", ["system.geometry_type=gaussian-splatting", "system.renderer_type=gaussian-rasterizer"])
    assert type(cfg.system.geometry).__name__ == "GaussianConfig" and cfg.system.guidance.min_step_percent[-1] == 1500
    # options given after the switch are checked against the new type
    with pytest.raises(ConfigError, match="unknown config key 'system.prior.camera_mode'"):
        load_config(ROOT / "configs/sds-nerf.yaml", ["system.prior_type=stable-diffusion", "system.prior.camera_mode=camera"])


def test_a_type_keyed_block_applies_only_to_its_type():
    nerf = load_config(ROOT / "configs/sds-nerf.yaml")
    assert nerf.system.guidance.min_step_percent == 0.02  # the embedded profile's ASD block is ASD's
    asd = load_config(ROOT / "configs/sds-nerf.yaml", ["system.guidance_type=asd"])
    assert asd.system.guidance.max_step_percent == [0, 0.98, 0.5, 1500]
    gs = load_config(ROOT / "configs/sds-gs-sd.yaml").system
    assert type(gs.renderer).__name__ == "GaussianRendererConfig"  # the NeRF's 512 samples never reach it
    with pytest.raises(ConfigError, match="unknown config key 'system.renderer.num_samples'"):
        load_config(ROOT / "configs/dreamfusion-sd.yaml", ["system.renderer.nerf-volume-renderer.num_samples=3"])


@pytest.mark.parametrize("name", SD_CONFIGS)
def test_stable_diffusion_configs_stop_at_start_up_without_weights(name, tmp_path, capsys):
    code = main(["--config", str(ROOT / "configs" / name), "--train", f"exp_root_dir={tmp_path}",
                 "system.prompt_processor.prompt=a zoomed out DSLR photo of a hamburger", "system.prior.local_files_only=true",
                 f"system.prior.cache_dir={tmp_path / 'cache'}"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(errors) == 1 and errors[0].startswith(MISSING), errors
    assert not any(tmp_path.iterdir()), "nothing is written before the weights are found"


def test_threestudio_names_are_shipped():
    for name in ("dreamfusion-sd.yaml", "prolificdreamer.yaml", "asd-sd.yaml", "esd-sd.yaml", "csm-sd.yaml", "ism-sd.yaml"):
        assert name in SD_CONFIGS
    assert load_config(ROOT / "configs/prolificdreamer.yaml").system.guidance_type == "vsd"


def test_switching_the_prior_alone_reaches_the_missing_weights_line(tmp_path):
    """A user's command line, in a real process, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs/sds-nerf.yaml"), "--train",
         "system.prior_type=stable-diffusion", f"exp_root_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(MISSING) and "Traceback" not in result.stderr
