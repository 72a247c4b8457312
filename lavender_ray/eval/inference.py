"""Ray Data batch inference: benchmark rows -> each model's greedy answer, one model per actor.

    ds = tag_benchmark(read_benchmark(path, name, rejects_dir), name, metric.prompt)
    ds = add_predictions(ds, cfg, trained_dir, [BASE, ADAPTER], rejects_dir)

Every model is a `GenerateStage` actor pool (`eval.pool_size` actors, `eval.num_cpus` /
`eval.num_gpus` each, `eval.batch_size` rows per batch); the stages are chained, so the rows
stream through the base model's pool and then the adapter's, and both run at the same time.
Each stage appends one `prediction_<model>` column.

The models come from one saved run (`runs.save_trained`'s layout):
``adapter`` is the run loaded with `load_trained`; ``base`` is the same base model built from the
run's config (`vlm.build_adapter`) with its LoRA, if any, switched off, so it computes exactly
the pretrained model.

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

import copy
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray
import torch
from PIL import Image

from lavender_ray.align import Aligner, load_aligner
from lavender_ray.config import LavenderConfig
from lavender_ray.eval.metrics import PromptStyle
from lavender_ray.images import decode_image
from lavender_ray.rejects import write_rejects
from lavender_ray.runs import ALIGNER_FILE, load_trained, trained_config
from lavender_ray.schema import RecordError, Reject
from lavender_ray.vlm import VLMAdapter, build_adapter
from lavender_ray.vlm.chat import template_messages

if TYPE_CHECKING:
    from ray.data import Dataset

INFERENCE_STAGE = "inference"
CHOICE_INSTRUCTION = "Please select the correct answer from the options above."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
YES_NO_INSTRUCTION = "Please answer yes or no."


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: its name in tables and whether it carries the trained adapter."""

    name: str
    trained: bool

    @property
    def column(self) -> str:
        return f"prediction_{self.name}"


BASE = ModelSpec("base", trained=False)
ADAPTER = ModelSpec("adapter", trained=True)


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


def tag_benchmark(ds: Dataset, benchmark: str, style: PromptStyle, num_cpus: float = 0.25) -> Dataset:
    """A Dataset of benchmark rows -> the same rows tagged for inference (`tag_rows`), each
    task asking for `num_cpus` (`data.read_num_cpus` from the commands)."""
    return ds.map_batches(tag_rows, fn_kwargs={"benchmark": benchmark, "style": style},
                          batch_format="pyarrow", num_cpus=num_cpus)


# ---------------------------------------------------------------------------------- decoding
def greedy_config(model: torch.nn.Module, max_new_tokens: int, pad_token_id: int | None) -> Any:
    """The model's generation config made greedy (no sampling, one beam) for `max_new_tokens`."""
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                  temperature=None, top_p=None, top_k=None)
    if config.pad_token_id is None:
        config.pad_token_id = pad_token_id
    return config


@torch.no_grad()
def generate_answers(
    adapter: VLMAdapter, images: list[Image.Image], prompts: list[str], max_new_tokens: int
) -> list[str]:
    """Greedy answers of the adapter's model to one image + prompt each (one left-padded batch);
    the new tokens decoded without special tokens, stripped."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    texts = [adapter.render(template_messages([{"role": "user", "content": p}]), True)
             for p in prompts]
    inputs = adapter.processor(
        text=texts, images=adapter.processor_images(images), padding=True, padding_side="left",
        add_special_tokens=False, return_tensors="pt",
    )  # fmt: skip
    device = next(adapter.model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    config = greedy_config(adapter.model, max_new_tokens, adapter.tokenizer.pad_token_id)
    output = adapter.model.generate(**inputs, generation_config=config)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]  # [b, prompt + new] -> [b, new]
    return [t.strip() for t in adapter.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@contextmanager
def computing(adapter: VLMAdapter, spec: ModelSpec) -> Iterator[None]:
    """Inside: the adapter's model computes `spec`'s model (LoRA switched off for the base)."""
    disable = getattr(adapter.model, "disable_adapter", None)
    with disable() if (disable is not None and not spec.trained) else nullcontext():
        yield


def load_model(
    spec: ModelSpec, trained_dir: str, device: str
) -> tuple[LavenderConfig, VLMAdapter, Aligner]:
    """(run config, adapter, trained Aligner) for `spec` from a trained run directory; for the
    base the adapter is built fresh from the run's config (use it inside
    `computing(adapter, BASE)`)."""
    if spec.trained:
        return load_trained(trained_dir, device)
    cfg = trained_config(trained_dir)
    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    adapter.model.to(device)
    aligner = load_aligner(Path(trained_dir) / ALIGNER_FILE, expected=cfg.aligner, device=device)
    return cfg, adapter, aligner


def inference_device(cfg: LavenderConfig) -> str:
    """CUDA when the eval actors ask for GPUs, else CPU."""
    return "cuda" if cfg.eval.num_gpus > 0 else "cpu"


class GenerateStage:
    """`map_batches` callable on an actor pool: tagged benchmark rows -> the same rows + the
    model's answer in `spec.column`; rows whose image does not decode go to the rejects."""

    def __init__(
        self, config: dict[str, Any], trained_dir: str, model: dict[str, Any], rejects_dir: str
    ) -> None:
        cfg = LavenderConfig.from_dict(config)
        self.spec = ModelSpec(**model)
        self.eval, self.data = cfg.eval, cfg.data
        self.rejects_dir = rejects_dir
        _, self.adapter, _ = load_model(self.spec, trained_dir, inference_device(cfg))
        self.adapter.model.eval()

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
        answers: list[str] = []
        if kept:
            with computing(self.adapter, self.spec):
                answers = generate_answers(self.adapter, images, [rows[i]["prompt"] for i in kept],
                                           self.eval.max_new_tokens)
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
