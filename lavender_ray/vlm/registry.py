"""The entry points that build a family's adapter, through the one list of families
(`lavender_ray.families.VLM_FAMILIES`).

    adapter = build_adapter(cfg.vlm, cfg.lora, map_size=cfg.sd.output_size)
    save_adapter(adapter, run_dir / "vlm")
    adapter = load_adapter(cfg.vlm, cfg.lora, run_dir / "vlm", map_size=32)
    model, processor = build_tiny("tiny/mllama", seed=0)

A family package is imported only when its adapter is asked for, so loading one family imports
no other. Unknown families raise with the list of registered ones.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from lavender_ray.config import LoraConfig, VLMConfig
from lavender_ray.families import (
    TINY_PREFIX,
    VLM_FAMILIES,
    check_family,
    registered_families,
)
from lavender_ray.vlm.adapter import CapturingAdapter
from lavender_ray.vlm.loading import build_tiny_model, load_model_and_processor
from lavender_ray.vlm.lora import apply_finetuning, load_lora, read_meta
from lavender_ray.vlm.tiny import TEXT_HIDDEN

__all__ = [
    "adapter_class", "build_adapter", "build_tiny", "load_adapter", "registered_families",
    "tiny_names",
]  # fmt: skip


def adapter_class(family: str) -> type[CapturingAdapter]:
    """The adapter class of `family`, imported on first use."""
    module_name, class_name = VLM_FAMILIES[check_family(family)].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def tiny_names() -> list[str]:
    """The offline tiny model ids, one per family (`tiny/<family>`)."""
    return [TINY_PREFIX + family for family in registered_families()]


def build_tiny(
    model_id: str, seed: int = 0, text_width: int = TEXT_HIDDEN, real_geometry: bool = False
) -> tuple[PreTrainedModel, Any]:
    """`tiny/<family>` -> (model in eval mode, processor). Raises listing the tiny ids.

    `text_width`: hidden size of the language model (MLP 2x wider, same heads and layers),
    for benchmarks that grow the model around fixed attention maps; `real_geometry`: the
    released model's image geometry, for registration tests."""
    family = model_id.removeprefix(TINY_PREFIX)
    if not model_id.startswith(TINY_PREFIX) or family not in VLM_FAMILIES:
        raise ValueError(f"unknown tiny model {model_id!r}; tiny models: {', '.join(tiny_names())}")
    return build_tiny_model(adapter_class(family), seed, text_width, real_geometry)


def _adapter(
    vlm_cfg: VLMConfig, map_size: int, weights_dir: str | Path | None = None
) -> CapturingAdapter:
    cls = adapter_class(vlm_cfg.family)
    model, processor = load_model_and_processor(vlm_cfg, cls, weights_dir)
    if vlm_cfg.gradient_checkpointing:
        # Non-reentrant: the captured maps leave the checkpointed layer and must keep their graph.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return cls(
        model,
        processor,
        attention_layers=vlm_cfg.attention_layers,
        map_size=map_size,
        max_length=vlm_cfg.max_length,
        model_id=vlm_cfg.model_id,
    )


def build_adapter(vlm_cfg: VLMConfig, lora_cfg: LoraConfig, map_size: int = 32) -> CapturingAdapter:
    """The family adapter for `vlm_cfg`, with LoRA applied (or all weights trainable).

    The model comes back in eval mode, as `from_pretrained` returns models: call
    `adapter.model.train()` before training (LoRA dropout is active only then)."""
    adapter = _adapter(vlm_cfg, map_size)
    adapter.model = apply_finetuning(adapter.base_model, lora_cfg, seed=vlm_cfg.seed).eval()
    return adapter


def load_adapter(
    vlm_cfg: VLMConfig, lora_cfg: LoraConfig, adapter_dir: str | Path, map_size: int = 32
) -> CapturingAdapter:
    """An adapter whose fine-tuned weights come from a directory written by `save_adapter`;
    trainable as after `build_adapter`, model in eval mode."""
    meta = read_meta(adapter_dir, vlm_cfg, lora_cfg)
    if meta["mode"] == "full":
        adapter = _adapter(vlm_cfg, map_size, weights_dir=adapter_dir)
        adapter.model.requires_grad_(True)
        return adapter
    adapter = _adapter(vlm_cfg, map_size)
    adapter.model = load_lora(adapter.base_model, adapter_dir).eval()
    return adapter
