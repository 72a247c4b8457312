"""What the `sd` section means without loading SD: the concrete dtype of `sd.dtype` on a device
and the hash of everything that changes the maps (`sd_config_hash`: the target cache's key).

Imports no diffusers and no torch, so a driver that only names a cache folder or plans memory
stays light.
"""

from __future__ import annotations

from typing import get_args

from lavender_ray.config import SDConfig, config_hash
from lavender_ray.config.sections import SDDtype

SPEED_OPTIONS = {"batch_size", "channels_last", "compile"}  # change how fast, not the maps
CONCRETE_DTYPES = tuple(name for name in get_args(SDDtype) if name != "auto")  # no torch here


def resolve_dtype(dtype: str, device_type: str) -> str:
    """`sd.dtype` -> a concrete name: `auto` is fp16 on CUDA and fp32 elsewhere."""
    if dtype == "auto":
        return "fp16" if device_type == "cuda" else "fp32"
    if dtype not in CONCRETE_DTYPES:
        raise ValueError(f"sd.dtype={dtype!r}; allowed: auto, {', '.join(CONCRETE_DTYPES)}")
    return dtype


def sd_config_hash(sd: SDConfig, device_type: str) -> str:
    """Hash of everything that changes the maps: the `sd` section with the dtype resolved for
    `device_type`, without the speed options (extraction is per sample: batching changes
    nothing; the memory format and compilation change the arithmetic's order, not the maps
    beyond rounding)."""
    resolved = sd.model_copy(update={"dtype": resolve_dtype(sd.dtype, device_type)})
    return config_hash(resolved, exclude=SPEED_OPTIONS)
