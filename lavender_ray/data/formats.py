"""Pure converters from the formats users bring to project records (`lavender_ray.schema`).

- ``messages`` (TRL / LLaMA-Factory style)::

      {"id": "...", "messages": [{"role": "user", "content": "<image>What is ...?"},
                                 {"role": "assistant", "content": "..."}],
       "images": ["relative/or/absolute.jpg"]}

  `content` may also be a list of parts (`[{"type": "image"}, {"type": "text", "text": ...}]`);
  `images` entries may be paths, raw bytes or `{"bytes": ..., "path": ...}` (Hugging Face
  datasets' image layout in Parquet).
- ``llava`` (LLaVA instruction JSON)::

      {"id": "...", "image": "coco/train2017/x.jpg",
       "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}

- ``records``: rows already in the record schema (re-validated).

Each converter returns a record dict or raises `RecordError(reason, detail)`; the caller turns
that into a `Reject`. Image paths are read through `read_bytes` (pyarrow filesystems).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from lavender_ray.schema import RecordError, make_record, parse_messages

IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
               "system": "system"}

ReadBytes = Callable[[str], bytes]


def row_id(row: dict[str, Any], source: str, fallback_text: str) -> str:
    """The row's own `id`, else a stable content hash."""
    if row.get("id") not in (None, ""):
        return str(row["id"])
    return f"{source}-{hashlib.sha1(fallback_text.encode()).hexdigest()[:12]}"


def parse_json_text(text: str) -> dict[str, Any]:
    """One JSON object (a JSONL line or an array entry) -> dict, or RecordError('bad_json')."""
    try:
        row = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise RecordError("bad_json", str(err)) from None
    if not isinstance(row, dict):
        raise RecordError("bad_json", f"expected an object, got {type(row).__name__}")
    return row


def _text_of(content: Any) -> str:
    """Message content (str or list of typed parts) -> its text without image placeholders."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        text = "\n".join(p for p in parts if p)
    else:
        raise RecordError("bad_messages", f"content must be a string or a list of parts, got {content!r:.80}")
    return IMAGE_PLACEHOLDER.sub("", text).strip()


def resolve_image(image: Any, image_root: str | None, read_bytes: ReadBytes) -> bytes:
    """A path / bytes / {"bytes", "path"} image reference -> encoded image bytes."""
    if isinstance(image, dict):
        if image.get("bytes"):
            return bytes(image["bytes"])
        image = image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if not isinstance(image, str) or not image:
        raise RecordError("missing_image", f"no image reference (got {image!r:.80})")
    path = image
    if image_root and "://" not in image and not image.startswith("/"):
        path = f"{image_root.rstrip('/')}/{image}"
    try:
        return read_bytes(path)
    except (FileNotFoundError, OSError) as err:
        raise RecordError("missing_image", f"{path}: {err}") from None


def messages_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """A TRL / LLaMA-Factory `messages` row -> record."""
    rid = row_id(row, source, json.dumps(row, sort_keys=True, default=str))
    raw_messages = row.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RecordError("bad_messages", f"{rid}: 'messages' must be a non-empty list")
    messages = []
    for turn in raw_messages:
        if not isinstance(turn, dict):
            raise RecordError("bad_messages", f"{rid}: turn {turn!r:.80} is not an object")
        messages.append({"role": turn.get("role"), "content": _text_of(turn.get("content"))})
    images = row.get("images")
    if images is None and row.get("image") is not None:
        images = [row["image"]]
    if not images:
        raise RecordError("missing_image", f"{rid}: no 'images'")
    if len(images) > 1:
        raise RecordError("multiple_images", f"{rid}: {len(images)} images; one per sample is supported")
    image = resolve_image(images[0], image_root, read_bytes)
    return make_record(id=rid, source=source, image=image, messages=messages,
                       max_text_chars=max_text_chars)


def llava_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """A LLaVA `conversations` row -> record."""
    rid = row_id(row, source, json.dumps(row, sort_keys=True, default=str))
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("bad_messages", f"{rid}: 'conversations' must be a non-empty list")
    messages = []
    for turn in turns:
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in LLAVA_ROLES:
            raise RecordError("bad_messages", f"{rid}: speaker {speaker!r} not in {sorted(LLAVA_ROLES)}")
        messages.append({"role": LLAVA_ROLES[speaker], "content": _text_of(turn.get("value"))})
    if row.get("image") in (None, ""):
        raise RecordError("missing_image", f"{rid}: text-only sample (no 'image')")
    image = resolve_image(row["image"], image_root, read_bytes)
    return make_record(id=rid, source=source, image=image, messages=messages,
                       max_text_chars=max_text_chars)


def records_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """A row already in the record schema -> re-validated record."""
    rid = row_id(row, source, str(row.get("target_text")))
    try:
        messages = parse_messages(row.get("messages") or "")
    except (json.JSONDecodeError, TypeError) as err:
        raise RecordError("bad_messages", f"{rid}: {err}") from None
    image = resolve_image(row.get("image"), image_root, read_bytes)
    return make_record(id=rid, source=row.get("source") or source, image=image,
                       messages=messages, target_text=row.get("target_text"),
                       max_text_chars=max_text_chars)


CONVERTERS = {"messages": messages_row, "llava": llava_row, "records": records_row,
              "synthetic": records_row}


def read_bytes_pyarrow(path: str) -> bytes:
    """Read a whole file from a local path or a pyarrow filesystem URI."""
    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
    else:
        fs, inner = pafs.LocalFileSystem(), path
    with fs.open_input_stream(inner) as stream:
        return stream.read()
