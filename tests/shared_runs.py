"""Session fixtures for the expensive runs and model folders the tests read (conftest imports
them), and the helpers that configure a tiny training run.

A tiny `train()` costs about a minute on two cores, nearly all of it start-up (Ray Train's
controller and workers, DeepSpeed, the SD and check actor pools), so one run carries every
property that can be read from the same run instead of one run per test:

`stream_run`: stream mode under ZeRO-2 with every bad-input kind mixed into the records and the SD
actor killed once mid-stream, reporting at every step to TensorBoard, a real MLflow server and
offline W&B with attention PNGs every 2 steps, watched from Ray Train's controller while it
trains. All its readers are in `test_train`: each of the two test processes builds the session
fixtures its own modules use, so a reader in a second module could build the run twice.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import ray.train
from test_sd_stage import OVERRIDES as SD_OVERRIDES
from test_sd_stage import records_with_every_kind

from lavender_ray.config import load_config
from lavender_ray.runs import METRICS_FILE
from lavender_ray.schema import RECORD_SCHEMA
from lavender_ray.train.launch import train
from lavender_ray.vlm.registry import build_tiny

TRACKERS = ["tensorboard", "mlflow", "wandb"]
PICTURE_EVERY = 2
N_GOOD = 13  # + 5 convertible images = 18 usable records: 9 steps for each of 2 workers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_train_config(tmp_path: Path, records: list[dict], **extra):
    path = tmp_path / "records.parquet"
    pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), path)
    overrides = {
        **{k: v for k, v in SD_OVERRIDES.items() if k != "sd.batch_size"},
        "sd.batch_size": 4,
        "data.sources": [{"name": "mixed", "format": "records", "path": str(path)}],
        "loss.word_source": "label",
        "train.storage_path": str(tmp_path / "runs"),
        **extra,
    }
    return load_config("demo", overrides)


class WatchMetricsFile(ray.train.UserCallback):
    """In Ray Train's controller, while the run trains: after each report, the steps in
    `<run>/metrics.jsonl` and whether a checkpoint folder exists yet."""

    def __init__(self, run_dir: str, out: str) -> None:
        self.run_dir, self.out = run_dir, out

    def after_report(self, run_context, metrics, checkpoint) -> None:
        path = Path(self.run_dir) / METRICS_FILE
        text = path.read_text() if path.exists() else ""
        steps = [json.loads(line)["step"] for line in text.splitlines() if line.strip()]
        seen = {"reported": metrics[0]["step"], "lines": steps,
                "checkpoints": len(list(Path(self.run_dir).glob("checkpoint_step*")))}
        with open(self.out, "a") as f:
            f.write(json.dumps(seen) + "\n")


@pytest.fixture(scope="session")
def mllama_folder(tmp_path_factory) -> Path:
    """The tiny Mllama and its processor saved as a local folder: `vlm.model_id=<it>` loads
    through the real `from_pretrained` path (under ZeRO-3: inside `deepspeed.zero.Init`)."""
    folder = tmp_path_factory.mktemp("tiny-mllama")
    model, processor = build_tiny("tiny/mllama", seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 with its own store; stopped at the end."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "server.log").read_text()[-3000:]) from None
                time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, 15)  # the server and its uvicorn worker: its own session
        server.wait(timeout=60)
        log.close()


@pytest.fixture(scope="session")
def stream_run(ray_local, mlflow_server, tmp_path_factory):
    """{summary, records, expected (rejects by id), tmp, wandb_dir, seen (controller
    observations)} of the one stream-mode ZeRO-2 run with every tracker."""
    for tracker in TRACKERS:
        pytest.importorskip(tracker)
    tmp = tmp_path_factory.mktemp("stream")
    records, expected = records_with_every_kind(N_GOOD)
    usable = len(records) - len(expected)
    cfg = tiny_train_config(
        tmp, records,
        **{"train.max_steps": usable // 2, "train.checkpoint_every": usable // 2,
           "train.report_every": 1, "train.run_name": "zero2", "pipeline.sd_fail_at_batch": 2,
           "train.attention_png_every": PICTURE_EVERY, "train.report_to": TRACKERS,
           "train.mlflow_tracking_uri": mlflow_server},
    )  # fmt: skip
    observed = tmp / "observed.jsonl"
    watch = WatchMetricsFile(f"{tmp}/runs/zero2", str(observed))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the controller runs it
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(tmp / "wandb"))
        env.delenv("WANDB_API_KEY", raising=False)
        try:
            summary = train(cfg, callbacks=[watch])
        finally:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    seen = [json.loads(line) for line in observed.read_text().splitlines()]
    return {"summary": summary, "records": records, "expected": expected, "tmp": tmp,
            "wandb_dir": tmp / "wandb", "seen": seen}
