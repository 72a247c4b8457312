"""What a command runs at once, checked against the Ray it runs on; the one way commands start Ray.

    plan = resource_plan(cfg, "train")        # trainers, SD pool, check stage, reads...
    connect(cfg, "train", address=None)       # RAY_ADDRESS / address, else a local Ray sized to fit

Every `lavender` command needs several pieces at once: `train` runs its DeepSpeed workers while
Ray Data reads, checks and extracts SD targets for them; `evaluate` runs two generation pools and
the attention probe side by side. If the Ray they run on cannot place all of them, the last
piece waits forever for a CPU (on a 2-core machine plain `ray.init()` gives 2 CPUs: two train
workers at 0.5 and an SD actor at 0.5 leave too little for the read tasks). So:

- `resource_plan` lists each piece with the CPUs and GPUs it asks for and the config keys that
  set them;
- a local Ray (no address given) is started with at least the plan's CPUs as logical CPUs (Ray's
  CPUs are scheduling slots, not cores: the demo's 4 slots run fine on 2 cores), with the
  dashboard on loopback (its State API serves the stall watchdog and Ray Train's clean-up);
- a plan that needs GPUs the local machine lacks, or on a connected cluster more than it has and
  can add, is refused before anything starts, naming the keys to change.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from typing import Literal

import ray

from lavender_ray import console
from lavender_ray.config import ConfigError, LavenderConfig

Command = Literal["train", "extract", "evaluate", "tune", "inspect", "demo"]
SMALL_STAGE_CPUS = 0.1  # the cache's write-through and the precomputed join actors
_REACHED_BY_ADDRESS = False  # this process connected to a cluster by address (it may autoscale)


def _remember_address() -> None:
    global _REACHED_BY_ADDRESS
    _REACHED_BY_ADDRESS = True


@dataclass(frozen=True)
class Piece:
    """One thing that runs at once with the others: `count` units of `cpus`/`gpus` each."""

    name: str
    count: int
    cpus: float
    gpus: float = 0.0
    keys: tuple[str, ...] = ()

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{self.name}: {self.count} x {each}  ({', '.join(self.keys)})"


@dataclass
class ResourcePlan:
    """The pieces a command runs at once (`phases`: sets of pieces that run one after another,
    e.g. Tune's shared SD extraction, then its trials)."""

    command: str
    phases: list[list[Piece]] = field(default_factory=list)

    def cpus(self) -> float:
        return max((sum(p.count * p.cpus for p in phase) for phase in self.phases), default=0.0)

    def gpus(self) -> float:
        return max((sum(p.count * p.gpus for p in phase) for phase in self.phases), default=0.0)

    def describe(self) -> str:
        lines = [f"{self.command} runs at once (the largest phase counts):"]
        for i, phase in enumerate(self.phases):
            prefix = f"  phase {i + 1}: " if len(self.phases) > 1 else "  "
            lines += [prefix + piece.describe() for piece in phase]
        lines.append(f"  total: {self.cpus():g} CPU, {self.gpus():g} GPU")
        return "\n".join(lines)

    def keys(self) -> list[str]:
        return sorted({key for phase in self.phases for piece in phase for key in piece.keys})


# ------------------------------------------------------------------------------------ pieces
def read_pieces(cfg: LavenderConfig) -> list[Piece]:
    """Reading the sources: one read/convert task at a time is enough to make progress."""
    return [Piece("read and convert tasks", 1, cfg.data.read_num_cpus, keys=("data.read_num_cpus",))]


def sd_pieces(cfg: LavenderConfig) -> list[Piece]:
    p = cfg.pipeline
    return [Piece("SD actors", p.sd_pool_min, p.sd_num_cpus, p.sd_num_gpus,
                  ("pipeline.sd_pool_min", "pipeline.sd_num_cpus", "pipeline.sd_num_gpus"))]


def train_pieces(cfg: LavenderConfig) -> list[Piece]:
    """The trainer and the stream that feeds it in `pipeline.mode`."""
    t, p = cfg.train, cfg.pipeline
    pieces = [Piece("train workers", t.num_workers, t.cpus_per_worker, 1.0 if t.use_gpu else 0.0,
                    ("train.num_workers", "train.cpus_per_worker", "train.use_gpu"))]
    pieces += read_pieces(cfg)
    pieces.append(Piece("record checks", 1, p.check_num_cpus, keys=("pipeline.check_num_cpus",)))
    if p.mode in ("stream", "cache"):
        pieces += sd_pieces(cfg)
    if p.mode != "stream":
        pieces.append(Piece(f"{p.mode} join", 1, SMALL_STAGE_CPUS))
    return pieces


def evaluate_pieces(cfg: LavenderConfig) -> list[Piece]:
    e = cfg.eval
    return read_pieces(cfg) + [
        Piece("generation actors (base, adapter)", 2 * e.pool_size, e.num_cpus, e.num_gpus,
              ("eval.pool_size", "eval.num_cpus", "eval.num_gpus")),
        Piece("attention probe task", 1, e.num_cpus, e.num_gpus, ("eval.num_cpus", "eval.num_gpus")),
    ]


def trial_pieces(cfg: LavenderConfig, trials: int = 1) -> list[Piece]:
    """What `trials` Tune trials run at once: each its driver and its training in the
    `pipeline.mode` the search gives it (SD actors only when a trial may extract: targets
    streamed, or shared but the search changes `sd.*` / `data.*` keys)."""
    driver = cfg.tune.trial_resources
    mode = cfg.tune.targets if shares_targets(cfg) else cfg.pipeline.mode
    per_trial = train_pieces(cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(
        update={"mode": mode})}))
    pieces = [Piece("trial drivers", trials, driver.get("CPU", 0.0), driver.get("GPU", 0.0),
                    ("tune.trial_resources", "tune.max_concurrent_trials"))]
    searched = tuple(cfg.tune.search_space)
    extracts = not shares_targets(cfg) or any(k.startswith(("sd.", "data.")) for k in searched)
    for piece in per_trial:
        if piece.name == "SD actors" and not extracts:
            continue  # every trial finds its targets extracted before the trials
        pieces.append(Piece(f"{piece.name} (x {trials} trials)", piece.count * trials, piece.cpus,
                            piece.gpus, piece.keys + ("tune.max_concurrent_trials",)))
    return pieces


def tune_phases(cfg: LavenderConfig) -> list[list[Piece]]:
    """The shared SD extraction (`shares_targets`), then `tune.max_concurrent_trials`
    trials at once (at least one; `tune.checks.max_concurrent_trials` caps an unset value by
    what the cluster holds)."""
    phase = trial_pieces(cfg, cfg.tune.max_concurrent_trials or 1)
    extract = read_pieces(cfg) + sd_pieces(cfg)
    return [extract, phase] if shares_targets(cfg) else [phase]


def shares_targets(cfg: LavenderConfig) -> bool:
    """Whether a search extracts SD targets once for its trials (`tune.experiment.shared_targets`):
    `tune.targets` cache or precomputed, unless the config already reads precomputed ones."""
    return cfg.tune.targets != "stream" and cfg.pipeline.mode != "precomputed"


def resource_plan(cfg: LavenderConfig, command: Command) -> ResourcePlan:
    """What `command` runs at once with `cfg` (see the module docstring)."""
    if command == "train":
        return ResourcePlan(command, [train_pieces(cfg)])
    if command == "extract":
        writes = Piece("Parquet write tasks", 1, cfg.data.read_num_cpus, keys=("data.read_num_cpus",))
        return ResourcePlan(command, [read_pieces(cfg) + sd_pieces(cfg) + [writes]])
    if command == "evaluate":
        return ResourcePlan(command, [evaluate_pieces(cfg)])
    if command == "tune":
        return ResourcePlan(command, tune_phases(cfg))
    if command == "inspect":
        return ResourcePlan(command, [read_pieces(cfg)])
    if command == "demo":
        return ResourcePlan(command, [train_pieces(cfg), evaluate_pieces(cfg)])
    raise ValueError(f"unknown command {command!r}")


# ------------------------------------------------------------------------------------ Ray
def local_gpus() -> int:
    """GPUs this machine shows torch (the local Ray's GPU count)."""
    import torch  # here, not at the top: the CLI's light paths import this module

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_plan(plan: ResourcePlan, cpus: float, gpus: float, where: str) -> None:
    """Refuse `plan` when it needs more GPUs or CPUs than `where` has, naming the keys."""
    short = []
    if plan.gpus() > gpus:
        short.append(f"{plan.gpus():g} GPUs (it has {gpus:g})")
    if plan.cpus() > cpus:
        short.append(f"{plan.cpus():g} CPUs (it has {cpus:g})")
    if short:
        raise ConfigError(
            f"{where} cannot run {plan.command}: it needs {' and '.join(short)}.\n"
            f"{plan.describe()}\nLower one of: {', '.join(plan.keys())}"
        )


def connect(cfg: LavenderConfig, command: Command, address: str | None = None) -> ResourcePlan:
    """Make sure Ray runs and can hold `command`'s plan: the connected Ray, else `address` or
    `RAY_ADDRESS`, else a new local Ray on loopback sized to the plan (see the module docstring).
    Returns the plan; `ConfigError` when it cannot fit."""
    plan = resource_plan(cfg, command)
    if ray.is_initialized():
        check_cluster(plan, may_grow=_REACHED_BY_ADDRESS)
        return plan
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on loopback
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, configure_logging=False, **console.ray_init_options())
        console.after_ray_init()
        _remember_address()
        check_cluster(plan, may_grow=True)
        return plan
    gpus = local_gpus()
    check_plan(plan, cpus=math.inf, gpus=gpus, where="this machine")
    start_local(max(usable_cpus(), math.ceil(plan.cpus())), gpus)
    return plan


def usable_cpus() -> int:
    """The cores this process may run on (its affinity: `taskset`, a container's cpuset), which
    Ray's own default (every core of the machine) overcounts."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1


def start_local(cpus: int, gpus: int) -> None:
    """A local Ray on loopback with `cpus` logical CPUs and the dashboard (its State API serves
    the stall watchdog and Ray Train's clean-up of stopped trials).

    Its GCS port is chosen here and exported as `RAY_ADDRESS` before it starts, so its processes
    inherit it: Ray Train's placement-group cleaner looks its cluster up without an address and,
    with another Ray on the same machine, would otherwise find several and fail."""
    port = free_port()
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=True,
                 dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 configure_logging=False, **console.ray_init_options())
    except Exception:
        del os.environ["RAY_ADDRESS"]
        raise
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]
    console.after_ray_init()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_cluster(plan: ResourcePlan, may_grow: bool) -> None:
    """The running Ray's resources against the plan. A Ray that cannot grow (a local one) is
    refused when short; a cluster reached by address may autoscale, so a short plan there only
    prints a note (the stall watchdog says what waits if no node comes)."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if plan.cpus() <= cpus and plan.gpus() <= gpus:
        return
    if not may_grow:
        check_plan(plan, cpus, gpus, "the running Ray")
    print(f"note: the cluster has {cpus:g} CPUs and {gpus:g} GPUs now; {plan.command} needs "
          f"{plan.cpus():g} and {plan.gpus():g}: it waits for the autoscaler to add nodes "
          f"(the stall watchdog reports what waits).", flush=True)
