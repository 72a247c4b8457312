"""Building a `LavenderConfig`: a YAML preset (a shipped name or a path) + dotted overrides.

    cfg = load_config("demo", ["train.max_steps=3", "loss.lambda=5"])

Overrides are `dotted.key=value`, the value parsed as a YAML scalar/list
(`sd.attention_resolutions=[16,32]`); every key is checked against the config tree.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lavender_ray.config.sections import ConfigError, LavenderConfig
from lavender_ray.config.tree import field_names, submodel
from lavender_ray.storage import absolute

PRESET_PACKAGE = "lavender_ray.presets"
EXTENDS_KEY = "extends"


def preset_names() -> list[str]:
    """Names of the presets shipped in `lavender_ray/presets/`."""
    folder = resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_preset(preset: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw dict of a shipped preset name or a YAML file path. A preset may start from
    another (`extends: NAME|PATH`): its values are laid over that one's, section by section."""
    if preset in _seen:
        chain = " -> ".join((*_seen, preset))
        raise ConfigError(f"presets extend each other in a circle: {chain}")
    if preset.endswith((".yaml", ".yml")) or "/" in preset:
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"preset file {preset!r} does not exist")
        text = path.read_text()
    else:
        names = preset_names()
        if preset not in names:
            raise ConfigError(
                f"unknown preset {preset!r}; shipped presets: {', '.join(names)} "
                "(or give a path to a .yaml file)"
            )
        text = resources.files(PRESET_PACKAGE).joinpath(f"{preset}.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {preset!r} must be a YAML mapping, got {type(raw).__name__}")
    base = raw.pop(EXTENDS_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"preset {preset!r}: {EXTENDS_KEY} must name a preset, got {base!r}")
    return merge(read_preset(base, (*_seen, preset)), raw)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`: mappings merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(override: str) -> tuple[str, Any]:
    """`'a.b=value'` -> `('a.b', parsed value)`; the value is read as YAML (`3`, `[16,32]`,
    `null`)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `raw[a][b] = value` for `dotted='a.b'`, checking every key against the config tree."""
    parts = dotted.split(".")
    model: type[BaseModel] | None = LavenderConfig
    node = raw
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth]) or "<root>"
        if model is None:
            raise ConfigError(f"unknown key {dotted!r}: {prefix!r} is a value, not a section")
        valid = field_names(model)
        if part not in valid:
            raise ConfigError(
                f"unknown key {dotted!r}: {part!r} is not in {prefix!r}; "
                f"valid keys: {', '.join(valid)}"
            )
        if depth == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
            model = submodel(model, part)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted overrides applied (strings `'a.b=v'` or a dict)."""
    out = json.loads(json.dumps(raw))
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        set_dotted(out, key, value)
    return out


def load_config(
    preset: str | None = "demo", overrides: list[str] | dict[str, Any] | None = None
) -> LavenderConfig:
    """Preset (name or path; None = library defaults) + dotted overrides -> validated config,
    local paths made absolute (`absolute_paths`)."""
    return config_from(read_preset(preset) if preset else {}, overrides)


def config_from(
    raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None
) -> LavenderConfig:
    """A raw config dict (a preset's, or a run's saved `config.yaml` read from any storage) +
    dotted overrides -> validated config, local paths made absolute."""
    return absolute_paths(LavenderConfig.from_dict(apply_overrides(raw, overrides or [])))


def flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict -> {dotted key: value}."""
    if not isinstance(raw, dict):
        return {prefix: raw}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any], shown: int = 8) -> str:
    """The dotted keys whose values differ between two config dicts, as
    `"2 key(s): a.b: 1 -> 2, ..."`; "" when they are the same."""
    before, now = flatten(saved), flatten(current)
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if not changed:
        return ""
    details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:shown])
    more = f" (and {len(changed) - shown} more)" if len(changed) > shown else ""
    return f"{len(changed)} key(s): {details}{more}"


# the paths a run's workers, actors and tasks read or write (sections, then each source's)
RUN_PATH_KEYS = [
    ("data", "rejects_path"),
    ("train", "storage_path"),
    ("pipeline", "cache_path"),
    ("pipeline", "precomputed_path"),
]
SOURCE_PATH_KEYS = ("path", "image_root")


def run_paths(cfg: LavenderConfig) -> dict[str, str]:
    """Dotted key -> value of every path set in `cfg` that a run reads or writes."""
    paths = {f"{section}.{key}": getattr(getattr(cfg, section), key)
             for section, key in RUN_PATH_KEYS}  # fmt: skip
    for source in cfg.data.sources:
        for key in SOURCE_PATH_KEYS:
            paths[f"data.sources[{source.name}].{key}"] = getattr(source, key)
    return {key: value for key, value in paths.items() if value}


def model_folder(model_id: str) -> str | None:
    """The local folder a model id names, `~` expanded and absolute: a folder that exists, or a
    path (`/`, `./`, `../`, `~`) even when it does not; None for a Hub id (`org/name`) or a
    tiny model (`tiny/<name>`)."""
    folder = os.path.expanduser(model_id)
    if os.path.isdir(folder) or model_id.startswith(("/", "./", "../", "~")):
        return os.path.abspath(folder)
    return None


def absolute_paths(cfg: LavenderConfig) -> LavenderConfig:
    """`cfg` with every local path absolute against the current folder (URIs unchanged): the
    run's paths, `eval.probe_path` and `eval.benchmarks`.

    Ray Train workers and Tune trial drivers run in folders of their own, so a relative path
    would name another file there. Model ids count as paths only when such a folder exists
    (`meta-llama/...` stays a hub id)."""
    raw = cfg.to_dict()
    for section, key in [*RUN_PATH_KEYS, ("eval", "probe_path")]:
        if raw[section][key]:
            raw[section][key] = absolute(raw[section][key])
    for source in raw["data"]["sources"]:
        for key in SOURCE_PATH_KEYS:
            if source.get(key):
                source[key] = absolute(source[key])
    raw["eval"]["benchmarks"] = {k: absolute(v) for k, v in raw["eval"]["benchmarks"].items()}
    for section in ("sd", "vlm"):
        folder = model_folder(raw[section]["model_id"])
        if folder and os.path.isdir(folder):  # a missing one stays as given: its error says so
            raw[section]["model_id"] = folder
    return LavenderConfig.from_dict(raw)
