"""The Ray Data stage that adds SD targets to record batches.

    ds = add_sd_targets(ds, cfg, rejects_dir)   # records -> records + schema.TARGET_FIELDS

`SDTargetStage` is a callable class for `map_batches` on an actor pool: each actor builds one
`SDExtractor` from the config dict it is given and keeps it. A record either leaves the stage
with its targets (every input column kept, the target columns appended) or is written to the
rejects folder with its reason; nothing is dropped silently, so
records in = records with targets + records rejected.

Reject codes of this stage: the image codes of `lavender_ray.images.decode_image`, plus
empty_text, text_too_long, no_words (no letter or digit in the text), no_words_in_window
(no word survives CLIP's 77-token window) and non_finite_maps (the extraction produced NaN/inf).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

from lavender_ray import storage
from lavender_ray.config import LavenderConfig
from lavender_ray.images import decode_image
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import RecordError, Reject
from lavender_ray.sd.prompt import TextPlan, find_words
from lavender_ray.sd.target import SDTarget, with_targets

if TYPE_CHECKING:
    from ray.data import Dataset

SD_STAGE = "sd"


def check_target_text(text: str | None, max_chars: int) -> str:
    """The target text if SD can attend with it, else `RecordError` (empty_text, text_too_long,
    no_words)."""
    if text is None or not text.strip():
        raise RecordError("empty_text", "target text is empty or whitespace")
    if len(text) > max_chars:
        detail = f"{len(text)} characters > {max_chars} (data.max_text_chars)"
        raise RecordError("text_too_long", detail)
    if not find_words(text):
        raise RecordError("no_words", f"no letter or digit in {text[:80]!r}")
    return text


def stage_device(cfg: LavenderConfig) -> str:
    """The device SD actors run on: CUDA when the pool asks for GPUs, else CPU."""
    return "cuda" if cfg.pipeline.sd_num_gpus > 0 else "cpu"


@dataclass(frozen=True)
class Accepted:
    """A row that passed `SDTargetStage.screen`: its index in the batch, image and text plan."""

    index: int
    image: Image.Image
    plan: TextPlan


class SDTargetStage:
    """`map_batches` callable (pyarrow batches in the record schema, extra columns allowed)."""

    def __init__(self, config: dict[str, Any], rejects_dir: str) -> None:
        cfg = LavenderConfig.from_dict(config)
        self.data, self.sd = cfg.data, cfg.sd
        self.rejects_dir = rejects_dir
        # Imported here, not at the top: Ray Data's coordinator and Ray Train's controller
        # unpickle this class with the dataset but never run it; diffusers + torch would cost
        # each of those processes ~6 s of CPU per run (tests/test_light_plans.py).
        from lavender_ray.sd.extractor import SDExtractor

        self.extractor = SDExtractor(cfg.sd, device=stage_device(cfg))
        self.fail_at_batch = cfg.pipeline.sd_fail_at_batch
        self.batches_seen = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.batches_seen += 1
        if self.fail_at_batch == self.batches_seen:
            die_once(self.rejects_dir, self.batches_seen)
        rows = batch.select(["id", "source", "image", "target_text"]).to_pylist()
        accepted, rejects = self.screen(rows)
        kept: list[int] = []
        targets: list[SDTarget] = []
        for start in range(0, len(accepted), self.sd.batch_size):
            chunk = accepted[start : start + self.sd.batch_size]
            images, plans = [a.image for a in chunk], [a.plan for a in chunk]
            results = self.extractor.extract_planned(images, plans)
            for row, target in zip(chunk, results):
                if np.isfinite(target.maps).all():
                    kept.append(row.index)
                    targets.append(target)
                else:
                    detail = "NaN or inf in the maps"
                    rejects.append(_reject(rows[row.index], "non_finite_maps", detail))
        write_rejects(rejects, self.rejects_dir, SD_STAGE)
        return with_targets(batch.take(pa.array(kept, type=pa.int64())), targets)

    def screen(self, rows: list[dict[str, Any]]) -> tuple[list[Accepted], list[Reject]]:
        """Decode and check every row: the usable ones, and a reject for each of the others."""
        accepted, rejects = [], []
        for index, row in enumerate(rows):
            try:
                text = check_target_text(row["target_text"], self.data.max_text_chars)
                image = decode_image(row["image"], self.data.max_image_pixels)
                plan = self.extractor.tokenize(text)
                if not plan.words.words:
                    window, cut = self.extractor.max_tokens, plan.words.words_cut
                    detail = f"{cut} word(s), none within the {window}-token window"
                    raise RecordError("no_words_in_window", detail)
            except RecordError as err:
                rejects.append(_reject(row, err.reason, err.detail))
                continue
            accepted.append(Accepted(index, image, plan))
        return accepted, rejects


def _reject(row: dict[str, Any], reason: str, detail: str) -> Reject:
    return Reject(str(row["id"]), str(row["source"]), SD_STAGE, reason, detail)


def die_once(marker_dir: str, batch: int) -> None:
    """`pipeline.sd_fail_at_batch` (testing): the actor process exits, without cleanup, the first
    time any actor reaches that batch (a marker file in `marker_dir`, the rejects folder: local
    path or URI, records it), so Ray Data must restart the actor and retry the batch."""
    marker = f"{marker_dir.rstrip('/')}/sd-fault-{batch}.marker"
    if storage.exists(marker):
        return
    storage.write_text(marker, str(os.getpid()))
    os._exit(1)


def sd_stage_options(cfg: LavenderConfig, rejects_dir: str) -> dict[str, Any]:
    """The `map_batches` arguments of the SD stage: an actor pool sized by
    `pipeline.sd_pool_min/max`, `pipeline.sd_num_cpus/gpus` per actor, `pipeline.sd_accelerator`
    as the accelerator type when set, `sd.batch_size` records per batch."""
    pipeline = cfg.pipeline
    pool = ray.data.ActorPoolStrategy(min_size=pipeline.sd_pool_min, max_size=pipeline.sd_pool_max)
    options: dict[str, Any] = {
        "fn_constructor_kwargs": {"config": cfg.to_dict(), "rejects_dir": rejects_dir},
        "compute": pool,
        "batch_size": cfg.sd.batch_size,
        "batch_format": "pyarrow",
        "num_cpus": pipeline.sd_num_cpus,
        "num_gpus": pipeline.sd_num_gpus,
    }
    if pipeline.sd_accelerator:
        options["accelerator_type"] = pipeline.sd_accelerator
    return options


def add_sd_targets(ds: Dataset, cfg: LavenderConfig, rejects_dir: str) -> Dataset:
    """`ds` (a Ray Dataset of records) -> Dataset of records with targets (`sd_stage_options`);
    rejects go to `rejects_dir`."""
    return ds.map_batches(SDTargetStage, **sd_stage_options(cfg, rejects_dir))
