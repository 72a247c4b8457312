"""One training step of Lavender: the batch, the loss, the trainable module and its optimizer.

The distributed trainer (`train.worker`) and the one-process loop (`train.local.fit_local`)
call the same pieces::

    module = LavenderModule(adapter, aligner, cfg.loss, cfg.sd.output_size)
    optimizer = build_optimizer(module, cfg.optim)        # or DeepSpeed wraps module + optimizer
    out = module(batch, step, total_steps)                # forward: VLM + words + Aligner + loss
    optimizer_step(out.total, optimizer, module, cfg.optim.grad_clip)   # engine.backward/step

`step_loss` is the per-step function: the VLM's outputs + the SD targets of the batch in, loss and
metrics out. Backward and the optimizer step are separate (`optimizer_step`) so DeepSpeed can take
them over.

Shapes::

    b  batch   T  text length   V  vocab   L  captured layers   H  heads   s  map side
    n  matched words in the batch     m  maps through the Aligner (n, or the words' distinct rows)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from lavender_ray.align import Aligner
from lavender_ray.config import LossConfig, OptimConfig
from lavender_ray.images import decode_image
from lavender_ray.loss import LossOutput, alpha_at, attention_loss, lambda_at, lavender_loss
from lavender_ray.pipeline.vlm_check import record_targets
from lavender_ray.schema import parse_messages
from lavender_ray.tensors import minmax_normalise
from lavender_ray.vlm.base import CapturedAttention, VLMAdapter, VLMForwardOutput
from lavender_ray.words import MatchedWord, select_words


@dataclass
class TrainBatch:
    """Adapter inputs (with `labels`) + the SD targets of each sample.

    sd_words[i]: word keys of sample i; sd_maps[i]: float32 [n_sd_i, s, s] in [0, 1];
    images[i]: the decoded image of sample i (for pictures of its maps; may be empty).
    """

    inputs: dict[str, torch.Tensor]
    sd_words: list[list[str]]
    sd_maps: list[torch.Tensor]
    images: list[Image.Image] = field(default_factory=list)

    def to(self, device: torch.device | str) -> TrainBatch:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.inputs.items()}
        return TrainBatch(moved, self.sd_words, [m.to(device) for m in self.sd_maps], self.images)

    def __len__(self) -> int:
        return len(self.sd_words)

    def nbytes(self) -> int:
        """The bytes of its tensors and decoded images (what keeping it in memory costs)."""
        tensors = [v for v in self.inputs.values() if torch.is_tensor(v)] + self.sd_maps
        pixels = sum(im.width * im.height * len(im.getbands()) for im in self.images)
        return sum(t.numel() * t.element_size() for t in tensors) + pixels


def collate_records(
    records: Sequence[dict[str, Any]], adapter: VLMAdapter, map_size: int
) -> TrainBatch:
    """Records with SD target columns -> one `TrainBatch` (images decoded, chat-templated, padded).

    Raises `ValueError` naming the record when its targets are not usable (`record_targets`:
    a target column missing, a map size other than `map_size` (config `sd.output_size`), maps
    that do not fit the words). The pipeline's check stage (`pipeline.vlm_check`) rejects every
    record this would raise on before it reaches a train worker.
    """
    if not records:
        raise ValueError("cannot collate an empty list of records")
    images, conversations, words, maps = [], [], [], []
    for record in records:
        record_words, record_maps = record_targets(record, map_size)  # [n_sd, s, s]
        # the same decoding (EXIF, alpha, 16-bit, CMYK -> RGB) as the SD stage saw
        images.append(decode_image(record["image"], max_pixels=sys.maxsize))
        conversations.append(parse_messages(record["messages"]))
        words.append(record_words)
        maps.append(torch.from_numpy(record_maps.copy()))
    return TrainBatch(adapter.build_inputs(images, conversations), words, maps, images)


def step_loss(
    outputs: VLMForwardOutput,
    batch: TrainBatch,
    aligner: Aligner,
    tokenizer: Any,
    loss_cfg: LossConfig,
    step: int,
    total_steps: int,
) -> LossOutput:
    """The Lavender loss of one batch from the VLM's outputs and the batch's SD targets.

    Words come from `loss.word_source` (argmax of `outputs.logits` or the labels), are matched
    to the SD words (`loss.matching`, `loss.skip_stop_words`), their VLM maps go through the
    Aligner (`aligned_word_maps`) and are compared with the SD maps. With lambda_t = 0 the
    alignment term is computed for the metric only and left out of the total.
    """
    alpha = alpha_at(step, loss_cfg)
    lambda_t = lambda_at(step, total_steps, loss_cfg)
    matched = matched_words(outputs, batch, tokenizer, loss_cfg)
    num_matched = sum(len(words) for words in matched)
    if num_matched == 0:
        aligned = aligner_anchor(aligner, outputs.captured)  # [1, s, s]
        predicted = target = aligned[:0]  # no words: L_att is exactly 0
    else:
        rows = [[word.rows for word in words] for words in matched]
        aligned = predicted = aligned_word_maps(aligner, outputs.captured, rows)  # [n, s, s]
        target = torch.cat(
            [batch.sd_maps[i][[w.sd_index for w in words]] for i, words in enumerate(matched)]
        ).to(predicted.device)  # [n, s, s]
    att = attention_loss(predicted if lambda_t != 0 else predicted.detach(), target)
    out = lavender_loss(outputs.lm_loss, att, num_matched, alpha, lambda_t)
    # Every rank runs the Aligner exactly once per step and every Aligner parameter is in the
    # graph (a zero-weighted term; the value is unchanged): ZeRO gathers (stage 3) and reduces
    # parameters collectively, so ranks must agree on which parameters a step uses.
    out.total = out.total + 0.0 * aligned.sum()
    return out


def matched_words(
    outputs: VLMForwardOutput, batch: TrainBatch, tokenizer: Any, loss_cfg: LossConfig
) -> list[list[MatchedWord]]:
    """The batch's words matched to SD words (`loss.word_source`, `loss.matching`,
    `loss.skip_stop_words`), one list per sample (possibly empty)."""
    return select_words(
        batch.inputs["labels"],
        outputs.logits,
        batch.sd_words,
        tokenizer,
        source=loss_cfg.word_source,
        matching=loss_cfg.matching,
        skip_stop_words=loss_cfg.skip_stop_words,
    )


def aligned_word_maps(
    aligner: Aligner, captured: CapturedAttention, words: Sequence[Sequence[Sequence[int]]]
) -> torch.Tensor:
    """The Aligner's maps `[n, s, s]` of the words of every sample, in `aligner.cfg.word_pooling`
    order, with one Aligner call (ZeRO: every rank runs it once per step).

    words[i]: the query rows of each word of sample i (a row may repeat: it counts once per
    occurrence). `pool_then_aligner`: each word's rows are averaged into one map
    (`captured.word_maps`), which goes through the Aligner. `aligner_then_pool` (the authors'
    order): each distinct row of the words goes through the Aligner (min-max normalised per row),
    a word is the mean over its row list, min-max normalised again. Differentiable with respect
    to the Aligner and the captured probabilities; n must be > 0.
    """
    if aligner.cfg.word_pooling == "pool_then_aligner":
        maps = torch.cat([captured.word_maps(i, groups) for i, groups in enumerate(words)])
        return aligner(maps)  # [n, L, H, s, s] -> [n, s, s]
    row_maps, word_columns = [], []  # word_columns: per word, the maps of its rows (in m)
    for i, groups in enumerate(words):
        rows = sorted({row for group in groups for row in group})
        offset = sum(len(block) for block in row_maps)
        column = {row: offset + c for c, row in enumerate(rows)}
        row_maps.append(captured.word_maps(i, [[row] for row in rows]))  # [m_i, L, H, s, s]
        word_columns += [[column[row] for row in group] for group in groups]
    maps = torch.cat(row_maps)  # [m, L, H, s, s]
    weights = torch.zeros(len(word_columns), len(maps))  # [n, m]: 1/len(word) per row occurrence
    for word, columns in enumerate(word_columns):
        for c in columns:
            weights[word, c] += 1.0 / len(columns)
    per_row = aligner(maps)  # [m, L, H, s, s] -> [m, s, s]
    weights = weights.to(per_row.device)
    return minmax_normalise(torch.einsum("nm,mxy->nxy", weights, per_row))  # -> [n, s, s]


def aligner_anchor(aligner: Aligner, captured: CapturedAttention) -> torch.Tensor:
    """The Aligner on one all-zero word map (eval mode: batch-norm statistics stay untouched).

    captured: the forward's attention (for L, H, s and the device) -> [1, s, s]."""
    shape = (1, captured.num_layers, captured.num_heads, captured.size, captured.size)
    dummy = torch.zeros(shape, device=captured.probs[0].device)  # [1, L, H, s, s]
    was_training = aligner.training
    aligner.eval()
    try:
        return aligner(dummy)
    finally:
        aligner.train(was_training)


class LavenderModule(nn.Module):
    """The trainable whole, one `nn.Module` for an optimizer or DeepSpeed: the adapter's model
    (LoRA or full) + the Aligner. `forward(batch, step, total_steps)` is one step's loss."""

    def __init__(
        self, adapter: VLMAdapter, aligner: Aligner, loss_cfg: LossConfig, map_size: int
    ) -> None:
        super().__init__()
        self.model = adapter.model
        self.aligner = aligner
        self.adapter = adapter
        self.loss_cfg = loss_cfg
        self.map_size = map_size

    def forward(self, batch: TrainBatch, step: int, total_steps: int) -> LossOutput:
        outputs = self.adapter.forward(batch.inputs, self.map_size)
        return step_loss(
            outputs, batch, self.aligner, self.adapter.tokenizer, self.loss_cfg, step, total_steps
        )


def build_optimizer(module: LavenderModule, optim_cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable VLM parameters (`optim.lr`) and the Aligner (`optim.aligner_lr`,
    default `optim.lr`)."""
    model_params = [p for p in module.model.parameters() if p.requires_grad]
    aligner_params = list(module.aligner.parameters())
    if not model_params:
        raise ValueError("the VLM has no trainable parameters (LoRA not applied, or all frozen)")
    groups = [
        {"params": model_params, "lr": optim_cfg.lr, "name": "vlm"},
        {"params": aligner_params, "lr": optim_cfg.aligner_lr or optim_cfg.lr, "name": "aligner"},
    ]
    return torch.optim.AdamW(
        groups, lr=optim_cfg.lr, betas=optim_cfg.betas, weight_decay=optim_cfg.weight_decay
    )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, optim_cfg: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over `optim.warmup_steps`, times StepLR
    `optim.step_lr_gamma ** epoch` (METHOD.md section 6). Call `.step()` after every step."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / optim_cfg.warmup_steps) if optim_cfg.warmup_steps else 1.0
        return warm * optim_cfg.step_lr_gamma ** (step // steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module, grad_clip: float
) -> float | None:
    """Backward, clip (`grad_clip` > 0) and step; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = None
    if grad_clip > 0:
        params = [p for p in module.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    return norm
