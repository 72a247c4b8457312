"""Chat-template rendering and assistant-only label masks, shared by every family adapter.

How labels are masked, for any chat template:
1. Render the conversation with the template. For every assistant turn `k`, also render the turns
   before it with the generation prompt (the assistant header) and the turns up to and including
   it; the characters between the two renders are that turn's answer (plus its end-of-turn token).
   A template for which these renders are not prefixes of each other is rejected.
2. Tokenise the rendered text (image placeholders unexpanded) with offsets: a token is an answer
   token iff its character span overlaps an answer span.
3. The processor expands image placeholders into runs of image tokens; all non-image tokens keep
   their order, so the answer flags transfer one to one onto the processor's ids. Everything else
   (system/user turns, headers, image tokens, padding) gets label -100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

IGNORE_INDEX = -100

Turns = list[dict[str, str]]
Render = Callable[[list[dict[str, Any]], bool], str]


def template_messages(conversation: Turns) -> list[dict[str, Any]]:
    """Record turns `{role, content: str}` -> HF multimodal chat messages.

    The one image of a sample goes first into the first user turn; text goes in a text part.
    """
    if not any(turn["role"] == "user" for turn in conversation):
        raise ValueError("a conversation needs a user turn to carry the image; got roles "
                         f"{[turn['role'] for turn in conversation]}")
    messages: list[dict[str, Any]] = []
    image_placed = False
    for turn in conversation:
        parts: list[dict[str, str]] = []
        if turn["role"] == "user" and not image_placed:
            parts.append({"type": "image"})
            image_placed = True
        parts.append({"type": "text", "text": turn["content"]})
        messages.append({"role": turn["role"], "content": parts})
    return messages


def assistant_spans(
    render: Render, messages: list[dict[str, Any]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the `[start, end)` character span of each assistant turn.

    `render(messages, add_generation_prompt)` is the family's chat template.
    """
    full = render(messages, False)
    spans: list[tuple[int, int]] = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:k], True)
        upto = render(messages[: k + 1], False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise ValueError(
                f"the chat template does not render turn {k} as an extension of the turns before "
                "it (with the generation prompt), so assistant tokens cannot be located"
            )
        spans.append((len(prompt), len(upto)))
    if not spans:
        raise ValueError("a training conversation needs at least one assistant turn")
    return full, spans


def answer_flags(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[bool]:
    """Per token: does its character span `[a, b)` overlap any answer span?"""
    return [any(a < end and b > start for start, end in spans) for a, b in offsets]


def transfer_labels(
    processed_ids: Sequence[int],
    text_ids: Sequence[int],
    flags: Sequence[bool],
    image_token_id: int,
) -> list[int]:
    """Labels for the processor's (image-expanded, unpadded) ids from flags on the text's ids.

    Non-image tokens must agree one to one and in order between the two sequences.
    """
    kept = [(i, t) for i, t in enumerate(processed_ids) if t != image_token_id]
    text_kept = [(t, f) for t, f in zip(text_ids, flags, strict=True) if t != image_token_id]
    if [t for _, t in kept] != [t for t, _ in text_kept]:
        raise ValueError(
            "the processor's token ids differ from the chat text's token ids outside the image "
            f"tokens ({len(kept)} vs {len(text_kept)} non-image tokens); cannot place labels"
        )
    labels = [IGNORE_INDEX] * len(processed_ids)
    for (position, token), (_, flag) in zip(kept, text_kept):
        if flag:
            labels[position] = token
    return labels
