"""The train worker's side of the plan: parameter counts and the activations of one micro-batch.

Counts are exact: the preset's model is built from its config on the `meta` device (no memory,
no weights) and LoRA applied as training applies it.

Activations are measured, not guessed: autograd's saved tensors (`plan.saved.SavedTensors`) of
one Lavender forward (VLM, captured maps, Aligner, loss) on the worst-case micro-batch of the
preset (`vlm.max_length` tokens, a 1120 x 1120 px image: Mllama's 4 tiles, the most image tokens
the other families make of it, every answer word matched to an SD map), run on CPU with the real
token counts by copies of the model with one and two layers of each kind
(`CapturingAdapter.shallow_config`) whose widths are cut by f and f/2, and scaled to the full
depth and width (`plan.scaling`). `bench/plan_activations.py` and `tests/test_plan.py` compare
the result with a direct measurement of the whole model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoConfig, PretrainedConfig
from transformers.initialization import no_init_weights

from lavender_ray.align import build_aligner
from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.families import TINY_PREFIX
from lavender_ray.plan.saved import OUTSIDE, SavedTensors, layer_counts, layers_by_kind
from lavender_ray.plan.scaling import (
    Measurement,
    full_depth,
    full_width,
    scaled_config,
    width_factor,
)
from lavender_ray.sd.target import stand_in_target
from lavender_ray.tensors import TORCH_DTYPES
from lavender_ray.train.step import LavenderModule, collate_records
from lavender_ray.vlm.adapter import CapturingAdapter, select_layers
from lavender_ray.vlm.lora import apply_finetuning
from lavender_ray.vlm.registry import adapter_class

TEXT_LAYERS = "in language_model"  # the layer kinds of the text model (`plan.saved` names)
# Layers of each kind in the two shallow copies: the step from one to two layers is one more
# layer (the first one differs: its input needs no gradient), the rest is the same at any depth.
# (Two and three would also separate a last layer that differed; in the families measured none
# did, and a third layer of each kind costs a fifth more time at 11B.)
DEPTHS = (1, 2)
CACHE_FORMAT = 1  # change when what a measurement gives changes: older cache files are not read
WORST_IMAGE_SIDE = 1120
MAX_SD_WORDS = 60  # SD's 77-token prompt holds about this many words
ANSWER_WORDS = (
    "red green blue yellow purple orange circle square triangle star left right above below top "
    "bottom center small large dark light round flat tree house street water sky grass table "
    "chair dog cat car person people sitting standing holding looking wearing playing behind "
    "front near under over inside outside between corner side upper lower bright pale gray "
    "white black brown pink gold silver cube ball box line dot ring heart diamond oval picture"
).split()


@dataclass(frozen=True)
class VLMEstimate:
    """The train worker's model: parameters, one worst-case micro-batch's saved activations
    (batch 1, full width and depth, per layer kind) and its training FLOPs."""

    base_params: int  # frozen
    trainable_params: int  # LoRA (or every weight with lora.mode=full) + the Aligner
    activations: dict[str, float]  # bytes
    tokens: int  # text tokens of the worst-case micro-batch
    image_tokens: int  # the most tokens one layer of the vision tower processes
    flops_per_sample: float
    widths: tuple[int, ...]  # the width divisors measured (1: full width)
    dtype_bytes: int  # element size the activations were measured in
    source: str

    def activation_bytes(self) -> float:
        return sum(self.activations.values())

    @property
    def measured(self) -> bool:
        return bool(self.activations)


def architecture(cfg: LavenderConfig) -> tuple[PretrainedConfig, Any, str]:
    """(model config, processor, where they came from) of `vlm.model_id`, without weights: the
    tiny builders, a local folder or the Hub (config and processor files only). A released
    model its family knows (`released_architecture`: the paper's Llama-3.2-11B-Vision) comes
    from the local Hub cache, else from its published architecture, without asking the Hub."""
    vlm = cfg.vlm
    cls = adapter_class(vlm.family)
    if vlm.model_id.startswith(TINY_PREFIX):
        model, processor = cls.build_tiny(vlm.seed)
        return model.config, processor, "tiny builder"
    local = Path(vlm.model_id).is_dir()
    released = None if local else cls.released_architecture(vlm.model_id)
    try:
        config = AutoConfig.from_pretrained(vlm.model_id, revision=vlm.revision,
                                            trust_remote_code=vlm.trust_remote_code,
                                            local_files_only=released is not None)
        processor = cls.load_processor(vlm.model_id, revision=vlm.revision,
                                       trust_remote_code=vlm.trust_remote_code,
                                       local_files_only=released is not None)
        return config, processor, "local folder" if local else "Hub config"
    except (OSError, ValueError) as err:
        if released is not None:  # the Hub's files are not in the local cache
            return released[0], released[1], "published architecture"
        raise ConfigError(
            f"vlm.model_id={vlm.model_id!r}: cannot read its config.json and processor files to "
            f"plan ({err}); give a local folder with them, or a Hub id this machine can reach "
            "(without internet: HF_HUB_OFFLINE=1 and the model in the HF cache)"
        ) from err


def meta_model(cfg: LavenderConfig, config: PretrainedConfig) -> tuple[torch.nn.Module, list[int]]:
    """The family's model built from `config` on the meta device, fine-tuning applied, and the
    layers it captures (`vlm.attention_layers` checked as the adapter checks them)."""
    cls = adapter_class(cfg.vlm.family)
    with torch.device("meta"):
        model = cls.model_class._from_config(config, dtype=_dtype(cfg))
        captured = select_layers(cfg.vlm.attention_layers, sorted(cls.attention_modules(model)))
        return apply_finetuning(model, cfg.lora, seed=cfg.vlm.seed), captured


def _dtype(cfg: LavenderConfig) -> torch.dtype:
    """The dtype the trainer computes in on a GPU: bf16 unless fp16/fp32 is asked for."""
    precision = cfg.train.precision if cfg.train.precision in ("fp16", "fp32") else "bf16"
    return TORCH_DTYPES[precision]


def worst_case_record(max_length: int, tokenizer: Any) -> dict[str, Any]:
    """A record whose chat fills `max_length` tokens (the adapter cuts it there), on a
    1120 x 1120 px image; its SD target text is the first MAX_SD_WORDS answer words."""
    buffer = io.BytesIO()
    Image.new("RGB", (WORST_IMAGE_SIDE, WORST_IMAGE_SIDE), (120, 90, 200)).save(buffer, "PNG")
    lengths = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"])
               for w in ANSWER_WORDS}
    words, tokens = [], 0
    while tokens < max_length:  # just past it: the answer is cut, never the tokenizer's limit
        words.append(ANSWER_WORDS[len(words) % len(ANSWER_WORDS)])
        tokens += lengths[words[-1]]
    messages = [{"role": "user", "content": "Describe the image."},
                {"role": "assistant", "content": " ".join(words)}]
    return {"id": "worst-case", "image": buffer.getvalue(), "messages": json.dumps(messages),
            "target_text": " ".join(words[:MAX_SD_WORDS])}


def measure_saved(cfg: LavenderConfig, config: PretrainedConfig, processor: Any,
                  dtype: torch.dtype) -> Measurement:
    """Saved bytes (per layer kind) of one Lavender forward of the worst-case record by a model of
    `config` on CPU (constant weights), LoRA and capture as in training."""
    cls = adapter_class(cfg.vlm.family)
    with no_init_weights():  # sizes do not depend on the values: skip the random draws
        model = cls.model_class._from_config(config, dtype=dtype)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.02)
    if cfg.vlm.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # the default captured layers: a shallow copy lacks the full model's layer indices
    adapter: CapturingAdapter = cls(model, processor, attention_layers=None,
                                    map_size=cfg.sd.output_size, max_length=cfg.vlm.max_length,
                                    model_id=cfg.vlm.model_id)
    adapter.model = apply_finetuning(adapter.base_model, cfg.lora, seed=cfg.vlm.seed)
    aligner = build_aligner(cfg.aligner, adapter.num_heads).to(dtype)
    loss = cfg.loss.model_copy(update={"word_source": "label"})  # every answer word matched
    module = LavenderModule(adapter, aligner, loss, cfg.sd.output_size).train()
    tokenizer = getattr(processor, "tokenizer", processor)
    record = worst_case_record(cfg.vlm.max_length, tokenizer)
    record |= stand_in_target(record["target_text"], cfg.sd.output_size).to_row()
    batch = collate_records([record], adapter, cfg.sd.output_size)
    batch.inputs = {k: v.to(dtype) if torch.is_floating_point(v) else v
                    for k, v in batch.inputs.items()}
    with SavedTensors(module) as saved:
        module(batch, 0, 10)
    # the maps, the Aligner and the loss grow with the captured layers: count them as such
    layers = layer_counts(module) | {OUTSIDE: len(adapter.layers)}
    return Measurement(saved.by_kind(), layers, int(batch.inputs["input_ids"].shape[1]),
                       dict(saved.tokens))


def estimate_vlm(cfg: LavenderConfig,
                 measure: Callable[[VLMEstimate], bool] = lambda _: True,
                 progress: Callable[[str], None] | None = None) -> VLMEstimate:
    """Parameters, activations and FLOPs of the preset's train worker (see the module doc):
    activations from four measurements, one and two layers of each kind at widths 1/f and 2/f
    (at full width when f = 1), scaled to the full depth and width. `measure` sees the estimate
    of the parameters alone (well under a second at 11B) and says whether the activations and
    FLOPs are worth measuring; `progress` hears before a measurement (none when the cache has
    it)."""
    config, processor, source = architecture(cfg)
    cache = cache_file(cfg, config)  # before building: building sets fields of the config
    dtype = _dtype(cfg)
    full, captured = meta_model(cfg, config)
    layers = layer_counts(full)
    layers[OUTSIDE] = len(captured)
    heads = config.get_text_config().num_attention_heads  # as `build_adapter` gives the Aligner
    aligner = sum(p.numel() for p in build_aligner(cfg.aligner, heads).parameters())
    estimate = VLMEstimate(
        base_params=sum(p.numel() for p in full.parameters() if not p.requires_grad),
        trainable_params=sum(p.numel() for p in full.parameters() if p.requires_grad) + aligner,
        activations={}, tokens=0, image_tokens=0, flops_per_sample=0.0, widths=(),
        dtype_bytes=dtype.itemsize, source=source,
    )
    if not measure(estimate):
        return estimate
    if cache.exists():
        return dataclasses.replace(estimate, **_from_json(json.loads(cache.read_text())))
    if progress is not None:
        progress("measuring the worst-case micro-batch on narrowed copies of the model "
                 "(cached for the next plan)")
    measured = _measure(cfg, config, processor, full, layers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".part")
    partial.write_text(json.dumps(measured))
    partial.replace(cache)
    return dataclasses.replace(estimate, **_from_json(measured))


def cache_file(cfg: LavenderConfig, config: PretrainedConfig) -> Path:
    """Where the measurement of this architecture and these settings is kept: under
    $LAVENDER_PLAN_CACHE, else ~/.cache/lavender_ray/plan (`lavender train` after `lavender plan`
    measures nothing again). The key is everything the measurement depends on."""
    key = json.dumps({
        "format": CACHE_FORMAT, "architecture": config.to_dict(),
        "vlm": cfg.vlm.model_dump(include={"family", "attention_layers", "max_length",
                                           "gradient_checkpointing"}),
        "lora": cfg.lora.model_dump(), "aligner": cfg.aligner.model_dump(),
        "loss": cfg.loss.model_dump(), "map_size": cfg.sd.output_size, "dtype": str(_dtype(cfg)),
    }, sort_keys=True, default=str)
    root = Path(os.environ.get("LAVENDER_PLAN_CACHE") or Path.home() / ".cache/lavender_ray/plan")
    return root / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _from_json(measured: dict[str, Any]) -> dict[str, Any]:
    return measured | {"widths": tuple(measured["widths"])}


def _measure(cfg: LavenderConfig, config: PretrainedConfig, processor: Any,
             full: torch.nn.Module, layers: dict[str, int]) -> dict[str, Any]:
    """The measured fields of `VLMEstimate`, JSON-ready."""
    dtype = _dtype(cfg)
    cls = adapter_class(cfg.vlm.family)
    factor = width_factor(config)
    widths = (factor, factor // 2) if factor > 1 else (1,)
    at_width, measured = [], None
    for f in widths:
        narrowed = scaled_config(config, f) if f > 1 else config
        one, measured = (measure_saved(cfg, cls.shallow_config(narrowed, d), processor, dtype)
                         for d in DEPTHS)
        at_width.append(full_depth(one, measured, layers))
    assert measured is not None
    vision = [t for kind, t in measured.layer_tokens.items() if not kind.endswith(TEXT_LAYERS)]
    return {
        "activations": full_width(*at_width, factor) if factor > 1 else at_width[0],
        "tokens": measured.tokens,
        "image_tokens": max(vision, default=0),
        "flops_per_sample": train_flops(full, measured),
        "widths": list(widths),
    }


def train_flops(full: torch.nn.Module, measured: Measurement) -> float:
    """Training FLOPs of one worst-case sample: 2 per parameter and token through each layer
    (the tokens each layer kind processed in the measurement) and through the LM head, twice
    (the backward computes input gradients only: the base is frozen, LoRA's weight gradients
    are negligible). Attention-score FLOPs are left out, so the rate this gives is an upper
    bound, and the SD pool sized from it errs on the side of feeding the trainer."""
    forward = 0.0
    for layer, kind in layers_by_kind(full):
        tokens = measured.layer_tokens.get(kind, 0)
        forward += 2.0 * sum(p.numel() for p in layer.parameters()) * tokens
    head = full.get_output_embeddings()
    if head is not None:
        forward += 2.0 * head.weight.numel() * measured.tokens
    return 2.0 * forward
