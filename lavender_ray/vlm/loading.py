"""Model + processor loading: `tiny/<family>` builds offline, any other id uses `from_pretrained`.

Real ids (Hub names, local paths, the HF cache) load with the config's `revision`,
`trust_remote_code` and dtype; `weights_dir` replaces the model weights (full fine-tuning
checkpoints) while the processor still comes from `model_id`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from lavender_ray.config import VLMConfig
from lavender_ray.vlm.tiny import TINY_PREFIX, build_tiny

if TYPE_CHECKING:
    from lavender_ray.vlm.adapter import CapturingAdapter

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str, tiny: bool) -> torch.dtype | str:
    """`vlm.dtype` -> a torch dtype; "auto" is the checkpoint's dtype (fp32 for tiny models)."""
    if dtype == "auto":
        return torch.float32 if tiny else "auto"
    if dtype not in DTYPES:
        raise ValueError(f"vlm.dtype={dtype!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


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
        expected = TINY_PREFIX + vlm_cfg.family
        if model_id != expected:
            raise ValueError(
                f"vlm.model_id={model_id!r} does not match vlm.family={vlm_cfg.family!r}; "
                f"the tiny model of this family is {expected!r}"
            )
        model, processor = build_tiny(model_id, seed=vlm_cfg.seed)
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
