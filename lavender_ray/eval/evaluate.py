"""Evaluation of a trained run against its base model: benchmark metrics and attention alignment.

    report = evaluate(cfg, trained_dir, ["TextVQA_VAL", "synthetic"], out_dir)

1. Benchmarks: each name is a key of `eval.benchmarks` (a local path or URI of a VLMEvalKit TSV,
   Parquet or JSONL file, read by `pipeline.benchmarks.read_benchmark`) or ``synthetic`` (generated
   into `<out>/benchmarks/` in every format, the TSV evaluated). All benchmarks stream through
   one pipeline: the base model's actor pool, then the adapter's (`eval.inference`). Each
   benchmark is scored with its metric (`eval.metrics.metric_for`) for both models.
2. Attention alignment: on a held-out probe set with SD targets (`eval.probe_path`, else
   `eval.probe_samples` synthetic records with targets from the run's `sd` section), per-word MSE,
   Pearson correlation and top-10% IoU of the raw and the aligned VLM maps against the SD maps,
   before (base model) and after (adapter). Both use the run's trained Aligner, so the change
   between them is what training did to the VLM's attention.
3. Report folder (the tables: `eval.report`)::

       results.md, results.json      the tables (benchmarks x models, attention, rejects)
       predictions/<benchmark>.jsonl one line per row: question, answers, each model's answer
                                     and score
       probes/<record id>.png        image | SD | VLM before | VLM after | aligned before | after
       rejects/                      rows that could not be used, with id, stage and reason
       config.yaml                   the resolved evaluation config

A malformed row never stops the run: the reader, the inference stage and the scorer write it to
`rejects/` with its id and reason and it is left out of every model's score.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray

from lavender_ray import console
from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.eval.inference import add_predictions, tag_benchmark
from lavender_ray.eval.metrics import Metric, metric_for
from lavender_ray.eval.models import ADAPTER, BASE
from lavender_ray.eval.probes import probe_agreement, probe_folder, write_probe_pngs
from lavender_ray.eval.report import format_number, markdown_report, results_dict
from lavender_ray.eval.scoring import BenchmarkScores, score_benchmark, write_predictions
from lavender_ray.eval.synthetic_bench import write_synthetic_benchmark
from lavender_ray.pipeline.benchmarks import read_benchmark
from lavender_ray.placement import check_shared_folders, cluster_nodes
from lavender_ray.rejects import read_rejects, summarise_rejects, write_rejects
from lavender_ray.resources import connect
from lavender_ray.runs import trained_config
from lavender_ray.runs.locate import LocatedRun, locate
from lavender_ray.schema import Reject
from lavender_ray.storage import filesystem_and_path, is_uri
from lavender_ray.watchdog import stall_watchdog

SYNTHETIC = "synthetic"
SCORE_STAGE = "score"
MODELS = (BASE, ADAPTER)


@dataclass
class EvalReport:
    """Where an evaluation wrote its outputs, and the results as written to `results.json`."""

    out_dir: Path
    markdown: Path
    json: Path
    probes: list[Path]
    results: dict[str, Any]
    adapter: str  # which saved run was evaluated, and why that one (`LocatedRun.how`)


# ------------------------------------------------------------------------------ resolution
def split_names(text: str) -> list[str]:
    """`--bench` value "A, B,,C" -> ["A", "B", "C"]."""
    return [name.strip() for name in text.split(",") if name.strip()]


def benchmark_sources(cfg: LavenderConfig, names: list[str], out_dir: Path) -> dict[str, str]:
    """Benchmark name -> file to read; ``synthetic`` (unless a configured key) is generated now
    into `<out_dir>/benchmarks/`. Names must have passed `benchmark_metrics`. Raises
    `ConfigError` for a configured file that does not exist."""
    sources = {}
    for name in names:
        if name in cfg.eval.benchmarks:
            sources[name] = check_exists(cfg.eval.benchmarks[name], name)
        else:
            files = write_synthetic_benchmark(out_dir / "benchmarks", cfg.eval.synthetic_samples,
                                              seed=cfg.data.seed + 2000)
            sources[name] = str(files["tsv"])
    return sources


def check_exists(path: str, name: str) -> str:
    """`path` if the file exists (local or URI), else `ConfigError` naming the benchmark."""
    fs, inner = filesystem_and_path(path)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        raise ConfigError(f"eval.benchmarks.{name}={path!r}: the file does not exist")
    return path


def benchmark_metrics(cfg: LavenderConfig, names: list[str]) -> dict[str, Metric]:
    """Each benchmark's metric. Raises `ConfigError` (before anything runs) when no name is
    given, a name is neither an `eval.benchmarks` key nor ``synthetic``, or has no metric."""
    if not names:
        raise ConfigError("no benchmark given; name one or more with --bench NAME[,NAME]")
    for name in names:
        if name not in cfg.eval.benchmarks and name != SYNTHETIC:
            known = ", ".join(sorted(cfg.eval.benchmarks)) or "none configured"
            raise ConfigError(
                f"benchmark {name!r} is not a key of eval.benchmarks ({known}) nor {SYNTHETIC!r}"
            )
    try:
        return {name: metric_for(name, cfg.eval.metrics) for name in names}
    except ValueError as err:
        raise ConfigError(str(err)) from None


# ------------------------------------------------------------------------------ benchmarks
def run_benchmarks(
    cfg: LavenderConfig, trained_dir: Path, sources: dict[str, str], metrics: dict[str, Metric],
    rejects_dir: str,
) -> dict[str, BenchmarkScores]:
    """Every benchmark through both models' actor pools in one pipeline, then scored. The
    command's progress display counts the rows as they leave the pipeline (both models done)."""
    tagged = [
        tag_benchmark(read_benchmark(path, name, rejects_dir, num_cpus=cfg.data.read_num_cpus),
                      name, metrics[name].prompt, cfg.data.read_num_cpus)
        for name, path in sources.items()
    ]
    ds = tagged[0].union(*tagged[1:]) if len(tagged) > 1 else tagged[0]
    rows: list[dict[str, Any]] = []
    predicted = add_predictions(ds, cfg, str(trained_dir), list(MODELS), rejects_dir)
    models = ", ".join(model.name for model in MODELS)
    with console.progress(f"evaluate ({models})", unit="rows") as shown:
        for batch in predicted.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows.extend(batch.to_pylist())
            shown.set(len(rows))
    by_benchmark: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
    for row in sorted(rows, key=lambda r: (r["benchmark"], _id_order(r["id"]))):
        by_benchmark[row["benchmark"]].append(row)
    scored = {name: score_benchmark(metrics[name], bench_rows, MODELS)
              for name, bench_rows in by_benchmark.items()}
    rejects = [Reject(rid, name, SCORE_STAGE, "unscorable", why)
               for name, result in scored.items() for rid, why in result.unscorable.items()]
    write_rejects(rejects, rejects_dir, SCORE_STAGE)
    return scored


def _id_order(rid: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the others alphabetically."""
    return (0, int(rid)) if rid.isdigit() else (1, rid)


# ------------------------------------------------------------------------------- attention
def probe_before_after(config: dict[str, Any], trained_dir: str) -> list[Any]:
    """Ray task body: `eval.generation.probe_before_after`, imported in the task (the VLM stack
    loads there, never in this driver)."""
    from lavender_ray.eval.generation import probe_before_after as probe

    return probe(config, trained_dir)


def start_probe(cfg: LavenderConfig, trained_dir: Path) -> Any:
    """Submit `probe_before_after` as a Ray task (`eval.num_cpus`, `eval.num_gpus`)."""
    task = ray.remote(probe_before_after).options(num_cpus=cfg.eval.num_cpus,
                                                  num_gpus=cfg.eval.num_gpus)
    return task.remote(cfg.to_dict(), str(trained_dir))


# ----------------------------------------------------------------------------------- entry
def default_out_dir(trained_dir: str | Path) -> Path:
    """`<trained dir>/eval-<timestamp>`."""
    return Path(trained_dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"


def check_local(path: str | Path | None, flag: str) -> None:
    """Evaluation reads the run and writes its report as files: a URI is refused, naming it."""
    if path is not None and is_uri(str(path)):
        raise ConfigError(
            f"{flag}={str(path)!r}: lavender evaluate reads and writes folders, not URIs; copy "
            "the run's export to a local or shared folder first (e.g. `aws s3 cp --recursive`)"
        )


def trained_run(path: str | Path) -> LocatedRun:
    """The saved run `--adapter` names (`runs.locate.locate`); `ConfigError` naming the flag."""
    check_local(path, "--adapter")
    try:
        return locate(path)
    except ConfigError as err:
        raise ConfigError(f"--adapter: {err}") from None


def evaluate(
    cfg: LavenderConfig, trained_dir: str | Path, benchmarks: list[str],
    out_dir: str | Path | None = None,
) -> EvalReport:
    """Evaluate the saved run `trained_dir` names (a run folder, a checkpoint or a saved run:
    `runs.locate.locate`) and its base model on `benchmarks` (names of `eval.benchmarks` keys or
    ``synthetic``) and on the attention probe; write the report into `out_dir` (default
    `<trained_dir>/eval-<timestamp>`). Runs on the connected Ray, else a
    local one sized to the evaluation (`resources.connect`); the paths are checked first."""
    check_local(out_dir, "--out")
    source = trained_run(trained_dir)
    out_dir = out_dir if out_dir is not None else default_out_dir(trained_dir)
    trained_dir = source.saved_run
    run_cfg = trained_config(trained_dir)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"--out {str(out_dir)!r} is a file; give a folder for the report")
    if cfg.vlm.model_id != run_cfg.vlm.model_id:
        warnings.warn(
            f"vlm.model_id={cfg.vlm.model_id!r} of the given config is not the run's "
            f"{run_cfg.vlm.model_id!r}; the models come from the run (its config.yaml), the "
            "eval and data sections from the given config",
            stacklevel=2,
        )
    metrics = benchmark_metrics(cfg, benchmarks)
    for name in benchmarks:
        if name in cfg.eval.benchmarks:
            check_exists(cfg.eval.benchmarks[name], name)  # before any folder is made
    if cfg.eval.probe_path:
        probe_folder(cfg.eval.probe_path)
    # absolute: Ray Data tasks resolve a relative folder in their own working folder
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    rejects_dir = str(out / "rejects")
    sources = benchmark_sources(cfg, benchmarks, out)
    connect(cfg, "evaluate")
    check_shared_folders(cfg, cluster_nodes(), "--adapter and --out", cfg.eval.num_gpus > 0)
    with stall_watchdog(cfg.train.stall_timeout_s):
        probe = start_probe(cfg, trained_dir)  # runs while the benchmarks stream
        scored = run_benchmarks(cfg, trained_dir, sources, metrics, rejects_dir)
        samples = ray.get(probe)
    for name, scores in scored.items():
        write_predictions(scores, out / "predictions" / f"{name}.jsonl", MODELS)
    pngs = write_probe_pngs(samples, out / "probes")
    results = results_dict(
        trained_dir, run_cfg, sources, scored, probe_agreement(samples),
        sum(len(s.words) for s in samples), len(samples), read_rejects(rejects_dir).to_pylist(),
        cfg.eval.probe_path or "synthetic",
    )  # fmt: skip
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    md_path = out / "results.md"
    md_path.write_text(markdown_report(results))
    return EvalReport(out, md_path, json_path, pngs, results, source.how)


def describe(report: EvalReport) -> str:
    """The headline numbers and where the report went, for people (the evaluated run is the
    caller's to name: the demo lists it with its other outputs)."""
    lines = []
    for name, bench in report.results["benchmarks"].items():
        scores = "  ".join(
            f"{model}={format_number(r['score'], r['unit'])}"
            for model, r in bench["results"].items()
        )
        units = {r["unit"] for r in bench["results"].values()}
        unit = f"{units.pop()}, " if len(units) == 1 else ""
        lines.append(f"{name:<20} {bench['metric']} ({unit}{bench['rows']} rows): {scores}")
    lines += [
        f"report:      {report.markdown}",
        f"results:     {report.json}",
        f"predictions: {report.out_dir / 'predictions'}/",
        f"probes:      {report.out_dir / 'probes'}/  ({len(report.probes)} PNGs: image | SD | "
        "VLM before | after | aligned before | after; records: "
        f"{report.results['attention']['probe_source']}, eval.probe_path)",
        summarise_rejects(str(report.out_dir / "rejects")),
    ]
    return "\n".join(lines)
