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
- ``flickr30k``: one row per caption, as `readers.flickr30k_rows` unpacks Karpathy's
  `dataset_flickr30k.json`: `{"filename", "sentence_index", "caption", "split"}`. The user turn is
  the authors' caption prompt (`CAPTION_PROMPT`), the answer and SD target text the caption.
- ``laion``: img2dataset output, a WebDataset sample `{"__key__", "jpg"|"png"|"webp", "txt",
  "json"}` (bytes) or a Parquet row `{"key", "jpg"|"image", "txt"|"caption", "status", ...}`;
  caption prompt as for Flickr30k, the caption is the answer and SD target text.
- ``rlaif_v``: RLAIF-V's Parquet row `{"ds_name", "image": {"bytes", "path"}, "question",
  "chosen", "rejected", "origin_dataset", "origin_split", "idx", "image_path"}`: the question is
  the user turn, `chosen` the answer and SD target text. `rejected` is never read.
- ``ocrvqa``: the_cauldron's row `{"images": [{"bytes", "path"}], "texts": [{"user",
  "assistant", "source"}, ...]}`: one user/assistant turn pair per entry of `texts`.
  **SD target text of a multi-turn sample**: every answer, in turn order, joined by one space
  (`make_record`'s default), kept whole. CLIP's text encoder sees only its first 77 tokens; the
  SD stage drops the words past that window and counts them per sample in `sd_words_cut` with
  the real CLIP tokenizer (METHOD.md 2.5), so no token count is approximated here.

Each format is a `RowFormat` in `FORMATS`: `row_id(row, source)` gives the id the record will
have, computed from the raw row without reading images (sampling decides on it before any image
is read), and never raises; `convert(row, ...)` returns a record dict or raises
`RecordError(reason, detail)`, which the caller turns into a `Reject`. Image paths are read
through the `read_bytes` callable given (`storage.read_file`: pyarrow filesystems). Converters
are pure: no Ray.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lavender_ray.schema import RecordError, check_messages, make_record, parse_messages

IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
               "system": "system"}

CAPTION_PROMPT = "Describe the image in a single sentence as a caption."  # the authors' prompt
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")  # img2dataset's encode formats

ReadBytes = Callable[[str], bytes]


class Converter(Protocol):
    def __call__(
        self, row: dict[str, Any], *, source: str, image_root: str | None,
        read_bytes: ReadBytes, max_text_chars: int,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RowFormat:
    """How the raw rows of one `SourceConfig.format` become records (see the module docstring)."""

    row_id: Callable[[dict[str, Any], str], str]
    convert: Converter


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


def unwrap_text_row(raw: dict[str, Any]) -> dict[str, Any]:
    """A `read_text` row (`{"text": JSONL line}`) -> the parsed object; other rows unchanged.

    Raises RecordError('bad_json') for a line that is not a JSON object."""
    if set(raw) == {"text"}:
        return parse_json_text(raw["text"])
    return raw


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


def content_row_id(row: dict[str, Any], source: str) -> str:
    """The row's `id`, else a hash of the whole row (messages and LLaVA rows)."""
    return row_id(row, source, json.dumps(row, sort_keys=True, default=str))


def messages_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """A TRL / LLaMA-Factory `messages` row -> record."""
    rid = content_row_id(row, source)
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
    check_messages(messages)  # text problems first: no image is read for a row rejected anyway
    image = resolve_image(images[0], image_root, read_bytes)
    return make_record(id=rid, source=source, image=image, messages=messages,
                       max_text_chars=max_text_chars)


def llava_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """A LLaVA `conversations` row -> record."""
    rid = content_row_id(row, source)
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
    check_messages(messages)
    image = resolve_image(row["image"], image_root, read_bytes)
    return make_record(id=rid, source=source, image=image, messages=messages,
                       max_text_chars=max_text_chars)


def records_row_id(row: dict[str, Any], source: str) -> str:
    """The record's `id`, else a hash of its target text."""
    return row_id(row, source, str(row.get("target_text")))


def records_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """A row already in the record schema -> re-validated record."""
    rid = records_row_id(row, source)
    try:
        messages = parse_messages(row.get("messages") or "")
    except (json.JSONDecodeError, TypeError) as err:
        raise RecordError("bad_messages", f"{rid}: {err}") from None
    check_messages(messages)
    image = resolve_image(row.get("image"), image_root, read_bytes)
    return make_record(id=rid, source=row.get("source") or source, image=image,
                       messages=messages, target_text=row.get("target_text"),
                       max_text_chars=max_text_chars)


# ---------------------------------------------------------------------------------- flickr30k
def flickr30k_row_id(row: dict[str, Any], source: str) -> str:
    """`<filename>#<sentence index>`: one id per caption (`1000092795.jpg#0` .. `#4`);
    `imgid<imgid>#<k>` for an entry without a file name."""
    name = row.get("filename") or f"imgid{row.get('imgid')}"
    return f"{name}#{row.get('sentence_index')}"


def caption_messages(caption: str) -> list[dict[str, str]]:
    """The authors' caption conversation: their prompt, then the caption."""
    return [{"role": "user", "content": CAPTION_PROMPT}, {"role": "assistant", "content": caption}]


def flickr30k_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """One Flickr30k caption row -> record (caption = answer = SD target text)."""
    if not row.get("filename"):
        raise RecordError("missing_image", "Karpathy entry without 'filename'")
    caption = row.get("caption")
    if not isinstance(caption, str):
        raise RecordError("empty_text", f"caption {caption!r:.80} is not text")
    messages = caption_messages(caption)
    check_messages(messages)
    image = resolve_image(row["filename"], image_root, read_bytes)
    return make_record(id=flickr30k_row_id(row, source), source=source, image=image,
                       messages=messages, max_text_chars=max_text_chars)


# -------------------------------------------------------------------------------------- laion
def laion_row_id(row: dict[str, Any], source: str) -> str:
    """img2dataset's sample key (`__key__` in a tar, `key` in Parquet), else a content hash."""
    key = row.get("__key__") if row.get("__key__") not in (None, "") else row.get("key")
    if key not in (None, ""):
        return str(key)
    return row_id({}, source, str(row.get("url") or row.get("txt") or row.get("caption")))


def _text_field(value: Any, name: str) -> str | None:
    """A WebDataset text member (bytes) or a Parquet string -> str (None when absent)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise RecordError("bad_text", f"{name} is not UTF-8: {err}") from None
    return value if isinstance(value, str) else None


def laion_caption(row: dict[str, Any]) -> str:
    """The sample's caption: `.txt` member / `txt` or `caption` column, else the `.json`'s."""
    for name in ("txt", "caption", "text"):
        text = _text_field(row.get(name), name)
        if text is not None and text.strip():
            return text
    meta = _text_field(row.get("json"), "json")
    if meta:
        try:
            caption = json.loads(meta).get("caption")
        except (json.JSONDecodeError, AttributeError) as err:
            raise RecordError("bad_json", f"sample .json: {err}") from None
        if isinstance(caption, str) and caption.strip():
            return caption
    raise RecordError("empty_text", "no caption (.txt / txt / caption)")


def laion_image(row: dict[str, Any]) -> bytes:
    """The encoded image of an img2dataset sample; failed downloads name their error."""
    for name in (*IMAGE_SUFFIXES, "image"):
        value = row.get(name)
        if isinstance(value, dict):
            value = value.get("bytes")
        if value:
            return bytes(value)
    status = row.get("status")
    detail = f"status {status!r}: {row.get('error_message')}" if status else "no image member"
    raise RecordError("missing_image", detail)


def laion_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """One img2dataset sample (tar or Parquet) -> record (caption = answer = SD target text)."""
    caption = laion_caption(row)
    image = laion_image(row)
    return make_record(id=laion_row_id(row, source), source=source, image=image,
                       messages=caption_messages(caption), max_text_chars=max_text_chars)


# ------------------------------------------------------------------------------------ rlaif_v
def rlaif_v_row_id(row: dict[str, Any], source: str) -> str:
    """`<ds_name>/<idx>` (idx repeats across RLAIF-V's sub-sets), else a content hash."""
    if row.get("idx") not in (None, ""):
        return f"{row.get('ds_name') or source}/{row['idx']}"
    return row_id({}, source, f"{row.get('question')}\n{row.get('chosen')}")


def rlaif_v_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """One RLAIF-V preference row -> record: question, then the chosen answer (SD target).
    The rejected answer is never read."""
    question = row.get("question")
    if not isinstance(question, str) or not _text_of(question):
        raise RecordError("empty_question", f"question {question!r:.80} is empty")
    chosen = row.get("chosen")
    if not isinstance(chosen, str):
        raise RecordError("empty_text", f"chosen answer {chosen!r:.80} is not text")
    messages = [{"role": "user", "content": _text_of(question)},
                {"role": "assistant", "content": chosen.strip()}]
    check_messages(messages)
    image = resolve_image(row.get("image") or row.get("image_path"), image_root, read_bytes)
    return make_record(id=rlaif_v_row_id(row, source), source=source, image=image,
                       messages=messages, max_text_chars=max_text_chars)


# ------------------------------------------------------------------------------------- ocrvqa
def _image_digest(images: Any) -> str:
    """sha1 of the first image's bytes (or its path), for ids of rows that have none."""
    first = images[0] if isinstance(images, list) and images else images
    if isinstance(first, dict):
        first = first.get("bytes") or first.get("path")
    blob = first if isinstance(first, (bytes, bytearray)) else str(first).encode()
    return hashlib.sha1(blob).hexdigest()


def ocrvqa_row_id(row: dict[str, Any], source: str) -> str:
    """the_cauldron rows have no id: a hash of the image bytes and the turns."""
    texts = json.dumps(row.get("texts"), sort_keys=True, default=str)
    return row_id({}, source, f"{_image_digest(row.get('images'))}\n{texts}")


def cauldron_messages(texts: Any) -> list[dict[str, str]]:
    """the_cauldron `texts` [{user, assistant, source}, ...] -> alternating turns."""
    if not isinstance(texts, list) or not texts:
        raise RecordError("bad_messages", "'texts' must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(texts):
        if not isinstance(turn, dict):
            raise RecordError("bad_messages", f"turn {i} is not an object: {turn!r:.80}")
        user, answer = turn.get("user"), turn.get("assistant")
        if not isinstance(user, str) or not _text_of(user):
            raise RecordError("empty_question", f"turn {i}: empty 'user' text")
        if not isinstance(answer, str) or not answer.strip():
            raise RecordError("empty_text", f"turn {i}: empty 'assistant' text")
        messages += [{"role": "user", "content": _text_of(user)},
                     {"role": "assistant", "content": answer.strip()}]
    return messages


def ocrvqa_row(
    row: dict[str, Any], *, source: str, image_root: str | None, read_bytes: ReadBytes,
    max_text_chars: int,
) -> dict[str, Any]:
    """One the_cauldron row -> multi-turn record; SD target = all answers joined (module doc)."""
    images = row.get("images")
    if not isinstance(images, list) or not images:
        raise RecordError("missing_image", "'images' is empty")
    if len(images) > 1:
        raise RecordError("multiple_images", f"{len(images)} images; one per sample is supported")
    messages = cauldron_messages(row.get("texts"))
    image = resolve_image(images[0], image_root, read_bytes)
    return make_record(id=ocrvqa_row_id(row, source), source=source, image=image,
                       messages=messages, max_text_chars=max_text_chars)


# ----------------------------------------------------------------------------------- registry
FORMATS: dict[str, RowFormat] = {
    "messages": RowFormat(content_row_id, messages_row),
    "llava": RowFormat(content_row_id, llava_row),
    "records": RowFormat(records_row_id, records_row),
    "synthetic": RowFormat(records_row_id, records_row),
    "flickr30k": RowFormat(flickr30k_row_id, flickr30k_row),
    "laion": RowFormat(laion_row_id, laion_row),
    "rlaif_v": RowFormat(rlaif_v_row_id, rlaif_v_row),
    "ocrvqa": RowFormat(ocrvqa_row_id, ocrvqa_row),
}
