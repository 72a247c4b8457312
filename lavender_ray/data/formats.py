"""Pure converters from the formats users bring to project records (`lavender_ray.schema`).

- ``messages`` (TRL / LLaMA-Factory style)::

      {"id": "...", "messages": [{"role": "user", "content": "<image>What is ...?"},
                                 {"role": "assistant", "content": "..."}],
       "images": ["relative/or/absolute.jpg"]}

  `content` may also be a list of parts (`[{"type": "image"}, {"type": "text", "text": ...}]`);
  `images` is a list of one image: a path, raw bytes or `{"bytes": ..., "path": ...}` (Hugging
  Face datasets' image layout in Parquet); a row may give one `image` instead.
- ``llava`` (LLaVA instruction JSON)::

      {"id": "...", "image": "coco/train2017/x.jpg",
       "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}

  `image` may also be a list of one (LLaVA-OneVision's layout).

- ``records``: rows already in the record schema (re-validated; `source` becomes the configured
  source's name, as for every format).
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

**Images.** A converter gets its row's image through an `ImageLoader`
(`lavender_ray.data.image_refs`: how references resolve and which are rejected).

**Conversations** are validated against what the shipped chat templates need
(`schema.check_messages`): an optional leading system turn, then user and assistant alternating
from the user's turn (which carries the image) to an answer, every answer with a letter or digit,
no turn longer than `data.max_text_chars`.

**Reject reasons** (stable codes; the detail names the field, the turn, the path or the URL):

    bad_json          a line / array entry that is not JSON, or not an object
    bad_encoding      text that is not UTF-8 (a line, a caption file), a lone surrogate
    bad_messages      a conversation field of the wrong type (not a list, a turn not an object,
                      a content / question / caption that is not text)
    bad_conversation  roles or turn order the templates cannot render (`check_messages`)
    empty_question    a user turn (a question) without text where one is needed
    empty_text        an answer, caption or target text without a letter or digit
    text_too_long     a turn or target text longer than data.max_text_chars
    missing_image     no image in the row, or the file does not exist
    bad_image_field   an image field of the wrong type (`images: "a.png"`, a number, an object
                      without bytes or path, a data: URI)
    multiple_images   more than one image (the count is in the detail)
    remote_image      a web URL
    unreadable_image  the path is a folder, a device, not permitted, or its read failed
    empty_image, corrupt_image, truncated_image, zero_size_image, image_too_small,
    extreme_aspect_ratio, image_too_large
                      the file's bytes (`lavender_ray.images`)

Each format is a `RowFormat` in `FORMATS`: `row_id(row, source)` gives the id the record will
have, computed from the raw row without reading images (sampling decides on it before any image
is read), and never raises; `convert(row, ...)` returns a record dict or raises
`RecordError(reason, detail)`, which the caller turns into a `Reject`. Converters are pure:
no Ray.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lavender_ray.data.image_refs import ImageLoader
from lavender_ray.schema import (
    WORD_CHAR,
    RecordError,
    check_messages,
    make_record,
    parse_messages,
    printable,
)

IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
               "system": "system"}

CAPTION_PROMPT = "Describe the image in a single sentence as a caption."  # the authors' prompt
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")  # img2dataset's encode formats

class Converter(Protocol):
    def __call__(
        self, row: dict[str, Any], *, source: str, images: ImageLoader, max_text_chars: int,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RowFormat:
    """How the raw rows of one `SourceConfig.format` become records (see the module docstring)."""

    row_id: Callable[[dict[str, Any], str], str]
    convert: Converter


def row_id(row: dict[str, Any], source: str, fallback_text: str) -> str:
    """The row's own `id`, else a stable content hash."""
    if row.get("id") not in (None, ""):
        return printable(str(row["id"]))
    digest = hashlib.sha1(fallback_text.encode("utf-8", "backslashreplace")).hexdigest()
    return f"{source}-{digest[:12]}"


def parse_json_text(text: str) -> dict[str, Any]:
    """One JSON object (a JSONL line or an array entry) -> dict, or RecordError('bad_json').

    Raw control characters inside strings (a tab, a form feed) are accepted: the row's meaning
    is unambiguous, and many writers emit them."""
    try:
        row = json.loads(text, strict=False)
    except (ValueError, TypeError, RecursionError) as err:  # ValueError: JSONDecodeError, huge ints
        raise RecordError("bad_json", f"{type(err).__name__}: {err}"[:300]) from None
    if not isinstance(row, dict):
        raise RecordError("bad_json", f"expected an object, got {type(row).__name__}: {row!r:.60}")
    return row


def unwrap_text_row(raw: dict[str, Any]) -> dict[str, Any]:
    """A text row (`{"text": JSONL line or array entry}`) -> the parsed object; other rows
    unchanged. Raises RecordError('bad_json') for text that is not a JSON object."""
    if set(raw) == {"text"}:
        return parse_json_text(raw["text"])
    return raw


def _text_of(content: Any, where: str) -> str:
    """Message content (str or list of typed parts) -> its text without image placeholders."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict):
                raise RecordError("bad_messages", f"{where}: content part {k} is a "
                                  f"{type(part).__name__}, not an object {{type, ...}}")
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise RecordError("bad_messages", f"{where}: content part {k} has no text")
                parts.append(part["text"])
        text = "\n".join(p for p in parts if p)
    else:
        raise RecordError("bad_messages", f"{where}: content must be a string or a list of parts, "
                          f"got {type(content).__name__} {content!r:.60}")
    return IMAGE_PLACEHOLDER.sub("", text).strip()


def _text_field(value: Any, name: str, empty_reason: str) -> str:
    """A question / answer / caption field -> its text; None or blank is `empty_reason`, any
    other type `bad_messages`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError(empty_reason, f"{name} is empty ({value!r:.40})")
    if not isinstance(value, str):
        raise RecordError("bad_messages", f"{name} is a {type(value).__name__}, not text: "
                          f"{value!r:.60}")
    return value


def one_image(value: Any, field: str) -> tuple[Any, str]:
    """An image field that may be a list -> (its one reference, the field to name in
    rejects); an empty list is `missing_image`, several `multiple_images`."""
    if not isinstance(value, (list, tuple)):
        return value, field
    if not value:
        raise RecordError("missing_image", f"'{field}' is an empty list")
    if len(value) > 1:
        raise RecordError("multiple_images", f"'{field}' holds {len(value)} images; one per "
                          "sample is supported")
    return value[0], f"{field}[0]"


def build_record(
    *, rid: str, source: str, messages: list[dict[str, str]], image: Any, field: str,
    images: ImageLoader, max_text_chars: int, target_text: Any = None,
) -> dict[str, Any]:
    """Text checks first (no image is read for a row rejected anyway), then the image."""
    check_messages(messages)
    for i, m in enumerate(messages):
        if len(m["content"]) > max_text_chars:
            raise RecordError("text_too_long", f"turn {i} ({m['role']}): {len(m['content'])} "
                              f"characters > data.max_text_chars={max_text_chars}")
    if target_text is not None:
        target_text = _text_field(target_text, "target_text", "empty_text")
        if not WORD_CHAR.search(target_text):
            raise RecordError("empty_text", f"target_text has no letter or digit: "
                              f"{target_text!r:.60}")
        try:
            target_text.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError("bad_encoding", "target_text has a lone surrogate") from None
    return make_record(id=rid, source=source, image=images(image, field), messages=messages,
                       target_text=target_text, max_text_chars=max_text_chars)


def content_row_id(row: dict[str, Any], source: str) -> str:
    """The row's `id`, else a hash of the whole row (messages and LLaVA rows)."""
    return row_id(row, source, json.dumps(row, sort_keys=True, default=str))


def messages_image(row: dict[str, Any]) -> tuple[Any, str]:
    """The one image reference of a messages row: `images` (a list of one), else `image`."""
    if row.get("images") is not None:
        images = row["images"]
        if not isinstance(images, (list, tuple)):
            raise RecordError(
                "bad_image_field", f"'images' must be a list of one image, got a "
                f"{type(images).__name__}: {images!r:.60}",
            )
        return one_image(images, "images")
    if row.get("image") not in (None, ""):
        return one_image(row["image"], "image")
    raise RecordError("missing_image", "no 'images' (a text-only sample)")


# the key that holds the turns of each chat format: a row of one format read as the other
TURNS_KEYS = {"messages": "messages", "llava": "conversations"}


def other_format_hint(row: dict[str, Any], fmt: str) -> str:
    """"; it has 'conversations': format llava?" when `row`, read as `fmt`, holds the turns of
    the other chat format (a source given the wrong `format`), else ""."""
    for other, key in TURNS_KEYS.items():
        if other != fmt and row.get(key) is not None:
            return f"; it has {key!r}: format {other}?"
    return ""


def messages_row(
    row: dict[str, Any], *, source: str, images: ImageLoader, max_text_chars: int,
) -> dict[str, Any]:
    """A TRL / LLaMA-Factory `messages` row -> record."""
    rid = content_row_id(row, source)
    raw_messages = row.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RecordError("bad_messages", f"'messages' must be a non-empty list of turns, got "
                          f"{type(raw_messages).__name__} {raw_messages!r:.60}"
                          f"{other_format_hint(row, 'messages')}")
    messages = []
    for i, turn in enumerate(raw_messages):
        if not isinstance(turn, dict):
            raise RecordError("bad_messages", f"turn {i} is not an object: {turn!r:.80}")
        messages.append({"role": turn.get("role"),
                         "content": _text_of(turn.get("content"), f"turn {i}")})
    image, field = messages_image(row)
    return build_record(rid=rid, source=source, messages=messages, image=image, field=field,
                        images=images, max_text_chars=max_text_chars)


def llava_row(
    row: dict[str, Any], *, source: str, images: ImageLoader, max_text_chars: int,
) -> dict[str, Any]:
    """A LLaVA `conversations` row -> record."""
    rid = content_row_id(row, source)
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("bad_messages", f"'conversations' must be a non-empty list, got "
                          f"{type(turns).__name__} {turns!r:.60}"
                          f"{other_format_hint(row, 'llava')}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError("bad_messages", f"turn {i} is not an object: {turn!r:.80}")
        speaker = turn.get("from")
        role = LLAVA_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise RecordError("bad_conversation", f"turn {i}: speaker {speaker!r:.40} not in "
                              f"{sorted(LLAVA_ROLES)}")
        messages.append({"role": role, "content": _text_of(turn.get("value"), f"turn {i}")})
    if row.get("image") in (None, ""):
        raise RecordError("missing_image", "no 'image' (a text-only sample)")
    image, field = one_image(row["image"], "image")
    return build_record(rid=rid, source=source, messages=messages, image=image, field=field,
                        images=images, max_text_chars=max_text_chars)


def records_row_id(row: dict[str, Any], source: str) -> str:
    """The record's `id`, else a hash of its target text."""
    return row_id(row, source, str(row.get("target_text")))


def records_row(
    row: dict[str, Any], *, source: str, images: ImageLoader, max_text_chars: int,
) -> dict[str, Any]:
    """A row already in the record schema -> re-validated record, of this source (its own
    `source` column is not kept: rejects, quotas and counts are per configured source)."""
    text = row.get("messages")
    if not isinstance(text, str):
        raise RecordError("bad_messages", f"'messages' must be JSON text, got "
                          f"{type(text).__name__}")
    try:
        messages = parse_messages(text)
    except (ValueError, RecursionError) as err:
        raise RecordError("bad_messages", f"'messages' is not JSON: {err}"[:300]) from None
    return build_record(
        rid=records_row_id(row, source), source=source, messages=messages,
        image=row.get("image"), field="image", images=images,
        max_text_chars=max_text_chars, target_text=row.get("target_text"),
    )


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
    row: dict[str, Any], *, source: str, images: ImageLoader, max_text_chars: int,
) -> dict[str, Any]:
    """One Flickr30k caption row -> record (caption = answer = SD target text)."""
    if not row.get("filename"):
        raise RecordError("missing_image", "Karpathy entry without 'filename'")
    caption = _text_field(row.get("caption"), "caption", "empty_text")
    return build_record(rid=flickr30k_row_id(row, source), source=source,
                        messages=caption_messages(caption.strip()), image=row["filename"],
                        field="filename", images=images, max_text_chars=max_text_chars)


# -------------------------------------------------------------------------------------- laion
def laion_row_id(row: dict[str, Any], source: str) -> str:
    """img2dataset's sample key (`__key__` in a tar, `key` in Parquet), else a content hash."""
    key = row.get("__key__") if row.get("__key__") not in (None, "") else row.get("key")
    if key not in (None, ""):
        return printable(str(key))
    return row_id({}, source, str(row.get("url") or row.get("txt") or row.get("caption")))


def _member_text(value: Any, name: str) -> str | None:
    """A WebDataset text member (bytes) or a Parquet string -> str (None when absent)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise RecordError("bad_encoding", f"{name} is not UTF-8: {err}") from None
    return value if isinstance(value, str) else None


def laion_caption(row: dict[str, Any]) -> str:
    """The sample's caption: `.txt` member / `txt` or `caption` column, else the `.json`'s."""
    for name in ("txt", "caption", "text"):
        text = _member_text(row.get(name), name)
        if text is not None and text.strip():
            return text.strip()
    meta = _member_text(row.get("json"), "json")
    if meta:
        try:
            caption = json.loads(meta, strict=False).get("caption")
        except (ValueError, AttributeError, RecursionError) as err:
            raise RecordError("bad_json", f"sample .json: {err}"[:300]) from None
        if isinstance(caption, str) and caption.strip():
            return caption.strip()
    raise RecordError("empty_text", "no caption (.txt / txt / caption)")


def laion_image(row: dict[str, Any]) -> tuple[Any, str]:
    """(the image of an img2dataset sample, its member / column); failed downloads name their
    error."""
    for name in (*IMAGE_SUFFIXES, "image"):
        value = row.get(name)
        if value not in (None, b"", "") and not (
            isinstance(value, dict) and not value.get("bytes") and not value.get("path")
        ):
            return value, name
    status = row.get("status")
    detail = f"status {status!r}: {row.get('error_message')}" if status else "no image member"
    raise RecordError("missing_image", detail)


def laion_row(
    row: dict[str, Any], *, source: str, images: ImageLoader, max_text_chars: int,
) -> dict[str, Any]:
    """One img2dataset sample (tar or Parquet) -> record (caption = answer = SD target text)."""
    caption = laion_caption(row)
    image, field = laion_image(row)
    return build_record(rid=laion_row_id(row, source), source=source,
                        messages=caption_messages(caption), image=image, field=field,
                        images=images, max_text_chars=max_text_chars)


# ------------------------------------------------------------------------------------ rlaif_v
def rlaif_v_row_id(row: dict[str, Any], source: str) -> str:
    """`<ds_name>/<idx>` (idx repeats across RLAIF-V's sub-sets), else a content hash."""
    if row.get("idx") not in (None, ""):
        return printable(f"{row.get('ds_name') or source}/{row['idx']}")
    return row_id({}, source, f"{row.get('question')}\n{row.get('chosen')}")


def rlaif_v_row(
    row: dict[str, Any], *, source: str, images: ImageLoader, max_text_chars: int,
) -> dict[str, Any]:
    """One RLAIF-V preference row -> record: question, then the chosen answer (SD target).
    The rejected answer is never read."""
    question = _text_of(_text_field(row.get("question"), "question", "empty_question"),
                        "question")
    if not question:
        raise RecordError("empty_question", "question holds only an image placeholder")
    chosen = _text_field(row.get("chosen"), "chosen answer", "empty_text")
    image, field = row.get("image"), "image"
    if image is None or (isinstance(image, dict) and not image.get("bytes")
                         and not image.get("path")):
        image, field = row.get("image_path") or image, "image_path"
    return build_record(rid=rlaif_v_row_id(row, source), source=source,
                        messages=[{"role": "user", "content": question},
                                  {"role": "assistant", "content": chosen.strip()}],
                        image=image, field=field, images=images, max_text_chars=max_text_chars)


# ------------------------------------------------------------------------------------- ocrvqa
def _image_digest(images: Any) -> str:
    """sha1 of the first image's bytes (or its path), for ids of rows that have none."""
    first = images[0] if isinstance(images, list) and images else images
    if isinstance(first, dict):
        first = first.get("bytes") or first.get("path")
    blob = first if isinstance(first, (bytes, bytearray)) else str(first).encode(
        "utf-8", "backslashreplace")
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
        user = _text_of(_text_field(turn.get("user"), f"turn {i}: 'user'", "empty_question"),
                        f"turn {i}")
        if not user:
            raise RecordError("empty_question", f"turn {i}: 'user' holds only an image "
                              "placeholder")
        answer = _text_field(turn.get("assistant"), f"turn {i}: 'assistant'", "empty_text")
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": answer.strip()}]
    return messages


def ocrvqa_row(
    row: dict[str, Any], *, source: str, images: ImageLoader, max_text_chars: int,
) -> dict[str, Any]:
    """One the_cauldron row -> multi-turn record; SD target = all answers joined (module doc)."""
    if row.get("images") is None:
        raise RecordError("missing_image", "no 'images'")
    if not isinstance(row["images"], list):
        raise RecordError("bad_image_field", f"'images' must be a list of one image, got "
                          f"{type(row['images']).__name__}")
    image, field = one_image(row["images"], "images")
    return build_record(rid=ocrvqa_row_id(row, source), source=source,
                        messages=cauldron_messages(row.get("texts")), image=image, field=field,
                        images=images, max_text_chars=max_text_chars)


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
