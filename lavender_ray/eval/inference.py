"""Ray Data batch inference: benchmark rows -> each model's greedy answer, one model per actor.

    ds = tag_benchmark(read_benchmark(path, name, rejects_dir), name, metric.prompt)
    ds = add_predictions(ds, cfg, trained_dir, [BASE, ADAPTER], rejects_dir)

Every model is a `GenerateStage` actor pool (`eval.pool_size` actors, `eval.num_cpus` /
`eval.num_gpus` each, `eval.batch_size` rows per batch); the stages are chained, so the rows
stream through the base model's pool and then the adapter's, and both run at the same time.
Each stage appends one `prediction_<model>` column.

The actors load their model from the saved run with `eval.generation` (the base model is
the run's base with its LoRA switched off); the driver that plans this pipeline loads none.

Prompts follow VLMEvalKit: a row with options gets ``Hint: ...`` (if any), ``Question: ...``,
the lettered options and "Please select the correct answer from the options above."; an open
row gets the question and "Answer the question using a single word or phrase."; a yes/no
benchmark's question gets "Please answer yes or no." unless it already asks for it. The prompt is
the user turn of the model's chat template (with the image), decoded greedily for
`eval.max_new_tokens` tokens.

A row whose image cannot be decoded is written to the rejects folder (stage "inference", source =
its benchmark) with its id and dropped; nothing else is dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray

from lavender_ray.config import LavenderConfig
from lavender_ray.eval.metrics import PromptStyle
from lavender_ray.eval.models import ModelSpec, inference_device
from lavender_ray.images import decode_image
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import RecordError, Reject

if TYPE_CHECKING:
    from ray.data import Dataset

INFERENCE_STAGE = "inference"
CHOICE_INSTRUCTION = "Please select the correct answer from the options above."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
YES_NO_INSTRUCTION = "Please answer yes or no."


# ----------------------------------------------------------------------------------- prompts
def build_prompt(
    question: str, options: dict[str, str], hint: str | None, style: PromptStyle
) -> str:
    """The user turn for one benchmark row (VLMEvalKit's prompts, see the module docstring)."""
    if options:
        lines = [f"Hint: {hint}"] if hint else []
        lines.append(f"Question: {question}")
        lines.append("Options:")
        lines += [f"{letter}. {text}" for letter, text in options.items()]
        lines.append(CHOICE_INSTRUCTION)
        return "\n".join(lines)
    prefix = f"Hint: {hint}\n" if hint else ""
    if style == "yes_no":
        asks = "yes or no" in question.lower()
        return prefix + (question if asks else f"{question} {YES_NO_INSTRUCTION}")
    return f"{prefix}{question}\n{SHORT_INSTRUCTION}"


def image_key(image: bytes) -> str:
    """A short content hash naming an image (questions on the same image share it)."""
    return hashlib.sha1(image).hexdigest()[:16]


def tag_rows(batch: pa.Table, benchmark: str, style: str) -> pa.Table:
    """`map_batches` function: benchmark rows + `benchmark`, `prompt` and `image_key` columns."""
    rows = batch.select(["question", "options", "extras", "image"]).to_pylist()
    prompts = [
        build_prompt(r["question"], json.loads(r["options"]), json.loads(r["extras"]).get("hint"),
                     style)  # type: ignore[arg-type]
        for r in rows
    ]
    n = batch.num_rows
    return (
        batch.append_column("benchmark", pa.array([benchmark] * n, pa.string()))
        .append_column("prompt", pa.array(prompts, pa.string()))
        .append_column("image_key", pa.array([image_key(r["image"]) for r in rows], pa.string()))
    )


def tag_benchmark(
    ds: Dataset, benchmark: str, style: PromptStyle, num_cpus: float = 0.25
) -> Dataset:
    """A Dataset of benchmark rows -> the same rows tagged for inference (`tag_rows`), each
    task asking for `num_cpus` (`data.read_num_cpus` from the commands)."""
    return ds.map_batches(tag_rows, fn_kwargs={"benchmark": benchmark, "style": style},
                          batch_format="pyarrow", num_cpus=num_cpus)


class GenerateStage:
    """`map_batches` callable on an actor pool: tagged benchmark rows -> the same rows + the
    model's answer in `spec.column`; rows whose image does not decode go to the rejects."""

    def __init__(
        self, config: dict[str, Any], trained_dir: str, model: dict[str, Any], rejects_dir: str
    ) -> None:
        # imported in the actor: the VLM stack loads here, never in the driver that plans this
        from lavender_ray.eval.generation import Answerer

        cfg = LavenderConfig.from_dict(config)
        self.spec = ModelSpec(**model)
        self.data = cfg.data
        self.rejects_dir = rejects_dir
        self.answer = Answerer(self.spec, trained_dir, inference_device(cfg),
                               cfg.eval.max_new_tokens)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["id", "benchmark", "image", "prompt"]).to_pylist()
        kept, images, rejects = [], [], []
        for index, row in enumerate(rows):
            try:
                images.append(decode_image(row["image"], self.data.max_image_pixels))
            except RecordError as err:
                rejects.append(Reject(str(row["id"]), str(row["benchmark"]), INFERENCE_STAGE,
                                      err.reason, err.detail))
                continue
            kept.append(index)
        write_rejects(rejects, self.rejects_dir, INFERENCE_STAGE)
        answers = self.answer(images, [rows[i]["prompt"] for i in kept]) if kept else []
        out = batch.take(pa.array(kept, type=pa.int64()))
        return out.append_column(self.spec.column, pa.array(answers, type=pa.string()))


def add_predictions(
    ds: Dataset, cfg: LavenderConfig, trained_dir: str, models: list[ModelSpec], rejects_dir: str
) -> Dataset:
    """Tagged benchmark rows -> the rows (without images) with one prediction column per model,
    each model on its own actor pool (`eval.pool_size`, `eval.num_cpus`, `eval.num_gpus`)."""
    for spec in models:
        ds = ds.map_batches(
            GenerateStage,
            fn_constructor_kwargs={"config": cfg.to_dict(), "trained_dir": trained_dir,
                                   "model": asdict(spec), "rejects_dir": rejects_dir},
            compute=ray.data.ActorPoolStrategy(min_size=cfg.eval.pool_size,
                                               max_size=cfg.eval.pool_size),
            batch_size=cfg.eval.batch_size,
            batch_format="pyarrow",
            num_cpus=cfg.eval.num_cpus,
            num_gpus=cfg.eval.num_gpus,
        )
    return ds.drop_columns(["image"])
