"""The GPU types the plan sizes for: memory and dense peak throughput (NVIDIA data sheets, SXM
parts, no sparsity), by the accelerator type Ray gives their nodes."""

from __future__ import annotations

from dataclasses import dataclass

from lavender_ray.placement import GPU_BF16

GIB = 2**30
# What a CUDA process holds before any tensor: the context, cuBLAS/cuDNN workspaces, NCCL.
CUDA_RESERVED_GIB = 1.0


@dataclass(frozen=True)
class GPU:
    name: str  # as the plan prints it
    ray_type: str  # Ray's accelerator_type for it (`train.accelerator`, `pipeline.sd_accelerator`)
    memory_gib: float
    tflops_16: float  # dense fp16/bf16 tensor-core peak
    tflops_32: float  # dense fp32 peak (no TF32)

    @property
    def bf16(self) -> bool:
        return GPU_BF16[self.ray_type]  # placement's table, the one placement checks with

    def usable_bytes(self) -> float:
        return (self.memory_gib - CUDA_RESERVED_GIB) * GIB

    def peak_flops(self, dtype_bytes: int) -> float:
        return (self.tflops_16 if dtype_bytes <= 2 else self.tflops_32) * 1e12


# The types a plan shows when the preset names none.
GPUS = (
    GPU("V100-16GB", "V100", 16, 125, 15.7),
    GPU("V100-32GB", "V100", 32, 125, 15.7),
    GPU("A100-40GB", "A100-40G", 40, 312, 19.5),
    GPU("A100-80GB", "A100-80G", 80, 312, 19.5),
    GPU("H100-80GB", "H100", 80, 989, 67),
)
# Planned only when named (`train.accelerator=H200`).
NAMED_ONLY = (GPU("H200-141GB", "H200", 141, 989, 67),)


def gpus_for(accelerator: str | None) -> list[GPU]:
    """The GPU types a stage may land on: all of them when no type is named; for a type Ray
    names without its memory (`V100`, `A100`), each variant."""
    if accelerator is None:
        return list(GPUS)
    if accelerator == "A100":
        return [g for g in GPUS if g.ray_type.startswith("A100")]
    matching = [g for g in GPUS + NAMED_ONLY if g.ray_type == accelerator]
    if not matching:
        known = sorted({g.ray_type for g in GPUS + NAMED_ONLY} | {"A100"})
        raise ValueError(f"no memory figures for accelerator type {accelerator!r}; the plan "
                         f"knows {', '.join(known)}")
    return matching
