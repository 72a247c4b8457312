"""Probe records and results, without a model: where the records come from (`eval.probe_path`),
the before/after comparison, their agreement with the SD maps and their PNG grids. No torch:
the evaluate driver checks the probe path and writes the report with it; the probes themselves
are computed by `eval.attention` in the probe task.

Before vs after training: `compare_probes` puts the probes of the base model and of the trained
model side by side (panels SD | VLM before | VLM after | aligned before | aligned after) and
`probe_agreement` scores every panel against the SD maps (per-word MSE, Pearson correlation,
top-10% IoU; `eval.map_metrics.map_agreement`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lavender_ray.config import ConfigError
from lavender_ray.eval.map_metrics import map_agreement
from lavender_ray.pictures import ProbeSample, render_probe
from lavender_ray.pipeline.cache import TARGETS, read_shards, shard_paths
from lavender_ray.storage import filesystem_and_path

TARGET_PANEL = "SD"
RAW_PANEL = "VLM"
ALIGNED_PANEL = "aligned"


def stored_probe_records(path: str, samples: int) -> list[dict[str, Any]]:
    """The first `samples` records with SD targets of the Parquet shards under `path`: a
    targets folder, or the folder `lavender extract --out` wrote (its `targets/` part; its
    rejects and logs are no probe records). ConfigError when there are none."""
    table = read_shards(probe_folder(path))
    return table.slice(0, samples).to_pylist() if table is not None else []


def probe_folder(path: str) -> str:
    """The folder of probe records `eval.probe_path` names (see `stored_probe_records`), or
    ConfigError in one line when it holds no Parquet with SD targets. Cheap (file listing and
    one footer): the driver checks before anything starts."""
    fs, inner = filesystem_and_path(path)
    if fs.get_file_info(f"{inner.rstrip('/')}/{TARGETS}").type == pafs.FileType.Directory:
        path = f"{path.rstrip('/')}/{TARGETS}"
    fs, shards = shard_paths(path)
    if not shards or "sd_maps" not in pq.read_schema(shards[0], filesystem=fs).names:
        raise ConfigError(
            f"eval.probe_path={path!r} holds no records with SD targets (Parquet with an "
            "sd_maps column); give the folder `lavender extract` wrote, or its `targets:` folder"
        )
    return path


def write_probe_pngs(samples: list[ProbeSample], out_dir: str | Path) -> list[Path]:
    """One `<record id>.png` per sample under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample in samples:
        path = out / f"{sample.record_id.replace('/', '_')}.png"
        render_probe(sample).save(path)
        paths.append(path)
    return paths


def compare_probes(
    before: list[ProbeSample],
    after: list[ProbeSample],
    labels: tuple[str, str] = ("before", "after"),
) -> list[ProbeSample]:
    """The probes of two models on the same records, merged per record (in `after`'s order):
    panels SD, "VLM <before>", "VLM <after>", "aligned <before>", "aligned <after>".

    Raises `ValueError` when a record is probed by one model only or with other words (both
    probes must come from `probe_attention` on the same records)."""
    by_id = {sample.record_id: sample for sample in before}
    if set(by_id) != {sample.record_id for sample in after}:
        raise ValueError(
            f"probed records differ: {sorted(by_id)} vs {sorted(s.record_id for s in after)}"
        )
    merged = []
    for late in after:
        early = by_id[late.record_id]
        if early.words != late.words:
            raise ValueError(f"record {late.record_id!r}: words {early.words} vs {late.words}")
        maps = {TARGET_PANEL: late.maps[TARGET_PANEL]}
        for panel in (RAW_PANEL, ALIGNED_PANEL):
            maps[f"{panel} {labels[0]}"] = early.maps[panel]
            maps[f"{panel} {labels[1]}"] = late.maps[panel]
        merged.append(ProbeSample(late.record_id, late.image, late.text, late.words, maps))
    return merged


def probe_agreement(samples: list[ProbeSample]) -> dict[str, dict[str, float]]:
    """Every non-SD panel's agreement with the SD maps over all words of all samples:
    panel -> {"mse", "pearson", "iou_top10"} (per-word means; {} without samples)."""
    if not samples:
        return {}
    target = np.concatenate([s.maps[TARGET_PANEL] for s in samples])  # [words, s, s]
    panels = [p for p in samples[0].maps if p != TARGET_PANEL]
    return {
        panel: map_agreement(np.concatenate([s.maps[panel] for s in samples]), target)
        for panel in panels
    }
