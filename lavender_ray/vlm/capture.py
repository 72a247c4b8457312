"""Per-layer attention capture through transformers' `AttentionInterface` (no patched model files).

A model whose text config uses `attn_implementation=CAPTURE_ATTENTION` runs every attention layer
through `capture_attention_forward`: layers an `AttentionRecorder` watches compute eager
probabilities (softmax(Q K^T * scale + mask)) and hand them to the recorder; every other layer runs
transformers' own SDPA function, exactly as with `attn_implementation="sdpa"`. Masks are built by
the SDPA mask function, so the eager path accepts the same boolean / additive / absent masks.

The recorder only records inside a `recording()` session, and a slot may be recorded once per
session. An adapter opens the session around one forward and closes it before returning, so a
layer recomputed by activation checkpointing (during backward, outside the session) is not
recorded again, and nothing from a previous step survives into the next.

Shapes::

    b  batch   H  query heads   Hkv  key/value heads   q  queries   k  keys   d  head dim
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CAPTURE_ATTENTION = "lavender_capture"
_RECORDER_ATTR = "lavender_recorder"
_SLOT_ATTR = "lavender_slot"


class AttentionRecorder:
    """Collects the probabilities of the attention modules it watches during one forward."""

    def __init__(self) -> None:
        self._records: dict[int, torch.Tensor] | None = None

    def watch(self, module: nn.Module, slot: int) -> None:
        """Make `module` (an attention module of a CAPTURE_ATTENTION model) record under `slot`."""
        setattr(module, _RECORDER_ATTR, self)
        setattr(module, _SLOT_ATTR, slot)

    @contextmanager
    def recording(self) -> Iterator[dict[int, torch.Tensor]]:
        """A fresh `{slot: probs [b, H, q, k]}` dict, filled by the forward run inside the block."""
        if self._records is not None:
            raise RuntimeError("AttentionRecorder.recording() is already open (nested forward?)")
        records: dict[int, torch.Tensor] = {}
        self._records = records
        try:
            yield records
        finally:
            self._records = None

    def record(self, slot: int, probs: torch.Tensor) -> None:
        if self._records is None:
            return  # outside a session: an activation-checkpoint recompute, or a plain model call
        if slot in self._records:
            raise RuntimeError(
                f"attention slot {slot} recorded twice in one forward; a layer ran twice inside "
                "one recording session"
            )
        self._records[slot] = probs


def additive_mask(
    mask: torch.Tensor | None, q_len: int, k_len: int, causal: bool, dtype: torch.dtype
) -> torch.Tensor | None:
    """Any mask the SDPA path accepts -> an additive float mask (or None for no masking).

    Boolean masks are True where attention is allowed; float masks are already additive; `None`
    with `causal` means the causal mask SDPA would have applied through `is_causal`
    (bottom-right aligned when there are more keys than queries).
    """
    floor = torch.finfo(dtype).min
    if mask is not None:
        if mask.dtype == torch.bool:
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            return torch.where(mask, zero, torch.full((), floor, dtype=dtype, device=mask.device))
        return mask.to(dtype)
    if not causal:
        return None
    allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(diagonal=k_len - q_len)  # [q, k]
    return torch.where(allowed, 0.0, floor).to(dtype)


def capture_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CAPTURE_ATTENTION function: eager + record on watched modules, SDPA elsewhere.

    Inputs as transformers passes them: query `[b, H, q, d]`, key/value `[b, Hkv, k, d]`.
    Returns `(output [b, q, H, d], probs [b, H, q, k] | None)`.
    """
    recorder: AttentionRecorder | None = getattr(module, _RECORDER_ATTR, None)
    if recorder is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask,
            dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
        )  # fmt: skip
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # [b, Hkv, k, d] -> [b, H, k, d]
    value = value.repeat_interleave(groups, dim=1)  # [b, Hkv, k, d] -> [b, H, k, d]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale  # [b, H, q, k]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    q_len, k_len = query.shape[2], key.shape[2]
    mask = additive_mask(attention_mask, q_len, k_len, causal and q_len > 1, scores.dtype)
    if mask is not None:
        scores = scores + mask.to(scores.device)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # [b, H, q, k]
    recorder.record(getattr(module, _SLOT_ATTR), probs)
    dropped = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(dropped, value)  # [b, H, q, d]
    output = output.transpose(1, 2).contiguous()  # [b, H, q, d] -> [b, q, H, d]
    return output, probs


AttentionInterface.register(CAPTURE_ATTENTION, capture_attention_forward)
AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)
