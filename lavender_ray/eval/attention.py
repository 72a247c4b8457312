"""Attention probes on a model: for records with SD targets, each answer word's SD map next to the
VLM's raw map and the Aligner's map (`probe_attention`), in the probe task or the demo.

Shapes::

    n  words of a sample     L  captured layers     H  heads     s  map side

The VLM map of a word shown here is its raw attention averaged over layers and heads, min-max
normalised ([n, L, H, s, s] -> [n, s, s]); the aligned map is the Aligner's output. Words come
from the label (the reference answer), matched exactly to the SD words, so a probe shows the
same words whatever the model predicts.

The probe records (`probe_records`) are the first `eval.probe_samples` records of
`eval.probe_path` (a folder `lavender extract` wrote: `eval.probes.stored_probe_records`), else
synthetic records with SD targets extracted on the spot. Comparing, scoring and drawing the
probes needs no model and lives in `eval.probes`.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image

from lavender_ray.align import Aligner
from lavender_ray.config import LavenderConfig
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.eval.probes import ALIGNED_PANEL, RAW_PANEL, TARGET_PANEL, stored_probe_records
from lavender_ray.images import decode_image
from lavender_ray.pictures import ProbeSample
from lavender_ray.sd.settings import resolve_dtype
from lavender_ray.tensors import minmax_normalise
from lavender_ray.train.step import aligned_word_maps, collate_records
from lavender_ray.words import select_words


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


def batch_image(record: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(record["image"])).convert("RGB")


