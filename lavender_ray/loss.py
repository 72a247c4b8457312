"""The Lavender objective (METHOD.md sections 1 and 4). Pure functions.

    L_total = alpha_t * L_lm + lambda_t * L_att
    L_att   = mean over matched words w of MSE(Aligner(A_vlm[w]), A_sd[w])   (0 if none match)

Schedules (step t counts from 0, T = total steps of the run):

    alpha_t  = loss.pretrain_alpha                       for t <  N = loss.aligner_pretrain_steps
             = 1                                         for t >= N  (alpha_schedule "step")
             = pretrain_alpha + (1 - pretrain_alpha) * min(1, (t - N + 1) / alpha_ramp_steps)
                                                         for t >= N  (alpha_schedule "linear")
    lambda_t = lambda * exp(-loss.lambda_decay * t / T)

When `lambda_t == 0` the alignment term is left out of the total (so the total is exactly
`alpha_t * L_lm`, whatever L_att is); L_att is still reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lavender_ray.config import LossConfig

METRIC_KEYS = ("loss/lm", "loss/att", "loss/total", "align/matched_words")


@dataclass
class LossOutput:
    """The scalar to back-propagate and the per-step metrics (python floats)."""

    total: torch.Tensor
    metrics: dict[str, float]


def alpha_at(step: int, cfg: LossConfig) -> float:
    """alpha_t: the LM-loss weight at `step` (Aligner pre-training, then a jump or a ramp to 1)."""
    pretrain = cfg.aligner_pretrain_steps
    if step < pretrain:
        return cfg.pretrain_alpha
    if cfg.alpha_schedule == "step":
        return 1.0
    progress = min(1.0, (step - pretrain + 1) / cfg.alpha_ramp_steps)
    return cfg.pretrain_alpha + (1.0 - cfg.pretrain_alpha) * progress


def lambda_at(step: int, total_steps: int, cfg: LossConfig) -> float:
    """lambda_t = lambda * exp(-k t / T) (k = loss.lambda_decay; k = 0 keeps lambda constant)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if cfg.lambda_decay == 0:
        return cfg.lambda_
    return cfg.lambda_ * math.exp(-cfg.lambda_decay * step / total_steps)


def attention_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over words of the per-word MSE; exactly 0 (no NaN) when there are no words.

    predicted, target: [n, s, s] (n may be 0).
    """
    if predicted.shape != target.shape:
        raise ValueError(
            f"aligner output {tuple(predicted.shape)} and SD target {tuple(target.shape)} differ"
        )
    if predicted.shape[0] == 0:
        return predicted.new_zeros(())
    per_word = (predicted - target.to(predicted.dtype)).pow(2).flatten(1).mean(dim=1)  # -> [n]
    return per_word.mean()


def lavender_loss(
    lm_loss: torch.Tensor,
    att_loss: torch.Tensor,
    num_matched: int,
    alpha: float,
    lambda_: float,
) -> LossOutput:
    """`alpha * lm_loss + lambda_ * att_loss` and the metrics `loss/lm`, `loss/att`,
    `loss/total`, `align/matched_words` (+ `schedule/alpha`, `schedule/lambda`)."""
    total = lm_loss * alpha if alpha != 1.0 else lm_loss
    if lambda_ != 0:
        total = total + lambda_ * att_loss
    metrics = {
        "loss/lm": float(lm_loss.detach()),
        "loss/att": float(att_loss.detach()),
        "loss/total": float(total.detach()),
        "align/matched_words": float(num_matched),
        "schedule/alpha": float(alpha),
        "schedule/lambda": float(lambda_),
    }
    return LossOutput(total, metrics)
