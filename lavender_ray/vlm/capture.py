"""Per-layer attention capture through transformers' `AttentionInterface` (no patched model files).

A model whose text config uses `attn_implementation=CAPTURE_ATTENTION` runs every attention layer
through `capture_attention_forward`, which computes the layer's output with transformers' own
SDPA function, exactly as with `attn_implementation="sdpa"` (flash / memory-efficient kernels
included). On the layers an `AttentionRecorder` watches it also computes the probabilities
softmax(Q K^T * scale + mask) of the query rows the recording session asks for, from the same
queries and keys (so gradients reach the layer's projections), and hands them to the recorder.
Training asks for the answer rows only: the probabilities kept for backward are
`b * H * R * K` instead of the `b * H * T * K` an eager layer keeps (R answer rows, T tokens).
Masks are built by the SDPA mask function; the probabilities accept the same boolean /
additive / absent masks.

The recorder only records inside a `recording()` session, and a slot may be recorded once per
session. An adapter opens the session around one forward and closes it before returning, so a
layer recomputed by activation checkpointing (during backward, outside the session) is not
recorded again, and nothing from a previous step survives into the next. That recompute must
save the same tensors as the original forward, so a watched layer run with gradients outside a
session recomputes the probabilities of the last session's rows (and records nothing); without
gradients (generation, evaluation) it runs SDPA alone.

Shapes::

    b  batch   H  query heads   Hkv  key/value heads   q  queries   k  keys   d  head dim
    R  recorded query rows (all q unless the session names rows)
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
        self.rows: torch.Tensor | None = None  # rows of the open (or, after it, the last) session
        self.sessions = 0  # sessions opened so far

    def watch(self, module: nn.Module, slot: int) -> None:
        """Make `module` (an attention module of a CAPTURE_ATTENTION model) record under `slot`."""
        setattr(module, _RECORDER_ATTR, self)
        setattr(module, _SLOT_ATTR, slot)

    @contextmanager
    def recording(self, rows: torch.Tensor | None = None) -> Iterator[dict[int, torch.Tensor]]:
        """A fresh `{slot: probs [b, H, R, k]}` dict, filled by the forward run inside the block.

        rows: sorted query positions `[R]` to record (None: every query row)."""
        if self._records is not None:
            raise RuntimeError("AttentionRecorder.recording() is already open (nested forward?)")
        records: dict[int, torch.Tensor] = {}
        self._records, self.rows = records, rows
        self.sessions += 1
        try:
            yield records
        finally:
            self._records = None  # `rows` stays for activation-checkpoint recomputes

    @property
    def active(self) -> bool:
        return self._records is not None

    def replays(self, q_len: int) -> bool:
        """Outside a session: should a watched layer of `q_len` queries recompute the last
        session's probabilities? Yes when gradients are on (an activation-checkpoint recompute
        must save what the recorded forward saved) and that session's rows fit the layer."""
        if self.active or self.sessions == 0 or not torch.is_grad_enabled():
            return False
        return self.rows is None or self.rows.numel() == 0 or int(self.rows[-1]) < q_len

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
    mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    causal: bool,
    dtype: torch.dtype,
    rows: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Any mask the SDPA path accepts -> an additive float mask over `rows` (or None for none).

    Boolean masks are True where attention is allowed; float masks are already additive; `None`
    with `causal` means the causal mask SDPA would have applied through `is_causal`
    (bottom-right aligned when there are more keys than queries). `rows` (query positions, `[R]`)
    keeps those query rows of the mask (None: all `q_len`).
    """
    floor = torch.finfo(dtype).min
    if mask is not None:
        if rows is not None and mask.shape[-2] != 1:
            mask = mask.index_select(-2, rows.to(mask.device))  # [..., q, k] -> [..., R, k]
        if mask.dtype == torch.bool:
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            return torch.where(mask, zero, torch.full((), floor, dtype=dtype, device=mask.device))
        return mask.to(dtype)
    if not causal:
        return None
    positions = torch.arange(q_len) if rows is None else rows.cpu()  # [R]
    allowed = torch.arange(k_len)[None, :] <= positions[:, None] + (k_len - q_len)  # [R, k]
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
    """The CAPTURE_ATTENTION function: SDPA everywhere, + recorded probabilities on watched
    modules inside a recording session.

    Inputs as transformers passes them: query `[b, H, q, d]`, key/value `[b, Hkv, k, d]`.
    Returns `(output [b, q, H, d], probs [b, H, R, k] | None)`.
    """
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask,
        dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
    )  # fmt: skip
    recorder: AttentionRecorder | None = getattr(module, _RECORDER_ATTR, None)
    if recorder is None:
        return output, None
    if not (recorder.active or recorder.replays(query.shape[2])):
        return output, None  # a plain call (generation, evaluation): SDPA only
    rows = recorder.rows  # outside a session (a recompute): as the recorded forward, not recorded
    picked = query if rows is None else query.index_select(2, rows.to(query.device))  # [b,H,R,d]
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # [b, Hkv, k, d] -> H
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(picked, key.transpose(2, 3)) * scale  # [b, H, R, k]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    q_len, k_len = query.shape[2], key.shape[2]
    mask = additive_mask(attention_mask, q_len, k_len, causal and q_len > 1, scores.dtype, rows)
    if mask is not None:
        scores = scores + mask.to(scores.device)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # [b, H, R, k]
    recorder.record(getattr(module, _SLOT_ATTR), probs)
    return output, probs


AttentionInterface.register(CAPTURE_ATTENTION, capture_attention_forward)
AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)
