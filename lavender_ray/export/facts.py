"""What a run recorded about itself, as the model card reports it: the metrics history, the
rejected records and the evaluation report (each absent when the run did not write it)."""

from __future__ import annotations

import collections
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lavender_ray.config import LavenderConfig
from lavender_ray.eval.report import markdown_report
from lavender_ray.rejects import count_rejects, read_rejects
from lavender_ray.runs.locate import LocatedRun
from lavender_ray.storage import is_uri

REJECTS_DIR = "rejects"
EVAL_DIR = "eval"
EVAL_REPORTS = ("results.md", "results.json")
EVAL_GLOB = "eval-*"


@dataclass(frozen=True)
class RunFacts:
    """metrics: the reported metrics, oldest first; rejects_by_source / rejects_by_reason:
    counts per source and per "<stage>/<reason>" read from the folder `rejects_note` names
    (None: not available, `rejects_note` says why); evaluation: the evaluation report as
    Markdown, from `evaluation_file`; run_dir: the run folder these files were found in."""

    metrics: list[dict[str, float]] = field(default_factory=list)
    metrics_file: Path | None = None
    rejects_by_source: dict[str, int] | None = None
    rejects_by_reason: dict[str, int] | None = None
    rejects_note: str = ""
    evaluation: str | None = None
    evaluation_file: Path | None = None
    run_dir: Path | None = None

    def shown(self, path: str | Path) -> str:
        """`path` for the card: `<run name>/...` inside the run folder, else as it is."""
        path = Path(path)
        if self.run_dir is not None and path.is_relative_to(self.run_dir):
            return str(Path(self.run_dir.name) / path.relative_to(self.run_dir))
        return str(path)


def run_facts(source: LocatedRun, cfg: LavenderConfig) -> RunFacts:
    metrics_file = source.metrics_file()
    by_source, by_reason, note = rejects_of(source, cfg)
    evaluation_file = evaluation_report(source)
    return RunFacts(
        metrics=read_metrics(metrics_file) if metrics_file else [],
        metrics_file=metrics_file,
        rejects_by_source=by_source,
        rejects_by_reason=by_reason,
        rejects_note=note,
        evaluation=read_evaluation(evaluation_file) if evaluation_file else None,
        evaluation_file=evaluation_file,
        run_dir=source.run_dir,
    )


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The JSON lines of `path`; a line that does not parse is left out, with a warning."""
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad:
        warnings.warn(f"{path}: {bad} line(s) are not JSON; the card leaves them out", stacklevel=2)
    return rows


def rejects_of(
    source: LocatedRun, cfg: LavenderConfig
) -> tuple[dict[str, int] | None, dict[str, int] | None, str]:
    """Reject counts per source and per stage/reason of the run's rejects folder
    (`data.rejects_path`, else `<run>/rejects`), or why they are not available."""
    if cfg.data.rejects_path:
        folder = cfg.data.rejects_path
    elif source.run_dir is not None:
        folder = str(source.run_dir / REJECTS_DIR)
    else:
        return None, None, "not available (the export was not made from its run folder)"
    if is_uri(folder):
        return None, None, f"not read: they are at {folder} (export reads local folders only)"
    sources = read_rejects(folder).column("source").to_pylist()
    return dict(collections.Counter(sources)), count_rejects(folder), folder


def evaluation_report(source: LocatedRun) -> Path | None:
    """`<run>/eval/results.{md,json}`, else the newest `<saved run>/eval-*/results.{md,json}`."""
    folders = [source.run_dir / EVAL_DIR] if source.run_dir else []
    folders += sorted(source.saved_run.glob(EVAL_GLOB), reverse=True)
    for folder in folders:
        for name in EVAL_REPORTS:
            if (folder / name).is_file():
                return folder / name
    return None


def read_evaluation(path: Path) -> str:
    """The report's tables as Markdown, headings one level down and without its title (they
    sit under the card's "Evaluation")."""
    text = path.read_text()
    if path.suffix == ".json":
        text = markdown_report(json.loads(text))
    lines = [line for line in text.splitlines() if not re.match(r"# \S", line)]
    return "\n".join(re.sub(r"^(#+) ", r"\1# ", line) for line in lines).strip()
