"""`lavender tune`: search-space parsing, the trials table and best preset, concurrency caps, and
one real ASHA search on the tiny models that is interrupted and resumed.

The search runs in a subprocess (`python tests/test_tune.py OUT`) with its own local Ray started
with the dashboard (Tune needs its State API; the session's `ray_local` has none). Three trials
of one worker and 4 steps, run one at a time, grid `loss.lambda` = 0, 1000, 0.001 with
`tune.metric=loss/total`: trial_001's alignment term dwarfs trial_000's total at the first rung,
so ASHA stops it there. The experiment is interrupted (SIGUSR1, as Ctrl-C) right after trial_001
ends, then resumed: trial_002 runs, trial_000 and trial_001 are left as they were.
Trainer launches: trial_000 (4 steps), trial_001 (2 steps, then stopped), trial_002 (4 steps,
after the resume); the two refusals checked in between start none.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path

import pytest
from ray import tune
from test_cluster import run_isolated

from lavender_ray.cli import main
from lavender_ray.config import ConfigError, load_config
from lavender_ray.tune.checks import check_experiment, check_tune_config, max_concurrent_trials
from lavender_ray.tune.layout import layout_of
from lavender_ray.tune.report import (
    TrialRow,
    best_preset,
    best_trial,
    trial_status,
    trials_markdown,
)
from lavender_ray.tune.space import parse_search_space
from lavender_ray.tune.trial import trial_config, trial_index

A100_NODE = {"CPU": 96, "GPU": 8, "accelerator_type:A100": 1}
V100_NODE = {"CPU": 32, "GPU": 4, "accelerator_type:V100": 1}


def base() -> dict:
    return load_config("demo").to_dict()


# ------------------------------------------------------------------------------ search space
def test_expressions_become_tune_domains_with_typed_values():
    space = parse_search_space(
        {
            "loss.lambda": "loguniform(1, 30)",
            "optim.lr": "uniform(1e-5, 1e-3)",
            "lora.r": "choice([4, 8, 16])",
            "optim.weight_decay": "choice([0, 1e-4])",
            "lora.alpha": "randint(8, 64)",
            "aligner.variant": "grid([light, sim])",
            "sd.attention_resolutions": "choice([[16], [16, 32]])",
        },
        base(),
    )
    domains = space.param_space()
    assert isinstance(domains["loss.lambda"], tune.search.sample.Float)
    assert (domains["loss.lambda"].lower, domains["loss.lambda"].upper) == (1, 30)
    assert (domains["optim.lr"].lower, domains["optim.lr"].upper) == (1e-5, 1e-3)
    assert domains["lora.r"].categories == [4, 8, 16]
    assert domains["optim.weight_decay"].categories == [0.0, 0.0001]  # YAML's '1e-4' typed
    assert isinstance(domains["lora.alpha"], tune.search.sample.Integer)
    assert domains["aligner.variant"] == {"grid_search": ["light", "sim"]}
    assert domains["sd.attention_resolutions"].categories == [[16], [16, 32]]
    assert space.keys[0] == "loss.lambda"
    assert space.trial_count(num_samples=3) == 6  # every sample runs the 2-point grid


@pytest.mark.parametrize(
    "entry, fragments",
    [
        ({"loss.lambda": "lognormal(1, 3)"},
         ["'loss.lambda'", "not a search expression", "loguniform"]),
        ({"loss.lambda": "3"}, ["not a search expression", "--set"]),
        ({"loss.lambda": "uniform(3)"}, ["takes 2 argument(s), got 1"]),
        ({"loss.lambda": "uniform(30, 1)"}, ["low < high"]),
        ({"loss.lambda": "loguniform(0, 3)"}, ["0 < low"]),
        ({"loss.lambda": "uniform(a, b)"}, ["'a' is not a number"]),
        ({"loss.nope": "uniform(0, 1)"}, ["unknown key 'loss.nope'", "valid keys", "lambda"]),
        ({"lora.r": "uniform(4, 16)"}, ["lora.r", "valid integer"]),
        ({"lora.dropout": "uniform(0, 2)"}, ["lora.dropout", "less than 1"]),
        ({"aligner.variant": "choice([sim, huge])"}, ["'huge'", "'light', 'sim' or 'deep'"]),
        ({"aligner.variant": "choice([])"}, ["non-empty list"]),
        ({"lora.r": "randint(1.5, 8)"}, ["integer bounds"]),
        ({"tune.num_samples": "randint(1, 8)"}, ["tune section cannot be searched"]),
        ({}, ["tune.search_space is empty"]),
    ],
)
def test_bad_search_spaces_name_key_expression_and_choices(entry, fragments):
    with pytest.raises(ConfigError) as err:
        parse_search_space(entry, base())
    for fragment in fragments:
        assert fragment in str(err.value)


def test_a_trial_config_is_the_base_plus_its_values_through_the_override_parser():
    cfg = trial_config(base(), {"loss.lambda": 3.5, "aligner.variant": "deep"}, "trial_007")
    assert (cfg.loss.lambda_, cfg.aligner.variant, cfg.train.run_name) == (3.5, "deep", "trial_007")
    assert trial_index("4f2a1_00007") == 7
    with pytest.raises(ValueError, match="counter"):
        trial_index("no-counter")


# ---------------------------------------------------------------------------- checks, limits
def test_metric_and_grace_period_are_checked_against_the_reports():
    assert check_tune_config(load_config("demo")) == 6  # 30 steps, a report every 5
    with pytest.raises(ConfigError, match="tune.metric='loss/nope'.*allowed: loss/total"):
        check_tune_config(load_config("demo", ["tune.metric=loss/nope"]))
    with pytest.raises(ConfigError, match=r"tune.grace_period=6 .* reports per trial \(6"):
        check_tune_config(load_config("demo", ["tune.grace_period=6"]))
    with pytest.raises(ConfigError, match="tune.trial_resources"):
        load_config("demo", ["tune.trial_resources={CPU: 0}"])


def test_concurrent_trials_are_capped_by_the_gpus_of_the_trainers_type():
    cfg = load_config("cluster_v100_a100")  # 8 A100 workers per trial, asks for 2 at once
    assert max_concurrent_trials(cfg, [A100_NODE, A100_NODE, V100_NODE]) == 2
    with pytest.warns(UserWarning, match="fits 1 trial"):
        assert max_concurrent_trials(cfg, [A100_NODE, V100_NODE, V100_NODE]) == 1
    with pytest.warns(UserWarning, match="autoscaling"):
        assert max_concurrent_trials(cfg, [V100_NODE]) == 2  # no A100 up yet: as configured
    # demo, unset: workers 2 x 0.5 CPU would fit 4 trials on 4 CPUs and 2 on 2, but a whole
    # trial also runs its driver, reads, checks and cache join (1.7 CPUs): 2 and 1 fit
    demo = load_config("demo", ["tune.max_concurrent_trials=null"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert max_concurrent_trials(demo, [{"CPU": 4}]) == 2
        assert max_concurrent_trials(demo, [{"CPU": 2}]) == 1


def test_cli_refuses_a_bad_search_before_starting_ray(capsys):
    assert main(["tune", "--preset", "demo"]) == 2
    assert "tune.search_space is empty" in capsys.readouterr().err


def test_resuming_needs_an_experiment(tmp_path):
    cfg = load_config("demo", {"train.storage_path": str(tmp_path)})
    with pytest.raises(ConfigError, match="--resume: no Tune experiment to resume at"):
        check_experiment(cfg, layout_of(cfg), resume=True)
    check_experiment(cfg, layout_of(cfg), resume=False)  # a new one may start


# ----------------------------------------------------------------------------------- report
def row(name: str, status: str, total: float | None, **params) -> TrialRow:
    metrics = {"step": 4 if status == "completed" else 2}
    if total is not None:
        metrics["loss/total"] = total
    return TrialRow(name, status, params, metrics)


def test_statuses_and_the_best_trial_prefer_full_budgets():
    assert trial_status("TERMINATED", {"step": 4}, 4) == "completed"
    assert trial_status("TERMINATED", {"step": 2}, 4) == "stopped early"
    assert trial_status("PENDING", {}, 4) == "unfinished"
    assert trial_status("ERROR", {"step": 4}, 4) == "error"
    rows = [row("trial_000", "completed", 6.0), row("trial_001", "stopped early", 1.0),
            row("trial_002", "completed", 5.0), row("trial_003", "error", None)]
    assert best_trial(rows, "loss/total", "min").name == "trial_002"
    assert best_trial(rows, "loss/total", "max").name == "trial_000"
    assert best_trial(rows[1:2], "loss/total", "min").name == "trial_001"  # none completed
    assert best_trial(rows[3:], "loss/total", "min") is None
    table = trials_markdown(rows, ["loss.lambda"], "loss/total", "trial_002")
    assert "| **trial_002** | completed |" in table and "| trial_003 | error |" in table


def test_best_preset_is_a_loadable_preset_with_the_best_values(tmp_path):
    cfg = load_config("demo")
    best = row("trial_002", "completed", 5.0, **{"loss.lambda": 2.5, "aligner.variant": "deep"})
    path = tmp_path / "best.yaml"
    path.write_text(best_preset(cfg, best, "loss/total", str(tmp_path)))
    loaded = load_config(str(path))
    assert (loaded.loss.lambda_, loaded.aligner.variant) == (2.5, "deep")
    assert loaded.train.run_name.startswith("run-")  # a new run each time it is trained
    assert "run_name" not in path.read_text()
    assert path.read_text().startswith("# Best trial of `lavender tune`")


# ------------------------------------------------------------- a real search, interrupted
SEARCH = {
    "data.sources": [{"name": "synthetic", "format": "synthetic", "num_samples": 8}],
    "train.num_workers": 1,
    "train.max_steps": 4,
    "train.report_every": 2,
    "train.checkpoint_every": 4,
    "train.run_name": "search",
    "loss.word_source": "label",  # every step matches words: the attention term is never 0
    "tune.search_space": {"loss.lambda": "grid([0, 1000, 0.001])"},
    "tune.num_samples": 1,  # one pass over the grid: 3 trials
    "tune.metric": "loss/total",
    "tune.grace_period": 1,
    "tune.max_concurrent_trials": 1,
    "tune.targets": "precomputed",
}


class InterruptOnce(tune.Callback):
    """Send SIGUSR1 to the driver (Tune stops and saves, as on Ctrl-C) once `trial` has ended."""

    def __init__(self, marker: str, trial: str) -> None:
        self.marker, self.trial = marker, trial

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if str(trial) == self.trial and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGUSR1)


def _rows(summary) -> dict:
    keep = ("step", "loss/total", "training_iteration")
    return {
        r.name: {"status": r.status, "params": r.params, **{k: r.metrics.get(k) for k in keep}}
        for r in summary.rows
    }


def _results(experiment_dir: str, names: list[str]) -> dict[str, str]:
    return {n: Path(experiment_dir, n, "result.json").read_text() for n in names}


def search_scenario(out: Path) -> None:
    """Search, interrupt, check the refusals, resume; write what happened to scenario.json."""
    import ray

    from lavender_ray.tune import run_tune

    try:  # run_tune starts a local Ray sized to the search (resources.connect)
        cfg = load_config("demo", {**SEARCH, "train.storage_path": str(out / "store")})
        first = run_tune(cfg, callbacks=[InterruptOnce(str(out / "interrupted"), "trial_001")])
        exp = first.layout.experiment_dir
        ended = [r.name for r in first.rows if r.status != "unfinished"]
        before = _results(exp, ended)
        changed = load_config("demo", {**SEARCH, "train.storage_path": str(out / "store"),
                                       "optim.lr": 0.5})
        refusals = {}
        for name, (again, resume) in {
            "fresh_over_existing": (cfg, False),
            "resume_changed": (changed, True),
        }.items():
            try:
                run_tune(again, resume=resume)
            except ConfigError as err:
                refusals[name] = str(err)
        second = run_tune(cfg, resume=True)
        scenario = {
            "first": _rows(first), "first_interrupted": first.interrupted,
            "second": _rows(second), "second_interrupted": second.interrupted,
            "ended_first": ended, "unchanged": before == _results(exp, ended),
            "refusals": refusals, "experiment": exp,
            "best": second.best.name if second.best else None,
            "outputs": [second.layout.table_md, second.layout.table_csv, second.layout.best_preset],
        }
        (out / "scenario.json").write_text(json.dumps(scenario))
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tune")
    run_isolated(Path(__file__), out, timeout_s=560)  # < pytest's 600 s
    return json.loads((out / "scenario.json").read_text())


@pytest.mark.slow  # a Ray Tune search of TorchTrainer trials
def test_asha_stops_the_trial_whose_metric_is_worse_at_the_first_rung(scenario):
    first = scenario["first"]
    assert first["trial_000"]["status"] == "completed" and first["trial_000"]["step"] == 4
    stopped = first["trial_001"]
    assert stopped["params"] == {"loss.lambda": 1000.0}
    assert stopped["status"] == "stopped early"
    assert (stopped["step"], stopped["training_iteration"]) == (2, 1)
    assert stopped["loss/total"] > first["trial_000"]["loss/total"]


@pytest.mark.slow  # a Ray Tune search of TorchTrainer trials
def test_interrupting_leaves_the_rest_unfinished_and_resuming_completes_it(scenario):
    assert scenario["first_interrupted"]  # trial_002 unfinished or not created yet
    assert scenario["first"].get("trial_002", {"status": "unfinished"})["status"] == "unfinished"
    assert scenario["ended_first"] == ["trial_000", "trial_001"]
    second = scenario["second"]
    assert not scenario["second_interrupted"]
    assert {n: r["status"] for n, r in second.items()} == {
        "trial_000": "completed", "trial_001": "stopped early", "trial_002": "completed"}
    assert scenario["unchanged"]  # finished trials were not run again: same result files
    assert second["trial_002"]["step"] == 4


@pytest.mark.slow  # a Ray Tune search of TorchTrainer trials
def test_existing_experiments_are_not_overwritten_and_resume_needs_the_same_config(scenario):
    refusals = scenario["refusals"]
    assert "a Tune experiment exists" in refusals["fresh_over_existing"]
    assert "--resume" in refusals["fresh_over_existing"]
    assert "optim.lr: 0.001 -> 0.5" in refusals["resume_changed"]


@pytest.mark.slow  # a Ray Tune search of TorchTrainer trials
def test_the_search_writes_a_trials_table_and_a_best_preset_for_training(scenario):
    table_md, table_csv, preset = scenario["outputs"]
    with open(table_csv) as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"trial_000", "trial_001", "trial_002"}
    assert [r["best"] for r in rows.values()].count("true") == 1
    best = scenario["best"]
    assert best in ("trial_000", "trial_002") and rows[best]["best"] == "true"
    assert rows[best]["checkpoint"].endswith("checkpoint_step0000004")
    assert f"**{best}**" in Path(table_md).read_text()
    cfg = load_config(preset)
    assert math.isclose(cfg.loss.lambda_, scenario["second"][best]["params"]["loss.lambda"])
    assert cfg.train.run_name.startswith("run-") and cfg.pipeline.mode == "stream"


if __name__ == "__main__":
    search_scenario(Path(sys.argv[1]))
