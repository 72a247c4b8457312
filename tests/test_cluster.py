"""The AWS cluster launcher YAML against Ray's own schema (offline), the presets against its node
types, placement checks, and placement on a local Ray with fake V100/A100 nodes.

The fake-accelerator cluster runs in a subprocess (`python tests/test_cluster.py OUT`) with its own
Ray temp dir, so it never meets the session's `ray_local`: three local nodes (a CPU head, one
"V100" and one "A100" node, each with 2 logical GPUs and its `accelerator_type:*` resource).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray
import yaml

from lavender_ray.config import ConfigError, load_config, preset_names
from lavender_ray.placement import (
    check_placement,
    gpu_types,
    sd_actor_request,
    slots_on,
    worker_request,
    worker_slots,
)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster" / "cluster.yaml"
DOCKERFILE = ROOT / "cluster" / "Dockerfile"
V100_NODE = {"CPU": 32, "GPU": 4, "accelerator_type:V100": 1}
A100_NODE = {"CPU": 96, "GPU": 8, "accelerator_type:A100": 1}


def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def node_types() -> dict[str, dict]:
    return cluster_config()["available_node_types"]


# --------------------------------------------------------------------- cluster YAML (offline)
def test_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster_config()))
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError when invalid
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "cpu_spot", "v100_spot", "a100"}


def test_node_types_have_their_market_accelerator_and_bounds():
    types = node_types()
    spot = {n for n, t in types.items() if t["node_config"].get("InstanceMarketOptions")}
    assert spot == {"cpu_spot", "v100_spot"}  # head and A100 trainers are on-demand
    assert types["v100_spot"]["node_config"]["InstanceType"].startswith("p3.")
    assert types["a100"]["node_config"]["InstanceType"] == "p4d.24xlarge"
    assert types["v100_spot"]["resources"]["accelerator_type:V100"] == 1
    assert types["a100"]["resources"]["accelerator_type:A100"] == 1
    assert gpu_types([t["resources"] for t in types.values()]) == {"V100", "A100"}
    assert types["v100_spot"]["min_workers"] >= 1  # the SD pool's node type is kept warm
    for name, node_type in types.items():
        if name != "head":
            assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
    assert cluster_config()["idle_timeout_minutes"] > 0


def test_dashboard_is_never_opened_to_the_network():
    config = cluster_config()
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()
    assert "security_group" not in config["provider"]  # Ray's default group: SSH only


def test_dockerfile_pins_this_ray_and_a_volta_capable_torch():
    text = DOCKERFILE.read_text()
    assert re.search(rf"rayproject/ray:{re.escape(ray.__version__)}-py311-gpu", text)
    assert "download.pytorch.org/whl/cu126" in text
    assert "sm_70" in text  # the build refuses a torch without Volta kernels


def _capacity(request: dict[str, float], node_type: dict) -> int:
    """Units of `request` the node type can host when scaled to its `max_workers` (the head,
    which has none, is one node)."""
    return slots_on(request, node_type["resources"]) * node_type.get("max_workers", 1)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_places_on_some_node_type(name):
    cfg = load_config(name)
    types = node_types()
    workers, actors, driver = worker_request(cfg), sd_actor_request(cfg), cfg.tune.trial_resources
    train_hosts = [
        n for n, t in types.items()
        if _capacity(workers, t) >= cfg.train.num_workers and _placement_ok(cfg, t["resources"])
    ]
    sd_hosts = [n for n, t in types.items() if _capacity(actors, t) >= cfg.pipeline.sd_pool_min]
    driver_hosts = [n for n, t in types.items() if slots_on(driver, t["resources"])]
    assert train_hosts, f"{name}: no node type hosts {cfg.train.num_workers} x {workers}"
    assert sd_hosts, f"{name}: no node type hosts {cfg.pipeline.sd_pool_min} x {actors}"
    assert driver_hosts, f"{name}: no node type hosts a Tune trial driver {driver}"


def _placement_ok(cfg, resources: dict[str, float]) -> bool:
    """The preset's precision and GPU type rules hold on a cluster of this node type alone."""
    try:
        check_placement(cfg, [resources])
    except ConfigError:
        return False
    return True


def test_cluster_preset_asks_for_the_node_types_accelerators():
    cfg = load_config("cluster_v100_a100")
    types = node_types()
    assert (cfg.pipeline.sd_accelerator, cfg.train.accelerator) == ("V100", "A100")
    sd_hosts = {n for n, t in types.items() if slots_on(sd_actor_request(cfg), t["resources"])}
    train_hosts = {n for n, t in types.items() if slots_on(worker_request(cfg), t["resources"])}
    assert sd_hosts == {"v100_spot"} and train_hosts == {"a100"}
    assert types["head"]["resources"]["lavender_driver"] >= 1
    assert cfg.tune.trial_resources == {"lavender_driver": 1}
    assert cfg.train.shared_storage and cfg.train.storage_path.startswith("/mnt/lavender")
    placement = check_placement(cfg, [V100_NODE, A100_NODE])
    assert (placement.train_precision, placement.sd_device.name) == ("bf16", "V100")


# ------------------------------------------------------------------------ placement checks
def test_placement_resolves_precision_from_the_gpu_type():
    v100 = load_config("demo", ["train.use_gpu=true", "train.accelerator=V100"])
    assert check_placement(v100, [V100_NODE]).train_precision == "fp16"
    unset = load_config("demo", ["train.use_gpu=true"])
    assert check_placement(unset, [A100_NODE]).train_precision == "bf16"  # the only GPU type
    assert check_placement(unset, []).train_device is None  # no GPU node up yet: workers decide


@pytest.mark.parametrize(
    "overrides, nodes, fragments",
    [
        (["train.use_gpu=true", "train.accelerator=V100", "train.precision=bf16"], [],
         ["bf16", "V100", "fp16"]),
        (["train.use_gpu=true", "train.precision=bf16"], [V100_NODE], ["bf16", "V100"]),
        (["train.precision=fp16"], [], ["fp16", "CPU"]),
        (["train.use_gpu=true"], [V100_NODE, A100_NODE],
         ["train.accelerator is unset", "A100, V100", "one DeepSpeed group"]),
        (["train.use_gpu=true", "train.accelerator=A100,V100"], [], ["2 GPU types", "A100, V100"]),
        (["train.accelerator=A100"], [], ["train.use_gpu=true"]),
        (["train.use_gpu=true", "train.accelerator=a100"], [], ["'a100'", "allowed", "A100"]),
        (["pipeline.sd_accelerator=V100"], [], ["pipeline.sd_num_gpus", "V100"]),
        (["pipeline.sd_num_gpus=1", "pipeline.sd_accelerator=V100", "sd.dtype=bf16"], [],
         ["sd.dtype='bf16'", "V100"]),
        (["sd.dtype=fp16"], [], ["sd.dtype='fp16'", "CPU"]),
    ],
)
def test_unsafe_placements_are_refused_with_reasons(overrides, nodes, fragments):
    with pytest.raises(ConfigError) as err:
        check_placement(load_config("demo", overrides), nodes)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_worker_slots_count_whole_workers_per_node():
    cfg = load_config("cluster_v100_a100")
    assert worker_slots(worker_request(cfg), [A100_NODE, A100_NODE, V100_NODE]) == 16
    assert worker_slots(sd_actor_request(cfg), [V100_NODE, A100_NODE]) == 4
    assert slots_on({"CPU": 0.5}, {"CPU": 2}) == 4


# --------------------------------------------------------------- fake V100/A100 local cluster
FAKE_CLUSTER = {
    "pipeline.sd_pool_min": 2,
    "pipeline.sd_pool_max": 2,
    "pipeline.sd_num_cpus": 0.5,
    "train.num_workers": 2,
    "train.cpus_per_worker": 0.5,
}


def run_isolated(script: Path, out: Path, timeout_s: float) -> None:
    """Run `python script OUT` in its own session and Ray temp dir (`RAY_TMPDIR`: its Ray never
    meets another one of this machine); on timeout SIGTERM (Ray shuts down), then SIGKILL."""
    ray_tmp = tempfile.mkdtemp(prefix="lv-", dir="/tmp")  # short: Ray's socket paths
    env = {
        **os.environ,
        "RAY_TMPDIR": ray_tmp,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "DS_ACCELERATOR": "cpu",
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
    }
    env.pop("RAY_ADDRESS", None)
    log = out / "subprocess.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out)], env=env, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = _stop(proc)
        except BaseException:  # pytest-timeout, Ctrl-C: never leave its Ray running
            _stop(proc)
            raise
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 0, f"{script.name} exited {code}; last output:\n{log.read_text()[-6000:]}"


def _stop(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return "timeout"


class NodeOfActor:
    """`map_batches` callable: the node each row was processed on."""

    def __call__(self, batch: dict) -> dict:
        node = ray.get_runtime_context().get_node_id()
        return {"node": [node] * len(batch["id"])}


def worker_node(config: dict) -> None:
    """Train function: each rank writes the node it runs on."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    Path(config["out"], f"rank{rank}").write_text(ray.get_runtime_context().get_node_id())


def probe_fake_cluster(out: Path) -> None:
    """Start the fake cluster, place the SD pool and the trainer as the cluster preset asks,
    and write which node type hosted what to `out/placement.json`."""
    from ray.cluster_utils import Cluster
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from lavender_ray.pipeline.sd_stage import sd_stage_options
    from lavender_ray.placement import cluster_nodes
    from lavender_ray.train.launch import build_trainer, train

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        for gpu in ("V100", "A100"):
            cluster.add_node(num_cpus=2, num_gpus=2, resources={f"accelerator_type:{gpu}": 1})
        ray.init(address=cluster.address, log_to_driver=False)
        kinds = {n["NodeID"]: ",".join(gpu_types([n["Resources"]])) or "cpu" for n in ray.nodes()}
        cfg = load_config(
            "cluster_v100_a100", {**FAKE_CLUSTER, "train.storage_path": str(out / "runs")}
        )

        sd_options = {**sd_stage_options(cfg, str(out / "rejects")), "fn_constructor_kwargs": {}}
        sd_options.update(batch_format="numpy", batch_size=1)
        records = ray.data.range(8, override_num_blocks=8)
        rows = records.map_batches(NodeOfActor, **sd_options).take_all()

        ranks = out / "ranks"
        ranks.mkdir()
        scaling = build_trainer(cfg, {}).scaling_config
        TorchTrainer(
            worker_node,
            train_loop_config={"out": str(ranks)},
            scaling_config=scaling,
            torch_config=TorchConfig(backend="gloo"),  # fake GPUs: no NCCL
            run_config=RunConfig(name="probe", storage_path=str(out / "runs"),
                                 failure_config=FailureConfig(controller_failure_limit=0)),
        ).fit()

        # The fake cluster's sizes and synthetic data: the preset's 8 workers do not fit it and
        # its /mnt/lavender paths do not exist here; both are checked before the GPU types.
        mixed = load_config(
            "cluster_v100_a100",
            {**FAKE_CLUSTER, "train.storage_path": str(out / "runs"), "train.accelerator": None,
             "data.sources": [{"name": "train", "format": "synthetic"}]},
        )
        try:
            train(mixed)
            refusal = None
        except ConfigError as err:
            refusal = str(err)
        result = {
            "nodes": sorted(kinds.values()),
            "sd": sorted({kinds[r["node"]] for r in rows}),
            "sd_rows": len(rows),
            "train": sorted(kinds[p.read_text()] for p in ranks.iterdir()),
            "scaling_accelerator": scaling.accelerator_type,
            "mixed_refusal": refusal,
            "cluster_gpu_types": sorted(gpu_types(cluster_nodes())),
        }
        (out / "placement.json").write_text(json.dumps(result))
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fake_cluster")
    run_isolated(Path(__file__), out, timeout_s=400)
    return json.loads((out / "placement.json").read_text())


@pytest.mark.slow  # a fake multi-node cluster with a TorchTrainer
def test_sd_actors_and_train_workers_land_on_their_gpu_types(fake_cluster):
    assert fake_cluster["nodes"] == ["A100", "V100", "cpu"]
    assert fake_cluster["sd_rows"] == 8 and fake_cluster["sd"] == ["V100"]
    assert fake_cluster["scaling_accelerator"] == "A100"
    assert fake_cluster["train"] == ["A100", "A100"]


@pytest.mark.slow  # a fake multi-node cluster with a TorchTrainer
def test_mixed_gpu_types_in_one_trainer_are_refused_before_start(fake_cluster):
    assert fake_cluster["cluster_gpu_types"] == ["A100", "V100"]
    refusal = fake_cluster["mixed_refusal"]
    assert refusal is not None and "one DeepSpeed group" in refusal and "A100, V100" in refusal


if __name__ == "__main__":
    probe_fake_cluster(Path(sys.argv[1]))
