"""Attention probes: for records with SD targets, each answer word's SD map next to the VLM's raw
map and the Aligner's map, as numbers and as PNG grids.

Shapes::

    n  words of a sample     L  captured layers     H  heads     s  map side

The VLM map of a word shown here is its raw attention averaged over layers and heads, min-max
normalised ([n, L, H, s, s] -> [n, s, s]); the aligned map is the Aligner's output. Words come
from the label (the reference answer), matched exactly to the SD words, so a probe shows the
same words whatever the model predicts.

Before vs after training: `compare_probes` puts the probes of the base model and of the trained
model side by side (panels SD | VLM before | VLM after | aligned before | aligned after) and
`probe_agreement` scores every panel against the SD maps (per-word MSE, Pearson correlation,
top-10% IoU; `eval.map_metrics.map_agreement`).

The probe records (`probe_records`) are the first `eval.probe_samples` records of
`eval.probe_path` (a folder `lavender extract` wrote), else synthetic records with SD targets
extracted on the spot; `probe_folder` checks that path cheaply in the driver.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image

from lavender_ray.align import Aligner
from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.eval.map_metrics import map_agreement
from lavender_ray.images import decode_image
from lavender_ray.pictures import ProbeSample, render_probe
from lavender_ray.pipeline.cache import TARGETS, read_shards, shard_paths
from lavender_ray.sd.settings import resolve_dtype
from lavender_ray.storage import filesystem_and_path
from lavender_ray.tensors import minmax_normalise
from lavender_ray.train.step import aligned_word_maps, collate_records
from lavender_ray.words import select_words

TARGET_PANEL = "SD"
RAW_PANEL = "VLM"
ALIGNED_PANEL = "aligned"


@torch.no_grad()
def probe_attention(
    adapter: Any, aligner: Aligner, records: list[dict[str, Any]], map_size: int
) -> list[ProbeSample]:
    """SD, raw VLM and aligned maps of the label words of every record (records with targets),
    computed on the device of the adapter's model and returned on the CPU."""
    device = next(adapter.model.parameters()).device
    was_training = adapter.model.training
    adapter.model.eval()
    aligner.eval()
    samples = []
    try:
        for record in records:
            batch = collate_records([record], adapter, map_size).to(device)
            out = adapter.forward(batch.inputs, map_size)
            matched = select_words(
                batch.inputs["labels"], None, batch.sd_words, adapter.tokenizer,
                source="label", matching="exact",
            )[0]
            if not matched:
                continue
            rows = [w.rows for w in matched]
            raw = out.captured.word_maps(0, rows)  # [n, L, H, s, s]
            vlm = minmax_normalise(raw.mean(dim=(1, 2)))  # [n, L, H, s, s] -> [n, s, s]
            aligned = aligned_word_maps(aligner, out.captured, [rows])  # [n, s, s]
            sd = batch.sd_maps[0][[w.sd_index for w in matched]]  # [n, s, s]
            samples.append(
                ProbeSample(
                    record_id=str(record["id"]),
                    image=batch_image(record),
                    text=str(record["target_text"]),
                    words=[w.sd_key for w in matched],
                    maps={TARGET_PANEL: sd.cpu().numpy(), RAW_PANEL: vlm.cpu().numpy(),
                          ALIGNED_PANEL: aligned.cpu().numpy()},
                )
            )
    finally:
        adapter.model.train(was_training)
    return samples


def synthetic_probe_records(cfg: LavenderConfig, n: int, device: str = "cpu") -> list[dict]:
    """`n` synthetic probe records with SD targets (held out: another seed than training),
    extracted with `cfg.sd` on `device`; on CPU an fp16 `sd.dtype` runs in fp32 (CPU has no
    fast fp16 kernels, and fp16 inversion there gives NaN maps)."""
    records = make_synthetic_records(n, seed=cfg.data.seed + 1000)
    sd = cfg.sd
    if device == "cpu" and resolve_dtype(sd.dtype, device) == "fp16":
        sd = sd.model_copy(update={"dtype": "fp32"})
    # imported here: diffusers loads in the probe task, never in the evaluate driver
    from lavender_ray.sd.extractor import SDExtractor

    extractor = SDExtractor(sd, device=device)
    images = [decode_image(r["image"], cfg.data.max_image_pixels) for r in records]
    targets = extractor.extract(images, [r["target_text"] for r in records])
    return [{**r, **t.to_row()} for r, t in zip(records, targets)]


def probe_records(
    cfg: LavenderConfig, run_cfg: LavenderConfig, device: str = "cpu"
) -> list[dict[str, Any]]:
    """The held-out probe records with SD targets: the first `eval.probe_samples` rows of
    `eval.probe_path` (Parquet with the target columns), else synthetic records (another seed
    than training) with targets extracted with the run's `sd` section on `device`."""
    if cfg.eval.probe_path:
        return stored_probe_records(cfg.eval.probe_path, cfg.eval.probe_samples)
    return synthetic_probe_records(run_cfg, cfg.eval.probe_samples, device)


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


def batch_image(record: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(record["image"])).convert("RGB")


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
