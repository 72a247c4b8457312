"""Scoring predictions: each model's answers on one benchmark's rows -> per-row scores and the
metric's summary (`BenchmarkScores`), and the per-row predictions file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavender_ray.eval.metrics import Metric, MetricResult, Prediction, score_rows
from lavender_ray.eval.models import ModelSpec


def to_prediction(row: dict[str, Any], column: str) -> Prediction:
    """An output row of `inference.add_predictions` -> the `Prediction` of one model."""
    return Prediction(
        id=str(row["id"]),
        prediction=row[column] or "",
        answers=tuple(json.loads(row["answers"])),
        options=json.loads(row["options"]),
        category=row["category"],
        image_key=row["image_key"],
        extras=json.loads(row["extras"]),
    )


@dataclass
class BenchmarkScores:
    """One benchmark's results: per model the summary and the per-row scores (same rows)."""

    metric: Metric
    rows: list[dict[str, Any]]
    results: dict[str, MetricResult]
    row_scores: dict[str, list[float]]
    unscorable: dict[str, str]


def score_benchmark(
    metric: Metric, rows: list[dict[str, Any]], models: tuple[ModelSpec, ...]
) -> BenchmarkScores:
    """Score every model on the rows every model can be scored on; rows the metric cannot score
    (`score_rows`) are left out for all models and returned as {id: reason}."""
    unscorable: dict[str, str] = {}
    for spec in models:
        unscorable.update(score_rows(metric, [to_prediction(r, spec.column) for r in rows])[2])
    kept = [r for r in rows if str(r["id"]) not in unscorable]
    results, row_scores = {}, {}
    for spec in models:
        row_scores[spec.name], results[spec.name] = metric.evaluate(
            [to_prediction(r, spec.column) for r in kept]
        )
    return BenchmarkScores(metric, kept, results, row_scores, unscorable)


def write_predictions(scores: BenchmarkScores, path: Path, models: tuple[ModelSpec, ...]) -> Path:
    """One JSON line per scored row: id, category, question, options, answers, and per model
    its answer and score."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for i, row in enumerate(scores.rows):
            line = {"id": row["id"], "category": row["category"], "question": row["question"],
                    "options": json.loads(row["options"]), "answers": json.loads(row["answers"])}
            for spec in models:
                line[spec.name] = {"answer": row[spec.column],
                                   "score": scores.row_scores[spec.name][i]}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path
