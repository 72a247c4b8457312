"""The row schema shared by every stage: readers, SD extraction, the trainer and evaluation.

A **record** is one training sample, one image::

    id            string   unique within its source
    source        string   name of the source it came from
    image         binary   encoded image bytes (PNG/JPEG/...), decoded as late as possible
    messages      string   JSON list of {"role": "system"|"user"|"assistant", "content": str};
                           the image belongs to the first user turn
    target_text   string   the text SD attends with (the answer/caption, never the question)

The SD stage adds the **target** columns (METHOD.md section 2, step 6)::

    sd_words       list<string>        word keys, unique, in order of first occurrence
    sd_spans       list<list<int32>>   [start, end) character span of each word's first occurrence
    sd_maps        binary              float16 [n_words, sd_map_size, sd_map_size] in [0, 1]
    sd_map_size    int32
    sd_words_cut   int32               words dropped by CLIP's 77-token window
    sd_config_hash string              hash of the extraction config (see `config.config_hash`)

A **benchmark row** is one evaluation question (`BENCHMARK_SCHEMA`, built by `make_benchmark_row`;
read by `lavender_ray.pipeline.benchmarks.read_benchmark`)::

    id         string   the benchmark's own row id (VLMEvalKit `index`), unique within the file
    image      binary   encoded image bytes
    question   string   the question text (a benchmark `hint`, if any, stays in `extras`)
    options    string   JSON object {"A": text, "B": text, ...} in letter order; "{}" if open-ended
    answers    string   JSON list of accepted answers (strings): ["B"] for multiple choice, all
                        annotator answers for VQA-style benchmarks
    category   string   the benchmark's category ("" when it has none)
    extras     string   JSON object of every other column (hint, split, l2-category, ...)

A **reject** is a record a stage could not use: `REJECT_SCHEMA`. Nothing is dropped silently.

Pure module: pyarrow and numpy only (no Ray, torch, diffusers or transformers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("image", pa.binary()),
        ("messages", pa.string()),
        ("target_text", pa.string()),
    ]
)

TARGET_FIELDS = [
    ("sd_words", pa.list_(pa.string())),
    ("sd_spans", pa.list_(pa.list_(pa.int32()))),
    ("sd_maps", pa.binary()),
    ("sd_map_size", pa.int32()),
    ("sd_words_cut", pa.int32()),
    ("sd_config_hash", pa.string()),
]
TARGET_SCHEMA = pa.schema(list(RECORD_SCHEMA) + [pa.field(n, t) for n, t in TARGET_FIELDS])

REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

BENCHMARK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("question", pa.string()),
        ("options", pa.string()),
        ("answers", pa.string()),
        ("category", pa.string()),
        ("extras", pa.string()),
    ]
)

ROLES = ("system", "user", "assistant")
WORD_CHAR = re.compile(r"[^\W_]")  # a letter or digit: `words`' word rule, one character


@dataclass(frozen=True)
class Reject:
    """Why a record (or raw row) could not be used. `reason` is a short stable code."""

    id: str
    source: str
    stage: str
    reason: str
    detail: str = ""

    def to_row(self) -> dict[str, str]:
        return {
            "id": self.id,
            "source": self.source,
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail[:500],
        }


def printable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (an id or path from a JSON `\\ud800` escape)
    becomes its escape, so ids and details about broken text can themselves be written."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class RecordError(ValueError):
    """A raw row that cannot become a record; `reason` is the reject code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def make_record(
    *,
    id: str,
    source: str,
    image: bytes | None,
    messages: list[dict[str, str]],
    target_text: str | None = None,
    max_text_chars: int = 2000,
) -> dict[str, Any]:
    """Validate and build one record row. `target_text` defaults to the assistant turns joined.

    Raises `RecordError` with a reject code: missing_image, bad_messages, empty_text,
    text_too_long.
    """
    if not image:
        raise RecordError("missing_image", "no image bytes")
    check_messages(messages)
    if target_text is None:
        target_text = " ".join(m["content"] for m in messages if m["role"] == "assistant")
    target_text = target_text.strip()
    if not target_text:
        raise RecordError("empty_text", "target text is empty or whitespace")
    longest = max([len(target_text)] + [len(m["content"]) for m in messages])
    if longest > max_text_chars:
        raise RecordError("text_too_long", f"{longest} characters > {max_text_chars}")
    return {
        "id": str(id),
        "source": source,
        "image": bytes(image),
        "messages": json.dumps(messages, ensure_ascii=False),
        "target_text": target_text,
    }


def make_benchmark_row(
    *,
    id: str,
    image: bytes | None,
    question: str | None,
    options: dict[str, str],
    answers: list[str],
    category: str = "",
    extras: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate and build one benchmark row (`BENCHMARK_SCHEMA`).

    Raises `RecordError` with a reject code: missing_image, empty_question, missing_answer,
    bad_options (a key that is not one capital letter, or an empty option text).
    """
    if not image:
        raise RecordError("missing_image", "no image bytes")
    if not question or not question.strip():
        raise RecordError("empty_question", "question is empty or missing")
    for key, text in options.items():
        if len(key) != 1 or not key.isupper() or not str(text).strip():
            raise RecordError(
                "bad_options", f"option {key!r}={text!r:.80}: keys are A-Z, texts non-empty"
            )
    answers = [str(a).strip() for a in answers if str(a).strip()]
    if not answers:
        raise RecordError("missing_answer", "no answer to score against")
    return {
        "id": str(id),
        "image": bytes(image),
        "question": question.strip(),
        "options": json.dumps(dict(sorted(options.items())), ensure_ascii=False),
        "answers": json.dumps(answers, ensure_ascii=False),
        "category": category or "",
        "extras": json.dumps(extras or {}, ensure_ascii=False, default=str),
    }


def check_messages(messages: Any) -> None:
    """A conversation the chat templates of every shipped family render and the trainer can
    label, or `RecordError` naming the turn:

        bad_messages      not a non-empty list of {"role", "content": str} objects
        bad_encoding      a content with a lone surrogate (`\\ud800` in JSON: not Unicode)
        bad_conversation  a role other than system/user/assistant; a system turn that is not
                          the first, or two; a first non-system turn that is not the user's
                          (the image goes into the first user turn); two turns of one role in
                          a row (user and assistant alternate); a last turn that is not an
                          answer
        empty_question    a user turn after the first without text (the first may hold only
                          the image)
        empty_text        an answer without a letter or digit (empty, whitespace, "...")
    """
    if not isinstance(messages, list) or not messages:
        raise RecordError("bad_messages", "messages must be a non-empty list of turns")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError("bad_messages", f"turn {i} is not an object: {m!r:.80}")
        if not isinstance(m.get("content"), str):
            content = m.get("content")
            raise RecordError(
                "bad_messages", f"turn {i}: content must be a string, got {type(content).__name__}"
            )
        _check_unicode(m["content"], f"turn {i}")
        if m.get("role") not in ROLES:
            raise RecordError(
                "bad_conversation", f"turn {i}: role {m.get('role')!r:.40} is not one of {ROLES}"
            )
    _check_order([m["role"] for m in messages])
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not WORD_CHAR.search(m["content"]):
            raise RecordError(
                "empty_text", f"turn {i} (assistant): no letter or digit in {m['content']!r:.80}"
            )
        if m["role"] == "user" and i != first_user and not m["content"].strip():
            raise RecordError("empty_question", f"turn {i} (user) is empty")


def _check_order(roles: list[str]) -> None:
    """An optional leading system turn, then user/assistant alternating, from user to
    assistant (`check_messages`)."""
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            raise RecordError("bad_conversation", f"turn {i}: a system turn after turn 0")
    turns = roles[1:] if roles[0] == "system" else roles
    offset = len(roles) - len(turns)
    if not turns:
        raise RecordError("bad_conversation", "only a system turn: no user turn, no answer")
    if turns[0] != "user":
        raise RecordError(
            "bad_conversation", f"turn {offset}: the conversation starts with an {turns[0]} turn, "
            "not the user's (which carries the image)",
        )
    for k in range(1, len(turns)):
        if turns[k] == turns[k - 1]:
            raise RecordError(
                "bad_conversation", f"turns {offset + k - 1} and {offset + k} are both "
                f"{turns[k]} turns (user and assistant alternate)",
            )
    if turns[-1] != "assistant":
        raise RecordError(
            "bad_conversation", f"turn {len(roles) - 1}: the last user turn has no answer"
        )


def _check_unicode(text: str, where: str) -> None:
    """Text Arrow can store: no lone surrogate (JSON's `\\ud800` escape parses to one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RecordError(
            "bad_encoding",
            f"{where}: lone surrogate {text[err.start]!r} at character {err.start} "
            "(not valid Unicode)",
        ) from None


def parse_messages(text: str) -> list[dict[str, str]]:
    """The `messages` column back to a list of turns."""
    return json.loads(text)


def encode_maps(maps: np.ndarray) -> bytes:
    """float [n, s, s] in [0, 1] -> float16 bytes for the `sd_maps` column."""
    return np.ascontiguousarray(maps, dtype=np.float16).tobytes()


def decode_maps(blob: bytes, size: int) -> np.ndarray:
    """`sd_maps` bytes -> float32 [n, size, size]."""
    flat = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
    return flat.reshape(-1, size, size)
