"""Shared fixtures: one local Ray per test session, on loopback, shut down at the end; the runs
and model folders the tests read (`shared_runs`). The order the modules run in."""

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

# Seconds each of the longest modules takes on 2 cores with both test processes busy
# (`--durations`, summed per module; 2026-12-03). They start first, longest first, so that the
# two processes finish together: `./run.sh test` keeps this order (`--no-loadscope-reorder`),
# where xdist would send the modules with the fewest tests last (the user journey, one test,
# started at 8 of 13 minutes and ran alone to the end). Unlisted modules take under 30 s each.
LONGEST_MODULES = {
    "test_user_journey.py": 465, "test_train.py": 160, "test_worker.py": 115,
    "test_console.py": 105, "test_pipeline.py": 65, "test_job_submit.py": 65,
    "test_cluster.py": 50, "test_zero3_loading.py": 35,
}


def pytest_collection_modifyitems(config, items):
    """The longest modules first (`LONGEST_MODULES`), each module's tests in their own order."""
    items.sort(key=lambda item: -LONGEST_MODULES.get(item.path.name, 0))  # stable


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
