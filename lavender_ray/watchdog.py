"""No silent stall: a driver-side thread that says what waits, for which resource, and which keys
would unblock it.

    with stall_watchdog(cfg.train.stall_timeout_s):
        trainer.fit()

Every few seconds the watchdog asks Ray's State API for work that cannot start: actors pending
creation, tasks pending a node, placement groups (Ray Train's worker groups) pending. Anything
still pending after `timeout_s` is printed once, with what it asks for, what the cluster has
free, and the config keys that set its request (`KEYS_BY_NAME`). A stall for another reason
than resources (every piece running, nothing moving) is not detected here.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

import ray
from ray.util.state import list_actors, list_placement_groups, list_tasks

POLL_S = 5.0
# name fragment of a pending actor, task or placement group -> the keys that size its request
KEYS_BY_NAME: dict[str, tuple[str, ...]] = {
    "SDTargetStage": ("pipeline.sd_num_cpus", "pipeline.sd_num_gpus", "pipeline.sd_pool_min"),
    "VLMCheck": ("pipeline.check_num_cpus",),
    "RayTrainWorker": ("train.num_workers", "train.cpus_per_worker", "train.use_gpu"),
    "Train": ("train.num_workers", "train.cpus_per_worker", "train.use_gpu"),
    "GenerateStage": ("eval.pool_size", "eval.num_cpus", "eval.num_gpus"),
    "probe_before_after": ("eval.num_cpus", "eval.num_gpus"),
    "run_trial": ("tune.trial_resources", "tune.max_concurrent_trials"),
    "Read": ("data.read_num_cpus",),
    "to_records": ("data.read_num_cpus",),
    "summarise": ("data.read_num_cpus",),
    "Write": ("data.read_num_cpus",),
}
# Ray's defaults for what a config does not set: a plain `ray.remote` task asks for 1 CPU
DEFAULT_HINT = "a Ray task or actor with its default request (1 CPU)"


@dataclass(frozen=True)
class Pending:
    """A piece of work Ray has not been able to start."""

    id: str
    kind: str  # actor | task | placement group
    name: str
    resources: tuple[tuple[str, float], ...]  # sorted (resource, amount) pairs

    def keys(self) -> tuple[str, ...]:
        return next((keys for part, keys in KEYS_BY_NAME.items() if part in self.name), ())

    def describe(self) -> str:
        asks = ", ".join(f"{k} {v:g}" for k, v in self.resources) or "nothing"
        keys = ", ".join(self.keys()) or DEFAULT_HINT
        return f"{self.kind} {self.name} asks for {{{asks}}}  (set by: {keys})"


def pending_work() -> list[Pending]:
    """Actors, tasks and placement groups of this cluster that wait to be scheduled."""
    # this Ray's address: with another Ray on the machine, the State API would not know which
    address = ray.get_runtime_context().gcs_address
    found = []
    for actor in list_actors(address, filters=[("state", "=", "PENDING_CREATION")], detail=True,
                             raise_on_missing_output=False):
        found.append(Pending(actor.actor_id, "actor", (actor.class_name or "?").split(".")[-1],
                             _amounts(actor.required_resources)))
    for task in list_tasks(address, filters=[("state", "=", "PENDING_NODE_ASSIGNMENT")],
                           detail=True, raise_on_missing_output=False):
        if task.type == "ACTOR_CREATION_TASK":  # the pending actor above, said once
            continue
        found.append(Pending(task.task_id, "task", task.name or "?",
                             _amounts(task.required_resources)))
    for group in list_placement_groups(address, filters=[("state", "=", "PENDING")], detail=True,
                                       raise_on_missing_output=False):
        bundles: dict[str, float] = {}
        for bundle in group.bundles or []:
            for key, value in (bundle.get("unit_resources") or {}).items():
                bundles[key] = bundles.get(key, 0.0) + float(value)
        name = group.name or "placement group"
        found.append(Pending(group.placement_group_id, "placement group",
                             f"{name} (Ray Train workers)", _amounts(bundles)))
    return found


def _amounts(resources: dict | None) -> tuple[tuple[str, float], ...]:
    """A request without Ray's bookkeeping resources (node ids, bundle indices)."""
    return tuple(sorted((k, float(v)) for k, v in (resources or {}).items()
                        if not k.startswith(("node:", "bundle_group"))))


def diagnosis(stalled: list[Pending], waited_s: float) -> str:
    """The message printed for work pending longer than the timeout."""
    free = ray.available_resources()
    total = ray.cluster_resources()
    have = ", ".join(f"{k} {free.get(k, 0.0):g} free of {total[k]:g}"
                     for k in ("CPU", "GPU") if k in total)
    lines = [f"stalled: nothing of the following could start in {waited_s:.0f} s; the cluster "
             f"has {have}:"]
    lines += [f"  {item.describe()}" for item in stalled]
    keys = sorted({key for item in stalled for key in item.keys()})
    hint = f"lower {', '.join(keys)}, or" if keys else "lower the requests, or"
    lines.append(f"  to unblock: {hint} give Ray more resources (a bigger cluster, or "
                 "RAY_ADDRESS of one); see `lavender <command> --help`")
    return "\n".join(lines)


class StallWatchdog:
    """The thread behind `stall_watchdog` (see the module docstring)."""

    def __init__(self, timeout_s: float, out: TextIO = sys.stderr, poll_s: float = POLL_S) -> None:
        self.timeout_s, self.out, self.poll_s = timeout_s, out, poll_s
        self.first_seen: dict[Pending, float] = {}
        self.reported: set[Pending] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lavender-stall-watchdog",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_s + 5)

    def check(self, now: float | None = None) -> str | None:
        """One look: the diagnosis of newly stalled work, or None."""
        now = time.monotonic() if now is None else now
        pending = pending_work()
        self.first_seen = {p: self.first_seen.get(p, now) for p in pending}
        stalled = [p for p, since in self.first_seen.items()
                   if now - since >= self.timeout_s and p not in self.reported]
        if not stalled:
            return None
        self.reported.update(stalled)
        return diagnosis(stalled, max(now - self.first_seen[p] for p in stalled))

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                message = self.check()
            except Exception as err:  # the State API unreachable: the run goes on unwatched
                if not self._stop.is_set():  # else Ray went down with the run: nothing to say
                    print(f"note: the stall watchdog stopped ({type(err).__name__}: {err})",
                          file=self.out, flush=True)
                return
            if message and not self._stop.is_set():
                print(message, file=self.out, flush=True)


@contextmanager
def stall_watchdog(timeout_s: float, out: TextIO = sys.stderr) -> Iterator[StallWatchdog]:
    """Watch for stalls (see the module docstring) while the block runs."""
    watchdog = StallWatchdog(timeout_s, out)
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.stop()
