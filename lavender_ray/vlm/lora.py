"""Fine-tuning setup (PEFT LoRA or full) and the VLM half of a checkpoint.

`lora.mode=lora`: a PEFT LoRA on `lora.target_modules` (names or dotted suffixes, e.g.
`q_proj`, or `cross_attn.q_proj` for Mllama's cross-attention layers only); only LoRA weights
train. `lora.mode=full`: every model weight trains.

A saved VLM directory is a standard PEFT adapter directory (`adapter_config.json` +
`adapter_model.safetensors`, loadable by `PeftModel.from_pretrained`) or, for full fine-tuning, a
`save_pretrained` model directory; plus `lavender_vlm.json` naming the family, model id and mode,
checked when loading. (The Aligner and the resolved config are saved next to it by the trainer.)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel

from lavender_ray.config import LoraConfig, VLMConfig
from lavender_ray.vlm.adapter import CapturingAdapter

META_FILE = "lavender_vlm.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "model.safetensors"
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


@contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model;
    silence that one FutureWarning (it is PEFT's to fix, and it repeats in every Ray worker)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def apply_finetuning(model: PreTrainedModel, lora_cfg: LoraConfig, seed: int = 0) -> nn.Module:
    """LoRA-wrap `model` (returns the `PeftModel`) or unfreeze it all (returns `model`).

    LoRA A matrices are drawn from `seed` (B starts at zero), so every rank and every rebuild
    starts from the same adapter; the global RNG is left untouched."""
    if lora_cfg.mode == "full":
        model.requires_grad_(True)
        return model
    peft_config = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
    )
    try:
        with torch.random.fork_rng(devices=[]), quiet_peft():
            torch.manual_seed(seed)
            return get_peft_model(model, peft_config)
    except ValueError as err:
        raise ValueError(f"lora.target_modules={lora_cfg.target_modules}: {err}") from err


def save_adapter(
    adapter: CapturingAdapter,
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the VLM part of a checkpoint to `out_dir` and check that it is not empty.

    `state_dict` replaces `adapter.model.state_dict()` (same keys; PEFT keeps the LoRA entries):
    under ZeRO-3 pass the gathered parameters, since the local ones are empty shards.
    Returns `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_lora = isinstance(adapter.model, PeftModel)
    if is_lora:
        # Embeddings are saved only when LoRA targets them; "auto" would query the Hub.
        targets = adapter.model.peft_config["default"].target_modules or ()
        embeddings = any(t.split(".")[-1] in EMBEDDING_MODULES for t in targets)
        adapter.model.save_pretrained(out, state_dict=state_dict, save_embedding_layers=embeddings)
    else:
        adapter.model.save_pretrained(out, state_dict=state_dict)
    _check_saved(out / (PEFT_WEIGHTS if is_lora else FULL_WEIGHTS))
    meta = {
        "family": adapter.family,
        "model_id": adapter.model_id,
        "mode": "lora" if is_lora else "full",
        "layers": adapter.layers,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def _check_saved(weights: Path) -> None:
    if not weights.is_file():
        raise RuntimeError(f"saving wrote no {weights.name} into {weights.parent}")
    tensors = load_file(weights)
    empty = [name for name, tensor in tensors.items() if tensor.numel() == 0]
    if not tensors or empty:
        raise RuntimeError(
            f"{weights} holds {len(tensors)} tensors, {len(empty)} of them empty (e.g. "
            f"{empty[:3]}); under ZeRO-3 gather the parameters and pass them as state_dict"
        )


def read_meta(adapter_dir: str | Path, vlm_cfg: VLMConfig, lora_cfg: LoraConfig) -> dict:
    """The saved directory's metadata, checked against the config it is loaded with."""
    path = Path(adapter_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a saved VLM directory (no {META_FILE})")
    meta = json.loads(path.read_text())
    expected = {"family": vlm_cfg.family, "model_id": vlm_cfg.model_id, "mode": lora_cfg.mode}
    wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        detail = "; ".join(f"{k}: saved {s!r}, config {c!r}" for k, (s, c) in wrong.items())
        raise ValueError(f"{adapter_dir} was saved for another setup: {detail}")
    return meta


def load_lora(model: PreTrainedModel, adapter_dir: str | Path, trainable: bool = True) -> PeftModel:
    """Attach a saved PEFT adapter to `model`."""
    with quiet_peft():
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
