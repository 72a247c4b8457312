"""Export of the trained parts (PEFT adapter + Aligner + config) and its verification.

An empty adapter is the most-reported failure of LoRA + DeepSpeed (ZeRO-3 shards parameters:
saving the local shard writes tensors of size 0). The trainer therefore (1) gathers parameters
under ZeRO-3 before saving, on every rank, and (2) verifies what was written against the
trainable parameters it expected: every tensor present with its full shape, finite, the file
non-empty, and the weights not all zero.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from torch import nn

from lavender_ray.config import CONFIG_FILE, LavenderConfig
from lavender_ray.runs import ALIGNER_FILE, VLM_DIR, save_trained
from lavender_ray.train.step import LavenderModule
from lavender_ray.vlm.lora import FULL_WEIGHTS, PEFT_WEIGHTS


@dataclass(frozen=True)
class ExportReport:
    """What `verify_export` found: tensor counts and total norms per part."""

    vlm_tensors: int
    vlm_params: int
    vlm_norm: float
    aligner_tensors: int
    aligner_norm: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "export/vlm_tensors": self.vlm_tensors,
            "export/vlm_params": self.vlm_params,
            "export/vlm_norm": self.vlm_norm,
            "export/aligner_norm": self.aligner_norm,
        }


def full_shape(param: nn.Parameter) -> tuple[int, ...]:
    """A parameter's real shape, also when ZeRO-3 has replaced it by an empty shard."""
    return tuple(getattr(param, "ds_shape", param.shape))


def expected_trainable(module: LavenderModule) -> dict[str, tuple[int, ...]]:
    """Trainable VLM parameter name -> full shape (`module.model` names)."""
    return {n: full_shape(p) for n, p in module.model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def gathered(module: nn.Module, zero_stage: int) -> Iterator[None]:
    """Full parameters inside the block: ZeRO-3 gathers (all ranks must enter), else a no-op."""
    if zero_stage != 3:
        yield
        return
    import deepspeed  # in the worker only: importing it probes accelerators (see worker.py)

    params = [p for p in module.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def export_trained(
    module: LavenderModule, cfg: LavenderConfig, out_dir: str | Path, *, rank: int
) -> Path | None:
    """Every rank calls this; parameters are gathered under ZeRO-3 and rank 0 writes + verifies.

    Returns the export directory on rank 0, None elsewhere."""
    expected = expected_trainable(module)
    with gathered(module, cfg.train.zero_stage):
        if rank != 0:
            return None
        state = {n: p.detach().cpu().clone() for n, p in module.model.named_parameters()
                 if p.requires_grad}
        out = save_trained(out_dir, module.adapter, module.aligner, cfg, vlm_state_dict=state)
    verify_export(out, expected, expected_aligner=len(list(module.aligner.state_dict())))
    return Path(out)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"export check: {path} is missing or empty")
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


def verify_export(
    directory: str | Path, expected: dict[str, tuple[int, ...]], expected_aligner: int
) -> ExportReport:
    """Check an export against the trainable parameters that were expected in it.

    Raises `RuntimeError` naming what is wrong: missing files, a tensor count that differs from
    the trainable parameter count, empty or non-finite tensors, all-zero weights."""
    directory = Path(directory)
    vlm_dir = directory / VLM_DIR
    weights = vlm_dir / (PEFT_WEIGHTS if (vlm_dir / PEFT_WEIGHTS).exists() else FULL_WEIGHTS)
    vlm = _read_safetensors(weights)
    aligner = _read_safetensors(directory / ALIGNER_FILE)
    if not (directory / CONFIG_FILE).is_file():
        raise RuntimeError(f"export check: {directory}/{CONFIG_FILE} is missing")
    if len(vlm) != len(expected):
        raise RuntimeError(
            f"export check: {weights} holds {len(vlm)} tensors but {len(expected)} parameters "
            "were trainable"
        )
    expected_sizes = sorted(int(torch.Size(s).numel()) for s in expected.values())
    saved_sizes = sorted(t.numel() for t in vlm.values())
    if saved_sizes != expected_sizes:
        raise RuntimeError(
            f"export check: tensor sizes in {weights} differ from the trainable parameters' "
            f"(saved {sum(saved_sizes)} values, expected {sum(expected_sizes)}); an empty or "
            "partial ZeRO-3 shard was saved"
        )
    for part, tensors in (("vlm", vlm), ("aligner", aligner)):
        bad = [n for n, t in tensors.items() if t.numel() == 0 or not torch.isfinite(t).all()]
        if bad:
            raise RuntimeError(f"export check: empty or non-finite {part} tensors: {bad[:3]}")
    if len(aligner) != expected_aligner:
        raise RuntimeError(
            f"export check: aligner file holds {len(aligner)} tensors, expected {expected_aligner}"
        )
    vlm_norm = float(torch.sqrt(sum((t.float() ** 2).sum() for t in vlm.values())))
    aligner_norm = float(torch.sqrt(sum((t.float() ** 2).sum() for t in aligner.values())))
    if vlm_norm == 0 or aligner_norm == 0:
        raise RuntimeError(
            f"export check: all-zero weights (vlm norm {vlm_norm}, aligner norm {aligner_norm})"
        )
    return ExportReport(len(vlm), sum(saved_sizes), vlm_norm, len(aligner), aligner_norm)
