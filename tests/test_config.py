import pytest

from threestudio_like.config import ConfigError, load_config, to_yaml
from threestudio_like.utils.schedules import schedule_value


def test_sds_nerf_config_is_typed(root):
    cfg = load_config(root / "configs/sds-nerf.yaml")
    assert cfg.system.guidance.guidance_scale == 100.0
    assert cfg.system.prompt_processor.prompt == "a red ball on a blue box"
    assert type(cfg.system.guidance).__name__ == "GuidanceConfig"
    assert type(cfg.data).__name__ == "RandomCameraConfig"


def test_overrides_and_extends(root):
    cfg = load_config(root / "configs/sds-nerf.yaml", ["trainer.max_steps=7", "system.guidance.guidance_scale=20", "data.width=16", "data.height=16"])
    assert cfg.trainer.max_steps == 7 and cfg.system.guidance.guidance_scale == 20.0 and cfg.data.width == 16
    # values from the base file survive the merge
    assert cfg.data.camera_distance_range == [2.5, 2.5]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("system.guidance.guidance_scal=3", "unknown config key 'system.guidance.guidance_scal'"),
        ("system.guidance_type=sdss", "unknown guidance type 'sdss'; known:"),
        ("trainer.max_steps=many", "trainer.max_steps"),
        ("system.guidance.weighting=cubic", "weighting='cubic' is not accepted"),
        ("system.loss.sparsity=1", "lambda_<term>"),
        ("data.elevation_range=[30,10]", "elevation_range"),
    ],
)
def test_bad_configs_fail_with_one_line(root, override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(root / "configs/sds-nerf.yaml", [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_lists_accepted_keys(root):
    with pytest.raises(ConfigError, match="accepted keys here: .*guidance_scale"):
        load_config(root / "configs/sds-nerf.yaml", ["system.guidance.scale=3"])


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_parsed_yaml_round_trips(root, tmp_path):
    cfg = load_config(root / "configs/sds-nerf.yaml", ["trainer.max_steps=11"])
    path = tmp_path / "parsed.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg


def test_schedules():
    assert schedule_value(0.5, 100) == 0.5
    spec = [100, 0.98, 0.5, 200]
    assert schedule_value(spec, 0) == 0.98
    assert schedule_value(spec, 150) == pytest.approx(0.74)
    assert schedule_value(spec, 1000) == 0.5


def test_later_plain_option_outranks_earlier_type_keyed_block(root):
    # base/refine.yaml keys the refinement's timestep range by method (guidance: {csm: {...}});
    # a plain CLI override of the same option comes later and must win, for the chosen type only
    config = root / "configs/refine-texture.yaml"
    keyed = load_config(config, ["system.guidance_type=csm"])
    assert keyed.system.guidance.max_step_percent == 0.5  # the keyed block applies
    plain = load_config(config, ["system.guidance_type=csm", "system.guidance.max_step_percent=0.2"])
    assert plain.system.guidance.max_step_percent == 0.2
    assert plain.system.guidance.min_step_percent == keyed.system.guidance.min_step_percent == 0.02
    # a keyed override after the plain one wins in turn
    again = load_config(config, ["system.guidance.max_step_percent=0.2", "system.guidance.csm.max_step_percent=0.3",
                                 "system.guidance_type=csm"])
    assert again.system.guidance.max_step_percent == 0.3


def test_type_keyed_block_outranks_plain_option_of_the_same_file(root, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"extends: {root / 'configs/sds-nerf.yaml'}\n"
                       "system:\n  guidance:\n    max_step_percent: 0.9\n    csm: {max_step_percent: 0.4}\n")
    assert load_config(profile).system.guidance.max_step_percent == 0.9
    assert load_config(profile, ["system.guidance_type=csm"]).system.guidance.max_step_percent == 0.4
