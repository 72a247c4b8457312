"""Experiment tracking (`train.report_to`), `<run>/metrics.jsonl`, the attention PNGs and
`report/curves.png`.

These are the quick tests: the config, the driver's checks before training, the metrics file and
the curves. What a real run reports to `report_to=[tensorboard, mlflow, wandb]` (a real MLflow
server on 127.0.0.1, W&B offline), each tracker read back with its own reader, is checked in
`test_train` on its stream-mode run.
"""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image
from shared_runs import TRACKERS, free_port

from lavender_ray.config import ConfigError, load_config
from lavender_ray.runs import CURVES_FILE, METRICS_FILE, TRACKING_FILE
from lavender_ray.train.reporting import TrainState
from lavender_ray.train.trackers import RunTracker
from lavender_ray.train.tracking import (
    check_trackers,
    config_params,
    mlflow_uri,
    start_tracking,
    tracked,
    wandb_settings,
)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- config, checks
def test_the_config_refuses_an_unknown_tracker_naming_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["train.report_to=[tensorboard,neptune]"])
    message = str(err.value)
    assert "train.report_to" in message and "'neptune'" in message
    assert "tensorboard, mlflow, wandb" in message
    assert load_config("demo").train.report_to == []  # default: no tracker
    assert load_config("demo", ["train.report_to=mlflow"]).train.report_to == ["mlflow"]


@pytest.mark.parametrize("tracker", TRACKERS)
def test_a_tracker_that_is_not_installed_is_refused_before_training(monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import <tracker>` raises ImportError
    cfg = load_config("demo", [f"train.report_to=[{tracker}]"])
    with pytest.raises(ConfigError) as err:
        check_trackers(cfg, env={})
    assert f"pip install {tracker}" in one_line(err)


def test_an_unreachable_mlflow_server_is_refused_naming_the_uri():
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = load_config("demo", ["train.report_to=[mlflow]", f"train.mlflow_tracking_uri={uri}"])
    with pytest.raises(ConfigError) as err:
        check_trackers(cfg, env={})
    message = one_line(err)
    assert uri in message and "unreachable" in message and "train.mlflow_tracking_uri" in message
    env_only = load_config("demo", ["train.report_to=[mlflow]"])
    with pytest.raises(ConfigError) as err:
        check_trackers(env_only, env={"MLFLOW_TRACKING_URI": uri})
    assert "MLFLOW_TRACKING_URI" in one_line(err)


def test_the_mlflow_uri_comes_from_the_config_the_environment_or_the_run_folder(tmp_path):
    cfg = load_config("demo", [f"train.storage_path={tmp_path}", "train.run_name=r"])
    run_dir = f"{tmp_path}/r"
    assert mlflow_uri(cfg, run_dir, {}) == (f"sqlite:///{run_dir}/mlruns/mlflow.db",
                                            "the run folder")
    assert mlflow_uri(cfg, run_dir, {"MLFLOW_TRACKING_URI": "http://h:1"})[0] == "http://h:1"
    given = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"mlflow_tracking_uri": "http://c:2"})})
    assert mlflow_uri(given, run_dir, {"MLFLOW_TRACKING_URI": "http://h:1"})[0] == "http://c:2"
    with pytest.raises(ConfigError, match="object storage"):
        mlflow_uri(cfg, "s3://bucket/runs/r", {})


def test_wandb_runs_offline_without_a_key_and_online_without_one_is_refused(tmp_path):
    no_netrc = {"NETRC": str(tmp_path / "missing")}
    assert wandb_settings("/runs/r", no_netrc)[::2] == ("offline", "/runs/r")
    mode, why, folder = wandb_settings("/runs/r", {**no_netrc, "WANDB_MODE": "offline",
                                                   "WANDB_API_KEY": "k" * 40,
                                                   "WANDB_DIR": "/w"})
    assert (mode, why, folder) == ("offline", "WANDB_MODE=offline", "/w")
    assert wandb_settings("/runs/r", {**no_netrc, "WANDB_API_KEY": "k" * 40})[0] == "online"
    with pytest.raises(ConfigError) as err:
        wandb_settings("/runs/r", {**no_netrc, "WANDB_MODE": "online"})
    assert "WANDB_API_KEY" in one_line(err)
    with pytest.raises(ConfigError, match="WANDB_DIR"):
        wandb_settings("s3://bucket/runs/r", no_netrc)


def test_offline_wandb_is_said_in_one_line_naming_the_run_folder(tmp_path, capsys):
    cfg = load_config("demo", [f"train.storage_path={tmp_path}", "train.run_name=r",
                               "train.report_to=[wandb]"])
    plan = start_tracking(cfg, f"{tmp_path}/r", resumed=False,
                          env={"NETRC": str(tmp_path / "missing")})
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and "offline" in said[0] and "no W&B API key" in said[0]
    assert f"{tmp_path}/r/wandb/offline-run-*-{plan.wandb_id}" in said[0]
    saved = json.loads((tmp_path / "r" / TRACKING_FILE).read_text())
    assert saved["wandb_mode"] == "offline" and saved["wandb_dir"] == f"{tmp_path}/r"
    again = start_tracking(cfg, f"{tmp_path}/r", resumed=True, env={"WANDB_MODE": "offline"})
    assert again.wandb_id == plan.wandb_id  # a resumed run continues its W&B run


def test_the_embedded_mlflow_store_lives_in_the_run_folder_and_a_failed_run_says_so(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("matplotlib")
    from mlflow import MlflowClient

    cfg = load_config("demo", [f"train.storage_path={tmp_path}", "train.run_name=r",
                               "train.report_to=[mlflow]"])
    run_dir = tmp_path / "r"
    with pytest.raises(RuntimeError, match="worker died"):
        with tracked(cfg, str(run_dir), resumed=False) as plan:
            (run_dir / METRICS_FILE).write_text(json.dumps({"step": 1, "loss/total": 2.0}) + "\n")
            raise RuntimeError("worker died")
    assert plan.mlflow_uri == f"sqlite:///{run_dir}/mlruns/mlflow.db"
    client = MlflowClient(plan.mlflow_uri)
    run = client.get_run(plan.mlflow_run_id)
    assert run.info.status == "FAILED" and run.data.params["train.run_name"] == "r"
    assert [f.path for f in client.list_artifacts(run.info.run_id, "report")] == [CURVES_FILE]
    assert (run_dir / CURVES_FILE).is_file()
    assert list((run_dir / "mlruns" / "artifacts").rglob("curves.png"))  # not in the cwd


def test_the_config_becomes_flat_dotted_params():
    params = config_params(load_config("demo"))
    assert params["train.max_steps"] == "30" and params["loss.lambda"] == "10.0"
    assert params["data.sources.0.format"] == "synthetic"
    assert params["train.report_to"] == "[]"


def test_metrics_jsonl_restarts_from_the_restored_history_and_appends(tmp_path):
    cfg = load_config("demo", [f"train.storage_path={tmp_path}", "train.run_name=r"])
    path = tmp_path / "r" / METRICS_FILE
    path.parent.mkdir()
    # a first attempt reported steps 1-3 and checkpointed at 2; the restart resumes at 2
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    history = [{"step": 1, "records": 2.0}, {"step": 2, "records": 4.0}]
    tracker = RunTracker.open(cfg, TrainState(step=2, records=4, history=history))
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    tracker.report({"step": 3, "records": 6.0, "loss/total": 1.5})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[-1] == {"step": 3, "records": 6.0, "loss/total": 1.5} and len(lines) == 3
    RunTracker.open(cfg, TrainState())  # a fresh start (no checkpoint): nothing is kept
    assert path.read_text() == ""


def test_curves_draw_every_panel_from_a_history():
    pytest.importorskip("matplotlib")
    from lavender_ray.train.curves import draw_curves

    history = [{"step": s, "loss/total": 3.0 / s, "loss/lm": 2.0 / s, "loss/att": 1.0 / s,
                "align/matched_words": 2.0, "schedule/lambda": 10.0, "schedule/alpha": 1.0,
                "time/step_s": 0.5} for s in range(1, 6)]  # fmt: skip
    png = draw_curves(history, title="r")
    image = Image.open(__import__("io").BytesIO(png))
    assert image.format == "PNG" and image.width > 600
