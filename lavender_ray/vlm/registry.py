"""Lazy registry of VLM family adapters and the entry points that build them.

    adapter = build_adapter(cfg.vlm, cfg.lora, map_size=cfg.sd.output_size)
    save_adapter(adapter, run_dir / "vlm")
    adapter = load_adapter(cfg.vlm, cfg.lora, run_dir / "vlm", map_size=32)

A family module is imported only when its adapter is asked for. Unknown families raise with the
list of registered ones.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from lavender_ray.config import LoraConfig, VLMConfig
from lavender_ray.vlm.adapter import CapturingAdapter

FAMILIES: dict[str, str] = {
    "mllama": "lavender_ray.vlm.mllama:MllamaAdapter",
    "llava": "lavender_ray.vlm.llava:LlavaAdapter",
    "qwen2_vl": "lavender_ray.vlm.qwen2_vl:Qwen2VLAdapter",
}


def registered_families() -> list[str]:
    return sorted(FAMILIES)


def adapter_class(family: str) -> type[CapturingAdapter]:
    """The adapter class of `family`, imported on first use."""
    if family not in FAMILIES:
        raise ValueError(
            f"unknown VLM family {family!r}; "
            f"registered families: {', '.join(registered_families())}"
        )
    module_name, class_name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def _adapter(
    vlm_cfg: VLMConfig, map_size: int, weights_dir: str | Path | None = None
) -> CapturingAdapter:
    from lavender_ray.vlm.loading import load_model_and_processor

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
    from lavender_ray.vlm.lora import apply_finetuning

    adapter = _adapter(vlm_cfg, map_size)
    adapter.model = apply_finetuning(adapter.base_model, lora_cfg, seed=vlm_cfg.seed).eval()
    return adapter


def load_adapter(
    vlm_cfg: VLMConfig, lora_cfg: LoraConfig, adapter_dir: str | Path, map_size: int = 32
) -> CapturingAdapter:
    """An adapter whose fine-tuned weights come from a directory written by `save_adapter`;
    trainable as after `build_adapter`, model in eval mode."""
    from lavender_ray.vlm.lora import load_lora, read_meta

    meta = read_meta(adapter_dir, vlm_cfg, lora_cfg)
    if meta["mode"] == "full":
        adapter = _adapter(vlm_cfg, map_size, weights_dir=adapter_dir)
        adapter.model.requires_grad_(True)
        return adapter
    adapter = _adapter(vlm_cfg, map_size)
    adapter.model = load_lora(adapter.base_model, adapter_dir).eval()
    return adapter
