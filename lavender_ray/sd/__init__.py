"""Stable Diffusion per-word cross-attention targets (METHOD.md section 2).

Modules (the maths is pure; the capture is small and stateful)::

    tiny        offline SD stacks built from configs: `tiny/sd`, `random/sd14`
    components  loading by model id (`from_pretrained` for real ids), dtype, the config hash
    capture     the attention processor that records attn2 probabilities, and its store
    aggregate   probabilities -> per-token maps -> per-word maps (pure functions)
    extractor   `SDExtractor(cfg.sd).extract(images, texts) -> list[SDTarget]`
    target      `SDTarget` and its row form (`schema.TARGET_FIELDS`)
    stage       the Ray Data stage `SDTargetStage` and `add_sd_targets(ds, cfg, rejects_dir)`
    cache       Parquet target cache keyed by id + image hash + config hash, `extract_to_cache`
    authors     the authors' `<image>/lpm_attention/<stem>/attention_<word>.jpg` layout
    render      the show-targets picture

Names below load lazily, so `import lavender_ray.sd.target` does not import diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SDExtractor": "lavender_ray.sd.extractor",
    "SDTarget": "lavender_ray.sd.target",
    "SDTargetStage": "lavender_ray.sd.stage",
    "add_sd_targets": "lavender_ray.sd.stage",
    "extract_to_cache": "lavender_ray.sd.cache",
    "sd_config_hash": "lavender_ray.sd.components",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lavender_ray.sd' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
