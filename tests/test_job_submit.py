"""A real `ray job submit` of the tiny train job against a head this test starts on 127.0.0.1,
with Ray's token authentication on. The head is stopped by killing exactly its own processes
(found by its private temp dir), never with a machine-wide `ray stop`."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow  # starts a Ray job server and a training job

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_cluster(temp_dir: str) -> None:
    """Terminate every process whose command line names this cluster's temp dir."""
    procs = [p for p in psutil.process_iter(["cmdline"]) if p.pid != os.getpid()
             and any(temp_dir in part for part in (p.info["cmdline"] or []))]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)  # then SIGKILL: a throwaway head
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.fixture
def token_head():
    temp_dir = tempfile.mkdtemp(prefix="lr-head-", dir="/tmp")  # short: unix socket paths
    token_file = Path(temp_dir) / "token"
    token_file.write_text(secrets.token_hex(32))
    dashboard = free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token_file), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
         # own agent ports: the defaults (e.g. 52365) are taken when another Ray runs here
         *(f"--{flag}={free_port()}" for flag in (
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port", "ray-client-server-port")),
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, check=True, capture_output=True, timeout=120,
    )
    try:
        yield f"http://127.0.0.1:{dashboard}", env, temp_dir
    finally:
        kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_job(env: dict, address: str, *args: str, timeout: int = 60) -> tuple[int, str]:
    """Run `ray job ...`; returns (exit code, stdout + stderr: the CLI logs status to stderr)."""
    verb, *rest = args  # --address goes before `--` and the entrypoint
    done = subprocess.run([str(BIN / "ray"), "job", verb, "--address", address, *rest], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.timeout(900)
def test_ray_job_submit_tiny_train_succeeds(token_head, tmp_path):
    address, env, _ = token_head
    # Without the token the job server refuses the client.
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    code, _ = ray_job(no_token, address, "list")
    assert code != 0

    storage = tmp_path / "runs"
    runtime_env = {"excludes": [".git", "outputs", ".venv", "*.egg-info"],
                   "env_vars": {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}}
    overrides = ["train.max_steps=4", "train.checkpoint_every=4", "train.report_every=2",
                 f"train.storage_path={storage}", "train.run_name=job",
                 "data.sources=[{name: synthetic, format: synthetic, num_samples: 8}]"]
    command = ["submit", "--no-wait", "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env), "--", sys.executable, "jobs/train.py",
               "--preset", "demo", *sum((["--set", o] for o in overrides), [])]
    for _ in range(30):  # the head's job agent comes up a few seconds after `ray start`
        code, submitted = ray_job(env, address, *command)
        if "No available agent" not in submitted:
            break
        time.sleep(2)
    assert code == 0, submitted
    job_id = re.search(r"raysubmit_\w+", submitted).group(0)
    deadline, status = time.time() + 800, ""
    while time.time() < deadline:
        status = ray_job(env, address, "status", job_id)[1].lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    logs = ray_job(env, address, "logs", job_id)[1]
    assert "succeeded" in status, f"{status}\n{logs[-4000:]}"
    assert "adapter:" in logs
    run = storage / "job"
    assert (run / "config.yaml").is_file()
    exports = sorted(run.glob("checkpoint_step*/export/vlm/adapter_model.safetensors"))
    assert exports and exports[-1].stat().st_size > 0
