"""Experiment tracking of a training run: `<run>/metrics.jsonl`, the attention PNGs, the curves,
and the trackers of `train.report_to` through their own clients.

Whatever `train.report_to` says, rank 0 appends each report's metrics (the dict `ray.train.report`
gets) to `<run>/metrics.jsonl` as one JSON line when it reports, writes the attention PNGs of
`train.attention_png_every` to `<run>/report/step_<N>/` (`train.attention_pngs`), and the driver
draws `<run>/report/curves.png` at the end (`train.curves`; paths: `lavender_ray.runs`). A run
that dies before its first checkpoint still leaves its curve. The trackers get the same:

    tensorboard  torch's `SummaryWriter` -> `<run>/tensorboard/`: every metric as a scalar, the
                 PNGs as images, the resolved config as text (flattened dotted keys)
    mlflow       `MlflowClient` -> `train.mlflow_tracking_uri`, else `MLFLOW_TRACKING_URI`, else
                 an embedded store in the run folder (`sqlite:///<run>/mlruns/mlflow.db`,
                 artifacts in `<run>/mlruns/artifacts/`; MLflow 3 refuses a plain `mlruns/` file
                 store). Experiment `MLFLOW_EXPERIMENT_NAME` (default "lavender"), one run per
                 training run: metrics, the config as params (dotted keys), PNGs as artifacts
    wandb        `wandb.init` / `log` -> project `WANDB_PROJECT` (default "lavender"), entity
                 `WANDB_ENTITY`. `WANDB_MODE` is honoured; without an API key (`WANDB_API_KEY`,
                 `wandb login`) the run is offline, and the console says so once, with the
                 folder (`<run>/wandb/`, or `WANDB_DIR`)

Driver (`train.launch.train`) and workers::

    check_trackers(cfg)                   # before Ray Train starts: every package importable,
                                          # the MLflow server reachable, a W&B mode that works
    with tracked(cfg, run_dir, resumed):  # opens the tracker runs (a Tune trial is a training
        trainer.fit()                     # run: one tracker run per trial) and writes their ids
                                          # to <run>/tracking.json; at the end: curves.png, the
                                          # MLflow run ended (FINISHED or FAILED)

    tracker = RunTracker.open(cfg, state) # rank 0 (`train.trackers`), handed to the `Reporter`,
    tracker.report(metrics)               # the one exit of a worker's metrics: every report,
    tracker.pictures(step, samples)       # every train.attention_png_every steps,
    tracker.close()                       # after the last report

Workers see the config and the run folder only, never the driver's environment: the driver
resolves the MLflow URI and the W&B mode, folder and project into `tracking.json`. A resumed run
continues the same tracker runs: `metrics.jsonl` starts again from the checkpoint's history (the
steps after the checkpoint are trained again, so their first lines go), TensorBoard purges its
events after the checkpoint's step, W&B ignores steps it has already logged, and MLflow keeps
both values of a step reported twice.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import netrc
import os
import re
import secrets
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.runs import (
    CURVES_FILE,
    MLFLOW_DIR,
    TRACKING_FILE,
    metrics_path,
    run_dir_of,
)
from lavender_ray.storage import (
    local_path,
    read_text,
    write_bytes,
    write_text,
)
from lavender_ray.train.curves import draw_curves, read_history

log = logging.getLogger(__name__)
# tracker -> (module the trainer imports, what to pip install)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}  # fmt: skip
EXPERIMENT = "lavender"  # MLflow experiment and W&B project unless the environment names one
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "artifacts"
HEALTH_TIMEOUT_S = 10.0
MAX_PARAMS_PER_BATCH = 100  # MLflow's limits: params per log_batch, characters per value
MAX_PARAM_CHARS = 6000
WANDB_HOST = "https://api.wandb.ai"


@dataclass
class TrackingPlan:
    """What the workers need to join the driver's tracker runs (`<run>/tracking.json`)."""

    report_to: list[str] = field(default_factory=list)
    mlflow_uri: str | None = None
    mlflow_run_id: str | None = None
    wandb_id: str | None = None
    wandb_mode: str | None = None  # online | offline | disabled
    wandb_dir: str | None = None  # None: the worker's current folder (online, remote storage)
    wandb_project: str | None = None
    wandb_entity: str | None = None


# ------------------------------------------------------------------------------ driver: checks
def check_trackers(cfg: LavenderConfig, env: Mapping[str, str] | None = None) -> None:
    """Refuse, with a one-line `ConfigError`, trackers of `train.report_to` that cannot work:
    a package not installed, an MLflow server that does not answer, W&B online without a key
    or offline with nowhere local to write. Call on the driver before Ray Train starts."""
    env = os.environ if env is None else env
    for name in cfg.train.report_to:
        require_package(name)
    run_dir = run_dir_of(cfg)
    if "mlflow" in cfg.train.report_to:
        uri, source = mlflow_uri(cfg, run_dir, env)
        if source != "the run folder":
            check_mlflow_server(uri, source)
    if "wandb" in cfg.train.report_to:
        wandb_settings(run_dir, env)


def require_package(name: str) -> None:
    module, pip_name = PACKAGES[name]
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"train.report_to has {name!r}, but {module!r} cannot be imported ({err}): "
            f"pip install {pip_name} (or pip install 'lavender-ray[tracking]'), or leave "
            f"{name!r} out of train.report_to"
        ) from None


def mlflow_uri(
    cfg: LavenderConfig, run_dir: str, env: Mapping[str, str]
) -> tuple[str, str]:
    """(tracking URI, where it came from): `train.mlflow_tracking_uri`, `MLFLOW_TRACKING_URI`
    or "the run folder" (an embedded sqlite store; needs a local run folder)."""
    if cfg.train.mlflow_tracking_uri:
        return cfg.train.mlflow_tracking_uri, "train.mlflow_tracking_uri"
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    local = local_path(run_dir)
    if local is None:
        raise ConfigError(
            f"train.report_to has 'mlflow' and the run folder {run_dir} is on object storage, "
            "where MLflow's embedded store cannot live: set train.mlflow_tracking_uri (or "
            "MLFLOW_TRACKING_URI) to a tracking server"
        )
    return f"sqlite:///{local}/{MLFLOW_DIR}/{MLFLOW_DB}", "the run folder"


def check_mlflow_server(uri: str, source: str) -> None:
    """An http(s) tracking server must answer its `/health`; any other URI (a database, a
    Databricks workspace) must let the client list an experiment."""
    what = f"train.report_to has 'mlflow', but the MLflow tracking URI {uri} (from {source})"
    if urlparse(uri).scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
                return
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(
                f"{what} is unreachable ({reason}): start the server, fix {source}, or unset "
                "it for the run folder's own store"
            ) from None
    from mlflow import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any client failure means: not usable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what} does not work: {first}") from None


def wandb_settings(run_dir: str, env: Mapping[str, str]) -> tuple[str, str, str | None]:
    """(mode, why, folder) of the W&B run: `WANDB_MODE` if it says offline or disabled, else
    online when an API key is found, else offline. The folder is `WANDB_DIR`, else the run
    folder when it is local. `ConfigError` when neither can work."""
    asked = env.get("WANDB_MODE", "").strip().lower()
    if asked in ("offline", "dryrun"):
        mode, why = "offline", f"WANDB_MODE={asked}"
    elif asked == "disabled":
        mode, why = "disabled", "WANDB_MODE=disabled"
    elif wandb_credentials(env):
        mode, why = "online", "an API key was found"
    elif asked == "online":
        raise ConfigError(
            "train.report_to has 'wandb' and WANDB_MODE=online, but no W&B API key was found "
            "(WANDB_API_KEY, or `wandb login`): log in, or set WANDB_MODE=offline"
        )
    else:
        mode, why = "offline", "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    folder = env.get("WANDB_DIR") or local_path(run_dir)
    if folder is None and mode == "offline":
        raise ConfigError(
            f"train.report_to has 'wandb', offline ({why}), and the run folder {run_dir} is on "
            "object storage: set WANDB_DIR to a local folder for the offline run files"
        )
    return mode, why, folder


def wandb_credentials(env: Mapping[str, str]) -> bool:
    """Whether W&B would find credentials: its environment variables or a netrc entry for its
    host (what `wandb login` writes)."""
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", WANDB_HOST)).hostname
    try:
        return netrc.netrc(env.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


# ---------------------------------------------------------------------- driver: start, finish
@contextlib.contextmanager
def tracked(cfg: LavenderConfig, run_dir: str, resumed: bool) -> Iterator[TrackingPlan]:
    """Around `fit()`: the tracker runs opened before (`start_tracking`), curves.png and the
    MLflow run's end after, also when training fails (the run is then FAILED)."""
    plan = start_tracking(cfg, run_dir, resumed)
    try:
        yield plan
    except BaseException:
        try:
            finish_tracking(cfg, run_dir, plan, succeeded=False)
        except Exception:  # noqa: BLE001 - the training error is the one to raise
            log.warning("could not close the tracking of the failed run %s", run_dir,
                        exc_info=True)
        raise
    finish_tracking(cfg, run_dir, plan, succeeded=True)


def start_tracking(
    cfg: LavenderConfig, run_dir: str, resumed: bool, env: Mapping[str, str] | None = None
) -> TrackingPlan:
    """The tracker runs of this training run: those in `<run>/tracking.json` when the run is
    resumed, else new ones (the MLflow run with the config as params, a W&B run id). Written
    to `tracking.json` for the workers; the W&B mode is printed when it is not online."""
    env = os.environ if env is None else env
    report_to = list(cfg.train.report_to)
    if not report_to:
        return TrackingPlan()
    saved = read_text(f"{run_dir}/{TRACKING_FILE}") if resumed else None
    plan = TrackingPlan(**json.loads(saved)) if saved else TrackingPlan(report_to)
    if "mlflow" in report_to and plan.mlflow_run_id is None:
        plan.mlflow_uri, source = mlflow_uri(cfg, run_dir, env)
        plan.mlflow_run_id = create_mlflow_run(cfg, plan.mlflow_uri, source, run_dir, env)
    if "wandb" in report_to:
        plan.wandb_mode, why, plan.wandb_dir = wandb_settings(run_dir, env)
        plan.wandb_id = plan.wandb_id or secrets.token_hex(4)
        plan.wandb_project = env.get("WANDB_PROJECT") or EXPERIMENT
        plan.wandb_entity = env.get("WANDB_ENTITY")
        if plan.wandb_mode == "offline":
            where = f"{plan.wandb_dir}/wandb/offline-run-*-{plan.wandb_id}"
            print(f"W&B runs offline ({why}): run folder {where} (upload it later with "
                  f"`wandb sync {where}`)", flush=True)
        elif plan.wandb_mode == "disabled":
            print(f"W&B is disabled ({why}): nothing is sent to W&B", flush=True)
    write_text(f"{run_dir}/{TRACKING_FILE}", json.dumps(asdict(plan), indent=1) + "\n")
    return plan


def create_mlflow_run(
    cfg: LavenderConfig, uri: str, source: str, run_dir: str, env: Mapping[str, str]
) -> str:
    """A new MLflow run (named like the training run) in experiment `MLFLOW_EXPERIMENT_NAME`
    with the resolved config as params; its id. The embedded store keeps its artifacts in the
    run folder too (`<run>/mlruns/artifacts/`)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    name = env.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = None
            if source == "the run folder":
                artifacts = f"file://{local_path(run_dir)}/{MLFLOW_DIR}/{MLFLOW_ARTIFACTS}"
            try:
                experiment_id = client.create_experiment(name, artifact_location=artifacts)
            except MlflowException:  # another trial created it meanwhile
                experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run = client.create_run(
            experiment_id, run_name=cfg.train.run_name, tags={"lavender.run_dir": run_dir}
        )
        params = [Param(k, v) for k, v in config_params(cfg).items()]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            client.log_batch(run.info.run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])
    except MlflowException as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"MLflow at {uri} (from {source}): {first}") from None
    return run.info.run_id


def finish_tracking(
    cfg: LavenderConfig, run_dir: str, plan: TrackingPlan, succeeded: bool
) -> None:
    """`<run>/report/curves.png` from `metrics.jsonl` (when anything was reported), sent to
    MLflow as an artifact with the run then ended FINISHED or FAILED."""
    curves = write_curves(cfg, run_dir)
    if plan.mlflow_run_id is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient(plan.mlflow_uri)
    if curves is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(CURVES_FILE))
            with open(path, "wb") as f:
                f.write(curves)
            client.log_artifact(plan.mlflow_run_id, path, os.path.dirname(CURVES_FILE))
    client.set_terminated(plan.mlflow_run_id, "FINISHED" if succeeded else "FAILED")


def write_curves(cfg: LavenderConfig, run_dir: str) -> bytes | None:
    """Draw `<run>/report/curves.png` from `<run>/metrics.jsonl`; the PNG, or None when nothing
    was reported or matplotlib is missing (said in a warning)."""
    history = read_history(read_text(metrics_path(run_dir)) or "")
    if not history:
        return None
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        log.warning("%s/%s not drawn: matplotlib is not installed (pip install matplotlib, or "
                    "pip install 'lavender-ray[tracking]')", run_dir, CURVES_FILE)
        return None
    png = draw_curves(history, title=cfg.train.run_name)
    write_bytes(f"{run_dir}/{CURVES_FILE}", png)
    return png


def config_params(cfg: LavenderConfig) -> dict[str, str]:
    """The resolved config as flat parameters: dotted key -> value as text (lists of sections
    by index: `data.sources.0.name`; other lists and empty mappings as JSON)."""
    flat: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            if len(text) > MAX_PARAM_CHARS:
                text = text[: MAX_PARAM_CHARS - 3] + "..."
            flat[re.sub(r"[^\w\-. /:]", "_", key)] = text

    walk(cfg.to_dict(), "")
    return flat


# --------------------------------------------------------------------------- worker: rank 0
