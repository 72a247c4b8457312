"""What a `lavender tune` run leaves for people: a trials table and the best config as a preset.

    trials.md / trials.csv   one row per trial: status, sampled values, last reported metrics
    best.yaml                the experiment's config + the best trial's values, a preset for
                             `lavender train --preset <experiment dir>/best.yaml`

Statuses: `completed` (reached train.max_steps), `stopped early` (ended before it: ASHA's
decision), `unfinished` (the experiment was interrupted: `lavender tune --resume` continues it),
`error` (Tune wrote the traceback into the trial's folder). The best trial has the best last
`tune.metric` among completed trials (the ones that used the whole step budget), or among all
trials when none completed; a trial whose last report matched no word ranks last on loss/att
and loss/total (`objective`).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from lavender_ray.config import LavenderConfig, apply_overrides

MATCHED = "align/matched_words"
METRIC_COLUMNS = ("loss/total", "loss/lm", "loss/att", MATCHED)
ALIGNMENT_TERMS = ("loss/att", "loss/total")  # the metrics the alignment term is part of
TUNE_OBJECTIVE = "tune/objective"  # the key ASHA ranks reports by: `objective`


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table shows it."""

    name: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def metric(self, key: str) -> float | None:
        return finite(self.metrics.get(key))


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def trial_status(tune_status: str, metrics: dict[str, Any], max_steps: int) -> str:
    """Tune's status (TERMINATED, ERROR, PENDING, ...) + the last metrics -> `completed`,
    `stopped early`, `unfinished` or `error` (see the module docstring)."""
    if tune_status == "ERROR":
        return "error"
    if tune_status != "TERMINATED":
        return "unfinished"
    return "completed" if int(metrics.get("step") or 0) >= max_steps else "stopped early"


def objective(metrics: Mapping[str, Any], metric: str, mode: str) -> Any:
    """What trials are ranked by (ASHA's `TUNE_OBJECTIVE` and `best_trial`): the report's
    `metric`, except that a report in which no word matched ranks last when the metric holds
    the alignment term (`ALIGNMENT_TERMS`): there `loss/att` is 0 because nothing was aligned,
    not because the maps agree, and a search would otherwise prefer the trials that match no
    word (`loss.word_source=predicted` on an untrained model, `loss.matching=exact`). The
    largest finite float, not inf: ASHA's rung cutoff interpolates between trials' values, and
    inf - inf is nan."""
    value = metrics.get(metric)
    if metric in ALIGNMENT_TERMS and value is not None and metrics.get(MATCHED) == 0:
        return sys.float_info.max if mode == "min" else -sys.float_info.max
    return value


def best_trial(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    """The row with the best `objective` among completed rows (all rows if none completed)."""
    def score(row: TrialRow) -> float | None:
        return finite(objective(row.metrics, metric, mode))

    completed = [r for r in rows if r.status == "completed" and score(r) is not None]
    candidates = completed or [r for r in rows if score(r) is not None]
    if not candidates:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(candidates, key=lambda r: sign * score(r))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _columns(keys: list[str], metric: str) -> list[str]:
    metrics = [metric] + [m for m in METRIC_COLUMNS if m != metric]
    return ["trial", "status", *keys, *metrics, "step"]


def _cells(row: TrialRow, keys: list[str], metric: str) -> list[str]:
    metrics = [metric] + [m for m in METRIC_COLUMNS if m != metric]
    return [
        row.name,
        row.status,
        *(_format(row.params.get(k)) for k in keys),
        *(_format(row.metric(m)) for m in metrics),
        _format(row.metrics.get("step")),
    ]


def trials_markdown(rows: list[TrialRow], keys: list[str], metric: str, best: str | None) -> str:
    """A Markdown table, the best trial's name in bold."""
    columns = _columns(keys, metric)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = _cells(row, keys, metric)
        if row.name == best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def trials_csv(rows: list[TrialRow], keys: list[str], metric: str, best: str | None) -> str:
    """The same table as CSV, plus `best` and `checkpoint` (the trial's last) columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*_columns(keys, metric), "best", "checkpoint"])
    for row in rows:
        extra = [str(row.name == best).lower(), row.checkpoint or ""]
        writer.writerow([*_cells(row, keys, metric), *extra])
    return out.getvalue()


def best_preset(base: LavenderConfig, best: TrialRow, metric: str, experiment_dir: str) -> str:
    """YAML preset: `base` + the best trial's values, with a header saying where it came from.
    It names no `train.run_name`, so each training of it is a new run."""
    raw = apply_overrides(base.to_dict(), best.params)
    del raw["train"]["run_name"]
    values = ", ".join(f"{k}={_format(v)}" for k, v in best.params.items())
    header = [
        f"# Best trial of `lavender tune` in {experiment_dir}: {best.name}",
        f"#   {metric}={_format(best.metric(metric))} at step {_format(best.metrics.get('step'))}",
        f"#   sampled: {values}",
        f"# Train it: lavender train --preset {experiment_dir}/best.yaml",
    ]
    LavenderConfig.from_dict(raw)  # the preset must load
    return "\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False)
