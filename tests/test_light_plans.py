"""The processes that only schedule work unpickle the train dataset's plan but never run a model:
Ray Train's controller (its datasets callback), Ray Data's `DatasetManager` and `SplitCoordinator`.
Unpickling the plan must not import the model stacks, or each of those processes spends seconds
of CPU importing diffusers and transformers in every run and every Tune trial (on two cores,
about 10 s of a tiny `lavender train`'s start-up)."""

from __future__ import annotations

import sys

import pytest
import ray
from test_train import tiny_train_config

from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.pipeline.dataset import build_train_dataset

MODEL_STACKS = ("diffusers", "transformers", "deepspeed", "peft", "torch")


@ray.remote(num_cpus=0, runtime_env={"env_vars": {"LAVENDER_FRESH_WORKER": "plan-probe"}})
def modules_after_unpickling(plan: dict) -> list[str]:
    """Runs in a fresh worker (its own runtime env): the model stacks `plan` made it import."""
    assert plan["train"] is not None  # the argument is unpickled before this line runs
    return [m for m in MODEL_STACKS if m in sys.modules]


@pytest.mark.parametrize("mode", ["stream", "cache"])
def test_unpickling_the_train_dataset_imports_no_model_stack(ray_local, tmp_path, mode):
    cfg = tiny_train_config(tmp_path, make_synthetic_records(4, seed=0, image_size=32),
                            **{"pipeline.mode": mode,
                               "pipeline.cache_path": str(tmp_path / "cache")})
    dataset = build_train_dataset(cfg, str(tmp_path / "rejects"))
    assert ray.get(modules_after_unpickling.remote({"train": dataset})) == []


def test_the_probe_sees_a_model_stack_when_the_plan_carries_one(ray_local):
    """The check above can fail: a plan whose function lives next to torch imports it."""
    from lavender_ray.train.step import collate_records

    assert "torch" in ray.get(modules_after_unpickling.remote({"train": collate_records}))
