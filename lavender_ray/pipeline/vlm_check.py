"""The Ray Data stage that checks every record against the VLM's inputs before it can reach the
trainer.

    ds = add_vlm_check(ds, cfg, rejects_dir)   # records -> the records the trainer can take

`VLMCheckStage` is a callable class for `map_batches` on a small actor pool: each actor builds
the family's `VLMInputs` once (its processor and its model's config, no weights:
`CapturingAdapter.build_vlm_inputs`) and runs on every record what the trainer's collate
(`train.step.collate_records` -> `adapter.build_inputs`) will run: the image decoded, the chat
template rendered, the answer tokens placed, the processor run on text and image, the sequence
measured against `vlm.max_length`. A record leaves the stage unchanged, or with its question cut
(`vlm.overlong=truncate_question`: the earliest user text loses tokens from its end until the
answer fits), or it is written to the rejects folder (stage "vlm") with one of these reasons:

    bad_conversation   the chat template or the label placement fails (detail: the error), or
                       the text spells the image token
    image_unusable     the processor raises on the image, or leaves no image token
    image_cut          vlm.max_length cuts into the image tokens
    answer_truncated   vlm.max_length cuts into the answer (with truncate_question: even with
                       the question cut)
    no_answer_tokens   the inputs hold no answer token to learn
    bad_targets        the SD target columns, when present (cache, precomputed), are not what
                       `collate_records` takes (`record_targets`)

Images that cannot be decoded keep the codes of `images.decode_image` (corrupt_image, ...).
Nothing is dropped silently: records in = records out + records rejected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

from lavender_ray.config import LavenderConfig
from lavender_ray.images import decode_image
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import RecordError, Reject, decode_maps, parse_messages
from lavender_ray.vlm.chat import IGNORE_INDEX

if TYPE_CHECKING:
    from ray.data import Dataset

    from lavender_ray.vlm.inputs import VLMInputs

VLM_STAGE = "vlm"
TARGET_COLUMNS = ("sd_words", "sd_maps", "sd_map_size")
CHECK_POOL_MAX = 2  # actors; at tens of ms of CPU per record one keeps ahead of several GPUs
CHECK_BATCH_SIZE = 16
QUESTION_CUTS = 4  # re-tokenising a cut question can differ by a token: a few tries


def record_targets(record: dict[str, Any], map_size: int) -> tuple[list[str], np.ndarray]:
    """A record's SD words and maps (float32 `[n_words, s, s]`). `ValueError` naming the record
    when a target column is missing, the map size differs from `map_size` (config
    `sd.output_size`) or the maps do not fit the words."""
    missing = [c for c in TARGET_COLUMNS if record.get(c) is None]
    if missing:
        raise ValueError(
            f"record {record.get('id')!r} has no SD targets (missing {', '.join(missing)}); "
            "run the SD stage first or use pipeline.mode=precomputed"
        )
    if int(record["sd_map_size"]) != map_size:
        raise ValueError(
            f"record {record.get('id')!r}: sd_map_size={record['sd_map_size']} but the trainer "
            f"expects sd.output_size={map_size}"
        )
    words = list(record["sd_words"])
    blob = record["sd_maps"]
    if len(blob) % (2 * map_size * map_size):
        raise ValueError(
            f"record {record.get('id')!r}: sd_maps holds {len(blob)} bytes, not a whole number "
            f"of float16 {map_size}x{map_size} maps"
        )
    maps = decode_maps(blob, map_size)  # bytes -> [n_sd, s, s]
    if maps.shape[0] != len(words):
        raise ValueError(
            f"record {record.get('id')!r}: {len(words)} sd_words but {maps.shape[0]} maps"
        )
    return words, maps


@dataclass(frozen=True)
class Measured:
    """Where one record's inputs put things: the sequence length, the end of its image tokens
    and the positions of its answer tokens (all before any cut to `vlm.max_length`)."""

    length: int
    image_end: int
    answer: list[int]


def measure(inputs: VLMInputs, image: Image.Image, conversation: list[dict[str, str]]) -> Measured:
    """Build one record's inputs as the trainer will (`VLMInputs.build_inputs`' steps) and
    measure them; `RecordError` (bad_conversation, image_unusable, no_answer_tokens)."""
    try:
        text = inputs.encode_text(conversation)
    except Exception as err:  # a chat template is user code: it may raise anything
        raise RecordError("bad_conversation", describe(err)) from None
    placeholders = text.ids.count(inputs.image_token_id)
    if placeholders != 1:  # the image's own, plus text that spells the image token
        token = inputs.tokenizer.convert_ids_to_tokens(inputs.image_token_id)
        detail = f"the text holds the image token {token!r} {placeholders} times, not once"
        raise RecordError("bad_conversation", detail)
    try:
        batch = inputs.process([image], [text])
    except Exception as err:  # the processor's own checks and image transforms
        raise RecordError("image_unusable", describe(err)) from None
    try:
        labels = inputs.labels(batch, [text])[0]  # [1, T] -> [T]
    except ValueError as err:
        raise RecordError("bad_conversation", describe(err)) from None
    ids = batch["input_ids"][0]  # [1, T] -> [T]
    image_positions = (ids == inputs.image_token_id).nonzero().flatten()
    if len(image_positions) == 0:
        raise RecordError("image_unusable", "the processor left no image token in the inputs")
    # the loss reads labels shifted by one: a label at position 0 is never learned
    answer = [p for p in (labels != IGNORE_INDEX).nonzero().flatten().tolist() if p > 0]
    if not answer:
        raise RecordError("no_answer_tokens", f"no answer token among {len(ids)} tokens")
    return Measured(len(ids), int(image_positions[-1]) + 1, answer)


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def overlong_detail(measured: Measured, max_length: int) -> str:
    cut = sum(p >= max_length for p in measured.answer)
    return (
        f"{measured.length} tokens > vlm.max_length={max_length}: {cut} of the "
        f"{len(measured.answer)} answer tokens (positions {measured.answer[0]}.."
        f"{measured.answer[-1]}) would be cut"
    )


class VLMCheckStage:
    """`map_batches` callable (pyarrow batches in the record schema, extra columns allowed)."""

    def __init__(self, config: dict[str, Any], rejects_dir: str) -> None:
        # Imported here, not at the top: Ray Data's coordinator and Ray Train's controller
        # unpickle this class with the dataset but never run it; transformers + torch would
        # cost each of those processes ~5 s of CPU per run (tests/test_light_plans.py).
        from lavender_ray.vlm.registry import adapter_class

        cfg = LavenderConfig.from_dict(config)
        self.vlm_inputs = adapter_class(cfg.vlm.family).build_vlm_inputs(cfg.vlm)
        self.max_length = cfg.vlm.max_length
        self.overlong = cfg.vlm.overlong
        self.max_pixels = cfg.data.max_image_pixels
        self.map_size = cfg.sd.output_size
        self.rejects_dir = rejects_dir

    def __call__(self, batch: pa.Table) -> pa.Table:
        with_targets = all(c in batch.column_names for c in TARGET_COLUMNS)
        kept: list[int] = []
        messages: list[str] = []
        rejects: list[Reject] = []
        for index, row in enumerate(batch.to_pylist()):
            try:
                if with_targets:
                    self.check_targets(row)
                messages.append(self.check(row))
            except RecordError as err:
                rejects.append(
                    Reject(str(row["id"]), str(row["source"]), VLM_STAGE, err.reason, err.detail)
                )
                continue
            kept.append(index)
        write_rejects(rejects, self.rejects_dir, VLM_STAGE)
        out = batch.take(pa.array(kept, type=pa.int64()))
        if messages == out["messages"].to_pylist():
            return out
        column = out.column_names.index("messages")
        return out.set_column(column, "messages", pa.array(messages, type=pa.string()))

    def check_targets(self, row: dict[str, Any]) -> None:
        try:
            record_targets(row, self.map_size)
        except ValueError as err:
            raise RecordError("bad_targets", str(err)) from None

    def check(self, row: dict[str, Any]) -> str:
        """The record's `messages` as the trainer will take them (cut with
        `vlm.overlong=truncate_question`), or `RecordError`."""
        image = decode_image(row["image"], self.max_pixels)
        try:
            conversation = parse_messages(row["messages"])
        except (TypeError, ValueError) as err:
            raise RecordError("bad_conversation", describe(err)) from None
        measured = measure(self.vlm_inputs, image, conversation)
        if measured.image_end > self.max_length:
            raise RecordError(
                "image_cut",
                f"the image tokens end at position {measured.image_end} > vlm.max_length="
                f"{self.max_length} ({measured.length} tokens); raise vlm.max_length or shorten "
                "the text before the image",
            )
        if measured.answer[-1] < self.max_length:
            return row["messages"]
        if self.overlong == "reject":
            detail = overlong_detail(measured, self.max_length)
            raise RecordError("answer_truncated", f"{detail}; vlm.overlong=reject")
        return json.dumps(self.cut_question(image, conversation, measured), ensure_ascii=False)

    def cut_question(
        self, image: Image.Image, conversation: list[dict[str, str]], measured: Measured
    ) -> list[dict[str, str]]:
        """`conversation` with its earliest user text cut from the end until the last answer
        token is within `vlm.max_length`; `RecordError` (answer_truncated) when it cannot be."""
        turn = next(i for i, t in enumerate(conversation) if t["role"] == "user")
        tokenizer = self.vlm_inputs.tokenizer
        original = measured
        for _ in range(QUESTION_CUTS):
            question = tokenizer(conversation[turn]["content"], add_special_tokens=False)
            excess = measured.answer[-1] + 1 - self.max_length
            keep = len(question["input_ids"]) - excess
            if keep < 1:
                break
            # a cut inside a multi-byte character decodes to U+FFFD: leave it out
            text = tokenizer.decode(question["input_ids"][:keep]).rstrip("\ufffd")
            conversation = [dict(t) for t in conversation]
            conversation[turn]["content"] = text
            measured = measure(self.vlm_inputs, image, conversation)
            if measured.answer[-1] < self.max_length:
                return conversation
        detail = overlong_detail(original, self.max_length)
        raise RecordError(
            "answer_truncated",
            f"{detail}; vlm.overlong=truncate_question: the answer does not fit even with the "
            "question cut",
        )


def vlm_check_options(cfg: LavenderConfig, rejects_dir: str) -> dict[str, Any]:
    """The `map_batches` arguments of the check stage: an actor pool of 1 to `CHECK_POOL_MAX`
    actors (each loads the processor once; the work per record is light),
    `pipeline.check_num_cpus` each."""
    return {
        "fn_constructor_kwargs": {"config": cfg.to_dict(), "rejects_dir": rejects_dir},
        "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=CHECK_POOL_MAX),
        "batch_size": CHECK_BATCH_SIZE,
        "batch_format": "pyarrow",
        "num_cpus": cfg.pipeline.check_num_cpus,
    }


def add_vlm_check(ds: Dataset, cfg: LavenderConfig, rejects_dir: str) -> Dataset:
    """`ds` (records, with or without SD targets) -> the records the trainer can take; the
    others go to `rejects_dir` with their reason."""
    return ds.map_batches(VLMCheckStage, **vlm_check_options(cfg, rejects_dir))
