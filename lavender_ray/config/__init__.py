"""The one typed config tree of lavender_ray, its YAML presets and the dotted override syntax.

Every entry point (CLI, `jobs/`, Ray workers, Ray Tune trials) builds a `LavenderConfig` the same
way::

    cfg = load_config("demo", ["train.max_steps=3", "loss.lambda=5"])

A preset is a name from `lavender_ray/presets/` or a path to a YAML file. Overrides are
`dotted.key=value`, the value parsed as a YAML scalar/list (`sd.attention_resolutions=[16,32]`).
Unknown keys and bad values raise `ConfigError` naming the key, the value and what is allowed.
A Ray worker rebuilds the config from `cfg.to_dict()` with `LavenderConfig.from_dict`.

The tree is in `sections.py`, presets and overrides in `loading.py`; both import no Ray, torch,
diffusers or transformers.
"""

from lavender_ray.config.loading import (
    PRESET_PACKAGE,
    absolute_paths,
    apply_overrides,
    config_differences,
    config_from,
    load_config,
    model_folder,
    parse_override,
    preset_names,
    read_preset,
    run_paths,
    set_dotted,
)
from lavender_ray.config.sections import (
    CONFIG_FILE,
    AlignerConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    LavenderConfig,
    LoraConfig,
    LossConfig,
    MetricName,
    OptimConfig,
    PipelineConfig,
    SDConfig,
    Section,
    SourceConfig,
    TrainConfig,
    TuneConfig,
    VLMConfig,
)
from lavender_ray.config.tree import config_hash, format_validation_error

__all__ = [
    "CONFIG_FILE", "PRESET_PACKAGE", "AlignerConfig", "ConfigError", "DataConfig", "EvalConfig",
    "LavenderConfig", "LoraConfig", "LossConfig", "MetricName", "OptimConfig", "PipelineConfig",
    "SDConfig", "Section", "SourceConfig", "TrainConfig", "TuneConfig", "VLMConfig",
    "absolute_paths", "apply_overrides", "config_differences", "config_from", "config_hash", "format_validation_error", "load_config",
    "model_folder", "parse_override", "preset_names", "read_preset", "run_paths", "set_dotted",
]  # fmt: skip
