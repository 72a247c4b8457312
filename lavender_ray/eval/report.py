"""The evaluation's results as people and programs read them: `results.json` (NaN-free) and the
Markdown tables of `results.md` (benchmarks x models, attention alignment, rejected rows)."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lavender_ray.config import LavenderConfig
from lavender_ray.eval.models import ADAPTER, BASE
from lavender_ray.eval.scoring import BenchmarkScores


def finite(value: Any) -> Any:
    """NaN/inf -> None, recursively, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def results_dict(
    trained_dir: Path, run_cfg: LavenderConfig, sources: dict[str, str],
    scored: dict[str, BenchmarkScores], agreement: dict[str, dict[str, float]],
    probe_words: int, probe_samples: int, rejects: list[dict[str, str]],
    probe_source: str = "synthetic",
) -> dict[str, Any]:
    """The JSON-ready results (see `results.json`)."""
    return finite({
        "models": {BASE.name: run_cfg.vlm.model_id, ADAPTER.name: str(trained_dir)},
        "benchmarks": {
            name: {"metric": s.metric.name, "path": sources[name], "rows": len(s.rows),
                   "results": {m: asdict(r) for m, r in s.results.items()} if s.rows else {}}
            for name, s in scored.items()
        },
        "attention": {"probe_samples": probe_samples, "probe_source": probe_source,
                      "words": probe_words, "maps": agreement},
        "rejects": rejects,
    })  # fmt: skip


def format_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "hits":
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def markdown_report(results: dict[str, Any]) -> str:
    """The Markdown tables of `results_dict`'s output."""
    lines = ["# Evaluation", "",
             f"base model: `{results['models'][BASE.name]}`  ",
             f"adapter: `{results['models'][ADAPTER.name]}`", "",
             "## Benchmarks", "",
             f"| benchmark | metric | rows | {BASE.name} | {ADAPTER.name} | change |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, bench in results["benchmarks"].items():
        if not bench["results"]:
            lines.append(f"| {name} | {bench['metric']} | 0 | n/a | n/a | no row could be scored |")
            continue
        base, adapter = bench["results"][BASE.name], bench["results"][ADAPTER.name]
        unit = base["unit"]
        change = adapter["score"] - base["score"]
        lines.append(
            f"| {name} | {bench['metric']} ({unit}, max {format_number(base['max_score'], unit)}) "
            f"| {bench['rows']} | {format_number(base['score'], unit)} | "
            f"{format_number(adapter['score'], unit)} | {change:+.2f} |"
        )
    for name, bench in results["benchmarks"].items():
        details = bench["results"][BASE.name]["details"] if bench["results"] else {}
        if details:
            lines += ["", f"### {name}: details", "", f"| | {BASE.name} | {ADAPTER.name} |",
                      "|---|---:|---:|"]
            after = bench["results"][ADAPTER.name]["details"]
            for key in details:
                lines.append(
                    f"| {key} | {format_number(details[key])} | {format_number(after.get(key))} |"
                )
    attention = results["attention"]
    lines += ["", "## Attention alignment with the SD maps", "",
              f"{attention['probe_samples']} probe samples, {attention['words']} words; "
              "per-word means (MSE lower is better, Pearson and IoU higher).", "",
              "| maps | MSE | Pearson | IoU top-10% |", "|---|---:|---:|---:|"]  # fmt: skip
    for panel, values in attention["maps"].items():
        mse, pearson, iou = (format_number(values[k]) for k in ("mse", "pearson", "iou_top10"))
        lines.append(f"| {panel} | {mse} | {pearson} | {iou} |")
    lines += ["", f"## Rejected rows ({len(results['rejects'])})", ""]
    if results["rejects"]:
        lines += ["| id | benchmark | stage | reason | detail |", "|---|---|---|---|---|"]
        lines += [f"| {r['id']} | {r['source']} | {r['stage']} | {r['reason']} | "
                  f"{r['detail'][:80].replace('|', '/')} |" for r in results["rejects"]]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"
