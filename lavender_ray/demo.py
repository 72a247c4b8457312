"""`lavender demo`: the whole method end to end on an embedded local Ray with tiny models.

The synthetic data set streams through the tiny SD actor pool into a 2-worker DeepSpeed ZeRO-2
trainer on the tiny Mllama; the run writes checkpoints, the verified adapter, the metrics
history (`metrics.jsonl`, `report/curves.png`, and the trackers of `train.report_to`) and a PNG
attention report (image | SD map | VLM map | aligned map, per word), then evaluates base model
vs adapter on the synthetic benchmark (`eval/`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lavender_ray.config import LavenderConfig
from lavender_ray.data.synthetic import write_synthetic_parquet
from lavender_ray.eval.attention import probe_attention, synthetic_probe_records
from lavender_ray.eval.evaluate import describe, evaluate
from lavender_ray.eval.probes import write_probe_pngs
from lavender_ray.resources import connect
from lavender_ray.runs import METRICS_FILE, load_trained
from lavender_ray.train.launch import train

REPORT_SAMPLES = 4


@dataclass
class DemoOutputs:
    run_dir: Path
    adapter: Path
    metrics: Path
    report: list[Path]
    data: list[str]  # the synthetic sources, as the Parquet files they were generated into
    rejects: dict[str, int]
    final_metrics: dict[str, float]
    evaluation: str  # `lavender_ray.eval.evaluate.describe` of the synthetic-benchmark run


def run_demo(cfg: LavenderConfig) -> DemoOutputs:
    """Train on the local Ray, then write the attention report next to the run's outputs."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    connect(cfg, "demo")
    summary = train(cfg)
    data = save_synthetic_sources(cfg, Path(summary.run_dir) / "data")
    if summary.checkpoint is None or summary.adapter is None:
        raise RuntimeError(f"training wrote no checkpoint under {summary.run_dir}")
    run_dir = Path(summary.run_dir)
    adapter_dir = Path(summary.adapter)
    metrics = run_dir / METRICS_FILE  # appended by rank 0 at every report (train.tracking)

    _, adapter, aligner = load_trained(adapter_dir)
    samples = probe_attention(adapter, aligner, synthetic_probe_records(cfg, REPORT_SAMPLES),
                              cfg.sd.output_size)
    report = write_probe_pngs(samples, run_dir / "report")
    evaluation = describe(evaluate(cfg, adapter_dir, ["synthetic"], run_dir / "eval"))
    return DemoOutputs(
        run_dir, adapter_dir, metrics, report, data, summary.rejects, summary.metrics, evaluation
    )


def save_synthetic_sources(cfg: LavenderConfig, out_dir: Path) -> list[str]:
    """Write each synthetic source's records (the same ones training read) as Parquet."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        write_synthetic_parquet(str(out_dir / f"{s.name}.parquet"), s.num_samples, cfg.data.seed)
        for s in cfg.data.sources if s.format == "synthetic"
    ]
