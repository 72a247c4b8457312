"""Model + processor loading: `tiny/<family>` builds offline, any other id uses `from_pretrained`.

Real ids (Hub names, local paths, the HF cache) load with the config's `revision`,
`trust_remote_code` and dtype; `weights_dir` replaces the model weights (full fine-tuning
checkpoints) while the processor still comes from `model_id`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from lavender_ray.config import VLMConfig
from lavender_ray.families import TINY_PREFIX
from lavender_ray.tensors import TORCH_DTYPES
from lavender_ray.vlm.adapter import CapturingAdapter
from lavender_ray.vlm.tiny import TEXT_HIDDEN


def resolve_dtype(dtype: str, tiny: bool) -> torch.dtype | str:
    """`vlm.dtype` -> a torch dtype; "auto" is the checkpoint's dtype (fp32 for tiny models)."""
    if dtype == "auto":
        return torch.float32 if tiny else "auto"
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"vlm.dtype={dtype!r}; allowed: auto, {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[dtype]


def build_tiny_model(
    adapter_cls: type[CapturingAdapter],
    seed: int,
    text_width: int = TEXT_HIDDEN,
    real_geometry: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """The family's tiny model (`tiny/<family>`, in eval mode) and its processor;
    `real_geometry`: the released model's image geometry (tile, grid and image sizes)."""
    model, processor = adapter_cls.build_tiny(
        seed, text_width=text_width, real_geometry=real_geometry
    )
    model_id = TINY_PREFIX + adapter_cls.family
    model.config.name_or_path = model_id  # what PEFT writes as base_model_name_or_path
    model.name_or_path = model_id
    return model, processor


def load_model_and_processor(
    vlm_cfg: VLMConfig,
    adapter_cls: type[CapturingAdapter],
    weights_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, Any]:
    """(model, processor) for `vlm_cfg.model_id`, model in eval mode."""
    model_id = vlm_cfg.model_id
    model_class = adapter_cls.model_class
    tiny = model_id.startswith(TINY_PREFIX)
    dtype = resolve_dtype(vlm_cfg.dtype, tiny)
    if tiny:
        model, processor = build_tiny_model(adapter_cls, vlm_cfg.seed)
        if weights_dir is not None:
            model = model_class.from_pretrained(weights_dir, dtype=dtype)
        return model.to(dtype).eval(), processor
    processor = adapter_cls.load_processor(
        model_id, revision=vlm_cfg.revision, trust_remote_code=vlm_cfg.trust_remote_code
    )
    model = model_class.from_pretrained(
        weights_dir or model_id,
        revision=None if weights_dir else vlm_cfg.revision,
        trust_remote_code=vlm_cfg.trust_remote_code,
        dtype=dtype,
    )
    return model.eval(), processor
