"""Stable Diffusion per-word cross-attention targets (METHOD.md section 2).

Modules (the maths is pure; the capture is small and stateful)::

    tiny        offline SD stacks built from configs: `tiny/sd`, `random/sd14`
    settings    what the `sd` section means without loading SD: dtype, the config hash
    components  loading by model id (`from_pretrained` for real ids)
    capture     the attention processor that records attn2 probabilities, and its store
    prompt      the words of SD's prompt and which tokens belong to each (pure text)
    aggregate   probabilities -> per-token maps -> per-word maps (pure functions)
    extractor   `SDExtractor(cfg.sd).extract(images, texts) -> list[SDTarget]`
    target      `SDTarget` and its row form (`schema.TARGET_FIELDS`)
    authors     the authors' `<image>/lpm_attention/<stem>/attention_<word>.jpg` layout

The Ray Data stage that runs the extractor on an actor pool, the target cache and the
show-targets pictures are in `lavender_ray.pipeline`; this package imports no Ray.

Names below load lazily, so `import lavender_ray.sd.target` does not import diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SDExtractor": "lavender_ray.sd.extractor",
    "SDTarget": "lavender_ray.sd.target",
    "sd_config_hash": "lavender_ray.sd.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lavender_ray.sd' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
