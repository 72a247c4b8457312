"""Hardware-aware placement: which GPU type each stage runs on, and whether the config runs there.

Two stages ask for hardware: the SD actor pool (`pipeline.sd_num_gpus`,
`pipeline.sd_accelerator`, reaching `map_batches(accelerator_type=...)` in
`pipeline.sd_stage.sd_stage_options`) and the trainer's worker group (`train.use_gpu`,
`train.accelerator`, reaching `ScalingConfig(accelerator_type=...)` in
`train.launch.build_trainer`). Ray turns an accelerator type into the resource
`accelerator_type:<name>` (0.001 per actor/worker), which GPU nodes carry.

`check_placement(cfg, nodes)` runs on the driver before anything starts and refuses, naming the
field, the value and what is allowed:

- an accelerator name Ray does not use (`a100`, `A100,V100`), or one set on a stage without GPUs;
- one DeepSpeed group over several GPU types: `train.accelerator` unset with GPU workers on a
  cluster that has more than one GPU type (bf16 support, memory and speed differ per type);
- a precision the hardware cannot honour (`resolve_precision`): bf16 on V100
  (and other GPUs without bf16), fp16 on CPU; the same rules for `sd.dtype` on the SD pool.

`nodes` are the resource dicts of the cluster's nodes (`cluster_nodes()`), or of a cluster
launcher's node types for `worker_slots`, which counts how many workers of a stage fit.
This module imports Ray only inside `cluster_nodes` and torch only inside `Device.current`: the
driver's checks run before either is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

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
        import torch  # here, not at the top: the driver's checks need no torch

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


ACCELERATOR_PREFIX = "accelerator_type:"

# NVIDIA accelerator types as Ray names them (ray.util.accelerators) -> bf16 support.
GPU_BF16: dict[str, bool] = {
    "K80": False, "P4": False, "P100": False, "T4": False, "V100": False,
    "A10G": True, "L4": True, "L40S": True, "A100": True, "A100-40G": True, "A100-80G": True,
    "H100": True, "H200": True, "H20": True, "B200": True, "B300": True, "GB200": True,
    "GB300": True, "RTX-PRO-6000": True,
}  # fmt: skip

NodeResources = Mapping[str, float]


@dataclass(frozen=True)
class Placement:
    """Where each stage runs. A device of None: GPUs of a type the driver cannot know yet
    (no GPU node up on an autoscaling cluster); the workers then decide precision themselves."""

    train_device: Device | None
    train_precision: Precision | None
    sd_device: Device | None

    def describe(self) -> str:
        def where(device: Device | None) -> str:
            return "GPU (type decided at start)" if device is None else device.name

        precision = self.train_precision or "auto (decided on the workers)"
        return f"train: {where(self.train_device)}, {precision}; SD pool: {where(self.sd_device)}"


def gpu_device(name: str) -> Device:
    """The `Device` of a known GPU type (its bf16 support decides `auto` precision)."""
    return Device("cuda", name, GPU_BF16[name])


def check_accelerator(field: str, value: str) -> str:
    """`value` if it names exactly one GPU type Ray knows, else `ConfigError`."""
    parts = [p for p in re.split(r"[\s,|/+;]+", value) if p]
    if len(parts) > 1:
        raise ConfigError(
            f"{field}={value!r} names {len(parts)} GPU types ({', '.join(parts)}): one stage runs "
            "on one GPU type (a DeepSpeed group over mixed types is refused); pick one of them"
        )
    if value not in GPU_BF16:
        raise ConfigError(
            f"{field}={value!r} is not a GPU type Ray knows; allowed (case-sensitive): "
            f"{', '.join(GPU_BF16)}"
        )
    return value


def gpu_types(nodes: Iterable[NodeResources]) -> set[str]:
    """GPU types (`accelerator_type:<name>` resources) of the nodes that have GPUs."""
    return {
        key[len(ACCELERATOR_PREFIX):]
        for node in nodes if node.get("GPU", 0) > 0
        for key in node if key.startswith(ACCELERATOR_PREFIX)
    }


def check_train_placement(
    cfg: LavenderConfig, cluster_gpu_types: set[str]
) -> tuple[Device | None, Precision | None]:
    """The trainer's device and precision; refuses mixed GPU types and unsafe precisions."""
    t = cfg.train
    if t.accelerator is not None:
        check_accelerator("train.accelerator", t.accelerator)
        if not t.use_gpu:
            raise ConfigError(
                f"train.accelerator={t.accelerator!r} places workers on {t.accelerator} GPUs, "
                "which needs train.use_gpu=true (or set train.accelerator=null for CPU workers)"
            )
    if not t.use_gpu:
        cpu = Device("cpu")
        return cpu, resolve_precision(t.precision, cpu)
    types = {t.accelerator} if t.accelerator else set(cluster_gpu_types)
    if len(types) > 1:
        raise ConfigError(
            f"train.accelerator is unset and train.use_gpu=true, but the cluster has GPU types "
            f"{', '.join(sorted(types))}: one DeepSpeed group must run on one GPU type (bf16 "
            "support, memory and speed differ; the slowest rank sets the pace). Set "
            f"train.accelerator to one of: {', '.join(sorted(types))}"
        )
    gpu = types.pop() if types else None
    if gpu is None or gpu not in GPU_BF16:
        return None, None
    device = gpu_device(gpu)
    return device, resolve_precision(t.precision, device)


def check_sd_placement(cfg: LavenderConfig) -> Device | None:
    """The SD pool's device; refuses a GPU type without GPUs and dtypes the device lacks."""
    p, dtype = cfg.pipeline, cfg.sd.dtype
    if p.sd_accelerator is not None:
        check_accelerator("pipeline.sd_accelerator", p.sd_accelerator)
        if p.sd_num_gpus == 0:
            raise ConfigError(
                f"pipeline.sd_accelerator={p.sd_accelerator!r} places SD actors on "
                f"{p.sd_accelerator} GPUs, which needs pipeline.sd_num_gpus > 0 (got 0)"
            )
    if p.sd_num_gpus == 0:
        if dtype == "fp16":
            raise ConfigError(
                "sd.dtype='fp16' but the SD pool runs on CPU (pipeline.sd_num_gpus=0): CPU "
                "kernels lack fp16 and inversion in fp16 gives NaN maps; use 'fp32' or 'auto'"
            )
        return Device("cpu")
    if p.sd_accelerator is None:
        return None
    device = gpu_device(p.sd_accelerator)
    if dtype == "bf16" and not device.bf16:
        raise ConfigError(
            f"sd.dtype='bf16' but pipeline.sd_accelerator={p.sd_accelerator!r} has no bf16 "
            "support; use 'fp16', 'fp32' or 'auto' (fp16 on GPU)"
        )
    return device


def gpu_stages(cfg: LavenderConfig) -> tuple[bool, bool]:
    """(the trainer on GPUs, the SD actors on GPUs); a precomputed run starts no SD actors."""
    p = cfg.pipeline
    return cfg.train.use_gpu, p.mode != "precomputed" and p.sd_num_gpus > 0


def check_placement(cfg: LavenderConfig, nodes: Iterable[NodeResources]) -> Placement:
    """Check both stages against the config and the cluster's `nodes` (see module docstring)."""
    train_device, precision = check_train_placement(cfg, gpu_types(nodes))
    return Placement(train_device, precision, check_sd_placement(cfg))


def worker_request(cfg: LavenderConfig) -> dict[str, float]:
    """Resources of one train worker, as `build_trainer`'s `ScalingConfig` asks for them."""
    t = cfg.train
    request = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        request["GPU"] = 1.0
    if t.accelerator:
        request[ACCELERATOR_PREFIX + t.accelerator] = 0.001
    return request


def sd_actor_request(cfg: LavenderConfig) -> dict[str, float]:
    """Resources of one SD actor, as `pipeline.sd_stage.sd_stage_options` asks for them."""
    p = cfg.pipeline
    request = {"CPU": p.sd_num_cpus}
    if p.sd_num_gpus:
        request["GPU"] = p.sd_num_gpus
    if p.sd_accelerator:
        request[ACCELERATOR_PREFIX + p.sd_accelerator] = 0.001
    return request


def slots_on(request: Mapping[str, float], node: NodeResources) -> int:
    """How many units of `request` fit on one node of resources `node`."""
    fits = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in request.items() if v > 0]
    return min(fits) if fits else 0


def worker_slots(request: Mapping[str, float], nodes: Iterable[NodeResources]) -> int:
    """How many units of `request` fit on `nodes` together (each unit on one node)."""
    return sum(slots_on(request, node) for node in nodes)


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    import ray  # here, not at the top: the checks above run without Ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def spans_nodes(nodes: list[NodeResources], wants_gpus: bool) -> str | None:
    """Why a job's processes may run on more than one node (None when they cannot): several
    nodes are up, or it asks for GPUs no node has yet, so an autoscaling cluster adds nodes."""
    if len(nodes) > 1:
        return f"the cluster has {len(nodes)} nodes"
    if wants_gpus and not any(n.get("GPU", 0) > 0 for n in nodes):
        return "GPU nodes will be added to the cluster for it (none is up yet)"
    return None


def check_shared_folders(
    cfg: LavenderConfig,
    nodes: list[NodeResources],
    folders: str,
    wants_gpus: bool = False,
    alternative: str = "",
) -> None:
    """Local `folders` (named as the user gave them, e.g. "--out") that tasks and actors read or
    write must be on a mount every node sees when those can run on other nodes; `alternative`
    ends the error with another way out."""
    spread = spans_nodes(nodes, wants_gpus)
    if spread and not cfg.train.shared_storage:
        raise ConfigError(
            f"this job's tasks and actors can run on other nodes ({spread}): {folders} must be "
            f"on a mount every node sees; put them on one and set train.shared_storage=true"
            f"{alternative}"
        )
