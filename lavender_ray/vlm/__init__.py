"""VLM adapters: one folder per family (`vlm/<family>/`: adapter, geometry, tiny model) behind
the `VLMAdapter` Protocol (`base.py`); `adapter.py` holds what every family shares. The families
are listed once, in `lavender_ray.families`.

Public entry points::

    build_adapter(vlm_cfg, lora_cfg, map_size) -> VLMAdapter
    load_adapter(vlm_cfg, lora_cfg, adapter_dir, map_size) -> VLMAdapter
    save_adapter(adapter, out_dir, state_dict=None) -> Path
    registered_families() -> list[str]

Importing this package imports no transformers model code; families load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lavender_ray.families import registered_families
    from lavender_ray.vlm.base import VLMAdapter, VLMForwardOutput
    from lavender_ray.vlm.lora import save_adapter
    from lavender_ray.vlm.registry import build_adapter, load_adapter

_EXPORTS = {
    "VLMAdapter": "lavender_ray.vlm.base",
    "VLMForwardOutput": "lavender_ray.vlm.base",
    "build_adapter": "lavender_ray.vlm.registry",
    "load_adapter": "lavender_ray.vlm.registry",
    "registered_families": "lavender_ray.families",
    "save_adapter": "lavender_ray.vlm.lora",
}

__all__ = [
    "VLMAdapter", "VLMForwardOutput", "build_adapter", "load_adapter", "registered_families",
    "save_adapter",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lavender_ray.vlm' has no attribute {name!r}")
    import importlib  # families load on first use: see the docstring

    return getattr(importlib.import_module(_EXPORTS[name]), name)
