"""Shared fixtures: one local Ray per test session, on loopback, shut down at the end; the runs
several modules read (`shared_runs`)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the plan's measurements: measured afresh in every test session, never from ~/.cache
os.environ["LAVENDER_PLAN_CACHE"] = tempfile.mkdtemp(prefix="lavender-plan-")
torch.set_num_threads(1)

from shared_runs import mlflow_server, mllama_folder, stream_run  # noqa: E402, F401  (session fixtures; after the env above)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs (2 real cores: Ray Data and train workers share them),
    with the dashboard on loopback: its State API serves the stall watchdog."""
    import ray

    ray.init(
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()
