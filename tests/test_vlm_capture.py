"""The capture attention function, the recorder, and the label-masking helpers, in isolation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lavender_ray.vlm.capture import AttentionRecorder, additive_mask, capture_attention_forward
from lavender_ray.vlm.chat import (
    IGNORE_INDEX,
    answer_flags,
    assistant_spans,
    template_messages,
    transfer_labels,
)


class Attention(nn.Module):
    """Just what the attention functions read from a transformers attention module."""

    def __init__(self, heads: int, kv_heads: int, is_causal: bool = True) -> None:
        super().__init__()
        self.num_key_value_groups = heads // kv_heads
        self.is_causal = is_causal


def qkv(b=2, heads=4, kv_heads=2, q=5, k=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, heads, q, d, generator=g),
        torch.randn(b, kv_heads, k, d, generator=g),
        torch.randn(b, kv_heads, k, d, generator=g),
    )


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_watched_module_matches_sdpa_and_records_probabilities(mask_kind):
    query, key, value = qkv()
    mask = None
    if mask_kind != "none":
        allowed = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 1, 5, 5).clone()
        allowed[1, :, :, 3:] = False  # padding keys of sample 1
        allowed[1, :, :, 0] = True
        if mask_kind == "bool":
            mask = allowed
        else:
            mask = additive_mask(allowed, 5, 5, False, torch.float32)
    plain, watched = Attention(4, 2), Attention(4, 2)
    recorder = AttentionRecorder()
    recorder.watch(watched, slot=7)
    expected, no_probs = capture_attention_forward(plain, query, key, value, mask)
    with recorder.recording() as records:
        output, probs = capture_attention_forward(watched, query, key, value, mask)
    assert no_probs is None
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    assert list(records) == [7] and records[7] is probs
    assert probs.shape == (2, 4, 5, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 5))
    assert (probs[0].triu(diagonal=1) == 0).all(), "a query attended to a later key"
    if mask_kind != "none":
        assert (probs[1, :, :, 3:] == 0).all()


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_recording_chosen_rows_gives_those_rows_of_the_probabilities(mask_kind):
    """Training records the answer rows only; they equal the same rows of every-row probabilities,
    the output is SDPA's either way, and outside a session nothing is recorded."""
    query, key, value = qkv(q=6, k=6)
    mask = None
    if mask_kind != "none":
        allowed = torch.ones(6, 6, dtype=torch.bool).tril().expand(2, 1, 6, 6).clone()
        allowed[0, :, :, 4:] = False  # padding keys of sample 0
        additive = additive_mask(allowed, 6, 6, False, torch.float32)
        mask = allowed if mask_kind == "bool" else additive
    module, recorder = Attention(4, 2), AttentionRecorder()
    recorder.watch(module, 0)
    assert capture_attention_forward(module, query, key, value, mask)[1] is None  # no session yet
    with recorder.recording() as every:
        output_all, _ = capture_attention_forward(module, query, key, value, mask)
    rows = torch.tensor([1, 3, 5])
    with recorder.recording(rows) as chosen:
        output_rows, probs = capture_attention_forward(module, query, key, value, mask)
    assert probs.shape == (2, 4, 3, 6) and chosen[0] is probs
    torch.testing.assert_close(probs, every[0][:, :, rows])
    torch.testing.assert_close(output_rows, output_all, rtol=0, atol=0)
    with torch.no_grad():  # a plain call (generation, evaluation): SDPA only
        assert capture_attention_forward(module, query, key, value, mask)[1] is None
    # with gradients (an activation-checkpoint recompute): the last session's rows, not recorded
    _, again = capture_attention_forward(module, query, key, value, mask)
    torch.testing.assert_close(again, probs)
    assert list(chosen) == [0]
    with recorder.recording(rows[:0]):  # a batch without answer rows: nothing, consistently
        assert capture_attention_forward(module, query, key, value, mask)[1].shape[2] == 0
    assert capture_attention_forward(module, query, key, value, mask)[1].shape[2] == 0


def test_non_causal_module_without_mask_attends_everywhere():
    query, key, value = qkv(q=3, k=6)
    module, recorder = Attention(4, 2, is_causal=False), AttentionRecorder()
    recorder.watch(module, 0)
    with recorder.recording():
        output, probs = capture_attention_forward(module, query, key, value, None)
    expected, _ = sdpa_attention_forward(Attention(4, 2, False), query, key, value, None)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    assert (probs > 0).all()


def test_recorder_sessions_are_fresh_and_single_use():
    recorder, probs = AttentionRecorder(), torch.ones(1)
    recorder.record(0, probs)  # outside a session (e.g. a checkpoint recompute): ignored
    with recorder.recording() as first:
        recorder.record(0, probs)
        with pytest.raises(RuntimeError, match="recorded twice"):
            recorder.record(0, probs)
        with pytest.raises(RuntimeError, match="already open"):
            with recorder.recording():
                pass
    with recorder.recording() as second:
        pass
    assert list(first) == [0] and second == {}


def test_additive_mask_forms():
    floor = torch.finfo(torch.float32).min
    causal = additive_mask(None, 2, 3, True, torch.float32)
    assert torch.equal(causal, torch.tensor([[0.0, 0.0, floor], [0.0, 0.0, 0.0]]))
    assert additive_mask(None, 2, 3, False, torch.float32) is None
    allowed = torch.tensor([[True, False]])
    converted = additive_mask(allowed, 1, 2, True, torch.float32)
    assert torch.equal(converted, torch.tensor([[0.0, floor]]))
    rows = additive_mask(None, 3, 3, True, torch.float32, rows=torch.tensor([0, 2]))
    assert torch.equal(rows, torch.tensor([[0.0, floor, floor], [0.0, 0.0, 0.0]]))


# ----------------------------------------------------------------------------- chat helpers
TEMPLATE_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is it?"},
    {"role": "assistant", "content": "A star."},
    {"role": "user", "content": "Colour?"},
    {"role": "assistant", "content": "Red."},
]


def render(messages, add_generation_prompt: bool) -> str:
    text = "".join(f"<{m['role']}>{m['content'][-1]['text']}</>" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")


def test_image_goes_into_the_first_user_turn():
    messages = template_messages(TEMPLATE_TURNS)
    assert [p["type"] for p in messages[1]["content"]] == ["image", "text"]
    assert all(p["type"] == "text" for m in messages if m is not messages[1] for p in m["content"])
    with pytest.raises(ValueError, match="needs a user turn"):
        template_messages([{"role": "assistant", "content": "hi"}])


def test_assistant_spans_cover_answers_and_end_tokens():
    text, spans = assistant_spans(render, template_messages(TEMPLATE_TURNS))
    assert [text[a:b] for a, b in spans] == ["A star.</>", "Red.</>"]


def test_assistant_spans_refuse_a_template_that_rewrites_history():
    def unstable(messages, add_generation_prompt):
        return render(messages, add_generation_prompt) + f"[{len(messages)} turns]"

    with pytest.raises(ValueError, match="does not render turn 2"):
        assistant_spans(unstable, template_messages(TEMPLATE_TURNS))


def test_answer_flags_by_overlap():
    assert answer_flags([(0, 2), (2, 5), (5, 6), (6, 9)], [(3, 6)]) == [False, True, True, False]


def test_transfer_labels_skips_expanded_image_tokens():
    image = 9
    text_ids, flags = [1, image, 2, 3, 4], [False, False, False, True, True]
    processed = [1, image, image, image, 2, 3, 4]
    assert transfer_labels(processed, text_ids, flags, image) == [
        IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3, 4
    ]  # fmt: skip
    with pytest.raises(ValueError, match="differ from the chat text"):
        transfer_labels([1, image, 2, 5, 4], text_ids, flags, image)
