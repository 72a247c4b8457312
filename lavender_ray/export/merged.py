"""The merged model of an export: the LoRA folded into the base weights (`merge_and_unload`),
saved by `save_pretrained` with the processor, loadable by the family's model class without
PEFT (servers such as vLLM cannot serve every family's LoRA; merged weights they can).

Verified after writing: every tensor of every `*.safetensors` file non-empty and finite, no LoRA
tensor left, and as many tensors as the base model has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import safe_open
from torch import nn

from lavender_ray.vlm import VLMAdapter

LORA_MARK = "lora_"


@dataclass(frozen=True)
class MergedReport:
    """What `verify_merged` found: tensors, values and weight files."""

    tensors: int
    values: int
    files: int


def write_merged(adapter: VLMAdapter, processor: Any, out_dir: Path) -> MergedReport:
    """Merge the adapter's LoRA into its base model (in place: the adapter is spent), save the
    model and `processor` into `out_dir`, and verify what was written."""
    model = adapter.model
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    expected = distinct_tensors(model)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return verify_merged(out_dir, expected)


def distinct_tensors(model: nn.Module) -> int:
    """The tensors `save_pretrained` writes: the state dict, tied weights counted once."""
    return len({(t.data_ptr(), t.shape) for t in model.state_dict().values()})


def verify_merged(out_dir: Path, expected: int) -> MergedReport:
    """`RuntimeError` naming what is wrong: no weight file, empty or non-finite tensors, a LoRA
    tensor left, a tensor count other than `expected`."""
    files = sorted(out_dir.glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"merged export check: no *.safetensors in {out_dir}")
    tensors, values, bad, lora = 0, 0, [], []
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)  # one at a time: a merged 11B model is 22 GB
                tensors, values = tensors + 1, values + tensor.numel()
                if tensor.numel() == 0 or not torch.isfinite(tensor).all():
                    bad.append(name)
                if LORA_MARK in name:
                    lora.append(name)
    if bad or lora:
        raise RuntimeError(
            f"merged export check: {out_dir} holds empty or non-finite tensors {bad[:3]} and "
            f"unmerged LoRA tensors {lora[:3]}"
        )
    if tensors != expected:
        raise RuntimeError(
            f"merged export check: {out_dir} holds {tensors} tensors, the base model {expected}"
        )
    return MergedReport(tensors, values, len(files))
