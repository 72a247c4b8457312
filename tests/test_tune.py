"""`lavender tune`: search-space parsing, the trials table and best preset, concurrency caps.

The real search (ASHA stopping a trial, Ctrl-C, the refusals, `--resume`) runs from the command
line on a user's own files in `test_user_journey.py`.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
from ray import tune

from lavender_ray.cli import main
from lavender_ray.config import ConfigError, load_config
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import Reject
from lavender_ray.tune.checks import check_experiment, check_tune_config, max_concurrent_trials
from lavender_ray.tune.experiment import TuneSummary, describe
from lavender_ray.tune.layout import layout_of
from lavender_ray.tune.report import (
    MATCHED,
    TrialRow,
    best_preset,
    best_trial,
    objective,
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


def test_a_trial_that_matched_no_word_ranks_last_on_the_alignment_metrics():
    """loss/att is 0 where no word matched (nothing aligned, nothing measured): minimising it
    picked such a trial as best (seen by hand: `best: trial_000 loss/att=0`, a plain-SFT trial).
    ASHA ranks reports by `objective` (finite: its rung cutoff interpolates) and so does
    `best_trial`; the table keeps the measured values."""
    aligned = TrialRow("trial_000", "completed", {}, {"step": 4, "loss/att": 0.2,
                                                      "loss/total": 6.2, MATCHED: 3.5})
    unaligned = TrialRow("trial_001", "completed", {}, {"step": 4, "loss/att": 0.0,
                                                        "loss/total": 5.9, MATCHED: 0.0})
    for metric in ("loss/att", "loss/total"):
        assert best_trial([unaligned, aligned], metric, "min").name == "trial_000"
        assert objective(unaligned.metrics, metric, "min") == sys.float_info.max
        assert objective(unaligned.metrics, metric, "max") == -sys.float_info.max
        assert objective(aligned.metrics, metric, "min") == aligned.metrics[metric]
    assert best_trial([unaligned, aligned], "loss/lm", "min") is None  # not reported: none
    assert objective(unaligned.metrics, "loss/lm", "min") is None
    assert best_trial([unaligned], "loss/att", "min").name == "trial_001"  # the only one
    cutoff = np.nanpercentile([-objective(unaligned.metrics, "loss/att", "min"), -0.2], 50)
    assert math.isfinite(cutoff)  # ASHA's cutoff (mode min: rewards negated) stays a number
    table = trials_markdown([unaligned, aligned], [], "loss/att", "trial_000")
    assert "| trial_001 | completed | 0 |" in table  # the measured loss/att, not the rank


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


def test_the_summary_names_the_best_values_its_checkpoint_and_the_rejects(tmp_path):
    cfg = load_config("demo", [f"train.storage_path={tmp_path}", "train.run_name=search"])
    layout = layout_of(cfg)
    checkpoint = f"{layout.runs_dir}/trial_001/checkpoint_step0000004"
    best = TrialRow("trial_001", "completed", {"loss.lambda": 10.0, "aligner.variant": "deep"},
                    {"loss/att": 0.07725, "step": 4}, checkpoint)
    rows = [row("trial_000", "completed", 6.0), best]
    write_rejects([Reject("m1", "mine", "vlm", "answer_truncated", "409 tokens")],
                  f"{layout.runs_dir}/trial_001/rejects", "vlm")
    printed = describe(TuneSummary(layout, rows, best, "loss/att", 2, False, 1,
                                   f"{layout.runs_dir}/trial_001/rejects"))
    assert "best:       trial_001  loss/att=0.07725  loss.lambda=10  aligner.variant=deep" in printed
    assert f"checkpoint: {checkpoint}  (lavender evaluate --adapter <it>" in printed
    assert f"rejects: 1  [{layout.runs_dir}/trial_001/rejects]" in printed
    assert "vlm/answer_truncated  1" in printed and "mine/m1: 409 tokens" in printed
    assert "interrupted" not in printed
    stopped = describe(TuneSummary(layout, rows[:1], None, "loss/att", 2, True, 1, None))
    assert stopped.endswith(f"interrupted: continue with `lavender tune --resume --set "
                            f"train.storage_path={tmp_path} --set train.run_name=search`")
