"""Config tree: presets, dotted overrides, validation messages, round trips."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lavender_ray.config import (
    ConfigError,
    LavenderConfig,
    apply_overrides,
    config_hash,
    load_config,
    parse_override,
    preset_names,
)


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    assert LavenderConfig.from_dict(cfg.to_dict()) == cfg
    saved = cfg.save(tmp_path)
    assert load_config(str(saved)) == cfg


def test_required_presets_exist():
    assert {"demo", "llama32_11b_lora", "llama32_11b_lora_fast"} <= set(preset_names())


def test_a_preset_extends_another_section_by_section(tmp_path):
    fast, paper = load_config("llama32_11b_lora_fast"), load_config("llama32_11b_lora")
    assert (fast.sd.inversion, fast.sd.guidance_scale) == ("ddim", 1.0)
    assert (paper.sd.inversion, paper.sd.guidance_scale) == ("null_text", 7.5)
    assert fast.sd.model_dump(exclude={"inversion", "guidance_scale"}) == paper.sd.model_dump(
        exclude={"inversion", "guidance_scale"})
    assert fast.vlm == paper.vlm
    assert fast.train.model_dump(exclude={"run_name"}) == paper.train.model_dump(exclude={"run_name"})
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: demo\ntrain: {max_steps: 3}\n")
    assert load_config(str(mine)).train.max_steps == 3
    assert load_config(str(mine)).train.num_workers == load_config("demo").train.num_workers
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="circle"):
        load_config(str(loop))


def test_overrides_are_typed():
    cfg = load_config("demo", ["train.max_steps=3", "loss.lambda=5", "sd.attention_resolutions=[16]"])
    assert cfg.train.max_steps == 3
    assert cfg.loss.lambda_ == 5.0
    assert cfg.sd.attention_resolutions == [16]
    assert cfg.to_dict()["loss"]["lambda"] == 5.0


def test_override_dict_form_matches_string_form():
    as_dict = load_config("demo", {"optim.lr": 2e-4, "aligner.variant": "deep",
                                   "train.run_name": "x"})
    as_str = load_config("demo", ["optim.lr=2e-4", "aligner.variant=deep", "train.run_name=x"])
    assert as_dict == as_str


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.nope=1", ["train.nope", "valid keys", "max_steps"]),
        ("nope.x=1", ["nope", "valid keys", "train"]),
        ("sd.inversion=foo", ["sd.inversion", "foo", "ddim", "null_text"]),
        ("aligner.variant=huge", ["aligner.variant", "huge", "light", "sim", "deep"]),
        ("train.precision=fp8", ["train.precision", "fp8", "bf16"]),
        ("train.max_steps=-2", ["train.max_steps", "-2", "greater than 0"]),
        ("train.max_steps.x=1", ["train.max_steps", "not a section"]),
        ("sd.ddim_steps=10 ", []),
    ],
)
def test_bad_overrides_name_key_value_and_choices(override, fragments):
    if not fragments:
        load_config("demo", [override])
        return
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match=r"sd.inversion=ddim with sd.guidance_scale=7.5.*guidance_scale=1"):
        load_config("demo", ["sd.inversion=ddim", "sd.guidance_scale=7.5"])
    # each mode's own guidance unless one is given: the paper's 7.5 for null-text, 1 for ddim
    assert load_config("demo", ["sd.inversion=null_text"]).sd.guidance_scale == 7.5
    assert load_config("demo", ["sd.inversion=ddim"]).sd.guidance_scale == 1.0
    assert load_config("llama32_11b_lora", ["sd.inversion=ddim"]).sd.guidance_scale == 1.0
    with pytest.raises(ConfigError, match="unknown key 'sd.denoise_steps'.*ddim_steps"):
        load_config("demo", ["sd.denoise_steps=7"])
    with pytest.raises(ConfigError, match="sd_pool_min"):
        load_config("demo", ["pipeline.sd_pool_min=3", "pipeline.sd_pool_max=2"])
    with pytest.raises(ConfigError, match="needs a 'path'"):
        load_config("demo", ["data.sources=[{name: x, format: llava}]"])
    # a section's own check is one line under the section's name, without the section's dict
    with pytest.raises(ConfigError) as refused:
        load_config("demo", ["loss.alpha_schedule=linear"])
    assert str(refused.value).splitlines()[1] == (
        "  loss: loss.alpha_schedule=linear ramps alpha over loss.alpha_ramp_steps, which must "
        "then be > 0 (got 0)")


@pytest.mark.parametrize(
    "override", ["loss.lambda=.inf", "optim.lr=.nan", "optim.grad_clip=-.inf", "sd.null_text_lr=.inf"]
)
def test_values_that_cannot_train_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}=.*finite number"):
        load_config("demo", [override])


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "x" * 101, "a b"])
def test_run_names_are_one_safe_folder(name):
    with pytest.raises(ConfigError, match="train.run_name=.*must be one folder name"):
        load_config("demo", [f"train.run_name={name!r}"])


def test_presets_pin_no_run_name_and_each_load_gets_a_new_one():
    names = {load_config(preset).train.run_name for preset in preset_names() for _ in range(2)}
    assert len(names) == 2 * len(preset_names())
    assert all(name.startswith("run-") for name in names)
    assert load_config("demo", ["train.run_name=mine.v2_1"]).train.run_name == "mine.v2_1"


def test_unknown_preset_lists_shipped_ones():
    with pytest.raises(ConfigError, match="demo"):
        load_config("no_such_preset")


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.max_steps")
    assert parse_override("vlm.attention_layers=null") == ("vlm.attention_layers", None)
    assert apply_overrides({}, ["train.run_name=x"]) == {"train": {"run_name": "x"}}


def test_config_hash_tracks_values():
    a, b = load_config("demo"), load_config("demo", ["sd.ddim_steps=5"])
    assert config_hash(a.sd) == config_hash(load_config("demo").sd)
    assert config_hash(a.sd) != config_hash(b.sd)


def test_cli_config_show_and_bad_override():
    ok = subprocess.run(
        [sys.executable, "-m", "lavender_ray.cli", "config", "show", "--preset", "demo",
         "--set", "train.max_steps=3"], capture_output=True, text=True, check=True,
    )
    assert "max_steps: 3" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "lavender_ray.cli", "config", "show", "--set", "sd.inversion=foo"],
        capture_output=True, text=True,
    )
    assert bad.returncode != 0
    assert "ddim" in bad.stderr and "null_text" in bad.stderr


def test_import_starts_no_ray():
    code = "import lavender_ray, lavender_ray.config, lavender_ray.schema, lavender_ray.cli, sys; " \
           "import ray; assert not ray.is_initialized(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
