"""The DeepSpeed config: the one place batch arithmetic and dtypes reach DeepSpeed.

`deepspeed_config` builds DeepSpeed's config dict from the typed config, the world size and the
precision `placement.resolve_precision` decided. No hand-written DeepSpeed JSON exists anywhere
else. `import_deepspeed` is how the library imports DeepSpeed (once per train worker).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from lavender_ray.config import LavenderConfig
from lavender_ray.placement import Precision

DEEPSPEED_BUCKET = 5e8  # elements: DeepSpeed's default reduce and all-gather bucket sizes
BUCKET_ALIGNMENT = 64  # elements: bucket sizes are multiples of it (5e8 is one)


def deepspeed_config(cfg: LavenderConfig, world_size: int, precision: Precision) -> dict[str, Any]:
    """DeepSpeed config for `world_size` ranks: ZeRO stage, batch arithmetic, precision, clipping.

    global batch = micro_batch_size * grad_accum_steps * world_size."""
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if t.zero_stage == 3:
        # Export gathers full 16-bit weights so a saved adapter is never empty (trl#4416).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero["stage3_max_live_parameters"] = t.zero3_live_parameters
        zero["stage3_max_reuse_distance"] = t.zero3_live_parameters
        zero["stage3_prefetch_bucket_size"] = min(t.zero3_prefetch_parameters,
                                                  t.zero3_live_parameters)
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.micro_batch_size * t.grad_accum_steps * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,  # dynamic loss scaling
            "initial_scale_power": 16,
        },
        # ZeRO sums bf16 micro-batch gradients in bf16 (8-bit mantissa) unless told otherwise;
        # without ZeRO, DeepSpeed has no fp32 accumulation for bf16 models
        **({"data_types": {"grad_accum_dtype": "fp32"}} if precision == "bf16" and t.zero_stage
           else {}),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def gradient_buckets(trained: int) -> dict[str, int]:
    """ZeRO's reduce and all-gather bucket sizes for a model that trains `trained` parameters:
    that many elements (rounded up to `BUCKET_ALIGNMENT`), at most DeepSpeed's default.

    DeepSpeed allocates its reduce bucket whole, whatever is trained: `torch.empty` of
    `reduce_bucket_size` elements (5e8 by default) as the engine is built (ZeRO-3) or at each
    backward (ZeRO-1/2), so 0.93 GiB of every GPU in bf16, 1.86 GiB where ZeRO-2 stages bf16
    gradients in fp32, held for LoRA + Aligner gradients of a few million elements (5.9M at
    11B). A CPU never touches the pages of a tensor it does not fill, so only a GPU shows it."""
    # ZeRO-1/2 want a multiple of their alignment (2 elements for 16-bit weights): 64 is one
    size = int(min(DEEPSPEED_BUCKET, -(-max(trained, 1) // BUCKET_ALIGNMENT) * BUCKET_ALIGNMENT))
    return {"reduce_bucket_size": size, "allgather_bucket_size": size}


def import_deepspeed() -> ModuleType:
    """`import deepspeed`, without the MLflow import DeepSpeed's autotuner makes at import time.

    The autotuner (never run here) imports MLflow whenever it is installed (the `tracking` extra),
    and MLflow brings pandas, SciPy, FastAPI and OpenTelemetry: about 1.5 s of every train
    worker's start on a 2-core machine (10.5 s instead of 12 s). While DeepSpeed imports,
    `mlflow` is marked absent in `sys.modules` (the autotuner then records that it has none);
    afterwards the mark is removed, so the MLflow tracker imports the real package as before."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  (import mlflow -> ImportError)
    try:
        import deepspeed
    finally:
        if hide and sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]
    return deepspeed
