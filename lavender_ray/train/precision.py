"""Precision and the DeepSpeed config: the one place batch arithmetic and dtypes are decided.

`resolve_precision` turns `train.precision` (auto|bf16|fp16|fp32) and the device into the
precision the run uses; `deepspeed_config` builds DeepSpeed's config dict from the typed config
and the world size. No hand-written DeepSpeed JSON exists anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lavender_ray.config import ConfigError, LavenderConfig

Precision = Literal["bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class Device:
    """What a worker runs on: `kind` cpu|cuda, the GPU name and whether it does bf16."""

    kind: Literal["cpu", "cuda"]
    name: str = "cpu"
    bf16: bool = True

    @classmethod
    def current(cls) -> Device:
        import torch

        if not torch.cuda.is_available():
            return cls("cpu")
        # Without `including_emulation=False`, torch says yes on a V100 (it can *create* bf16
        # tensors there) and the run would train in slow emulated bf16.
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return cls("cuda", torch.cuda.get_device_name(), bf16)


def resolve_precision(requested: str, device: Device) -> Precision:
    """`auto` = fp32 on CPU, bf16 where the GPU supports it, else fp16 (V100) with loss scaling.

    Explicit choices the hardware cannot honour are refused, naming both."""
    if requested == "auto":
        if device.kind == "cpu":
            return "fp32"
        return "bf16" if device.bf16 else "fp16"
    if requested == "fp16" and device.kind == "cpu":
        raise ConfigError(
            "train.precision='fp16' is not supported on CPU (no fp16 kernels, no loss scaling "
            "there); use 'fp32', 'bf16' or 'auto'"
        )
    if requested == "bf16" and device.kind == "cuda" and not device.bf16:
        raise ConfigError(
            f"train.precision='bf16' but {device.name} has no bf16 support (V100 and older); "
            "use 'fp16' or 'auto'"
        )
    if requested not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"train.precision={requested!r}; allowed: auto, bf16, fp16, fp32")
    return requested  # type: ignore[return-value]


def deepspeed_config(cfg: LavenderConfig, world_size: int, precision: Precision) -> dict[str, Any]:
    """DeepSpeed config for `world_size` ranks: ZeRO stage, batch arithmetic, precision, clipping.

    global batch = micro_batch_size * grad_accum_steps * world_size."""
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if t.zero_stage == 3:
        # Export gathers full 16-bit weights so a saved adapter is never empty (trl#4416).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
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
