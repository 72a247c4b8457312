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
    """A conversation is a non-empty list of {role, content} with at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise RecordError("bad_messages", "messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RecordError("bad_messages", f"turn {i}: role must be one of {ROLES}, got {m!r}")
        if not isinstance(m.get("content"), str):
            raise RecordError("bad_messages", f"turn {i}: content must be a string")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise RecordError("empty_text", "no non-empty assistant turn")


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
