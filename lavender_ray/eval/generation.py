"""The evaluated models at work, in the processes that hold them: the `GenerateStage` actors of
`eval.inference` and the attention probe task of `eval.evaluate`. The VLM stack (transformers,
PEFT, the model families) loads here and nowhere in the evaluate driver.

The models come from one saved run (`runs.save_trained`'s layout): ``adapter`` is the run loaded
with `load_trained`; ``base`` is the same base model built from the run's config
(`vlm.build_adapter`) with its LoRA, if any, switched off (`computing`), so it computes exactly
the pretrained model. Answers are decoded greedily for `eval.max_new_tokens` tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lavender_ray.align import Aligner, load_aligner
from lavender_ray.config import LavenderConfig
from lavender_ray.eval.attention import probe_attention, probe_records
from lavender_ray.eval.models import ADAPTER, BASE, ModelSpec, inference_device
from lavender_ray.eval.probes import compare_probes
from lavender_ray.runs import ALIGNER_FILE, load_trained, trained_config
from lavender_ray.vlm import VLMAdapter, build_adapter
from lavender_ray.vlm.chat import template_messages


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


@contextmanager
def computing(adapter: VLMAdapter, spec: ModelSpec) -> Iterator[None]:
    """Inside: the adapter's model computes `spec`'s model (LoRA switched off for the base)."""
    disable = getattr(adapter.model, "disable_adapter", None)
    with disable() if (disable is not None and not spec.trained) else nullcontext():
        yield


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


class Answerer:
    """One model of a saved run, loaded once on `device`, answering batches of image + prompt
    greedily (`generate_answers`): the model side of a `GenerateStage` actor."""

    def __init__(self, spec: ModelSpec, trained_dir: str, device: str, max_new_tokens: int) -> None:
        self.spec, self.max_new_tokens = spec, max_new_tokens
        _, self.adapter, _ = load_model(spec, trained_dir, device)
        self.adapter.model.eval()

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        with computing(self.adapter, self.spec):
            return generate_answers(self.adapter, images, prompts, self.max_new_tokens)


# --------------------------------------------------------------------------------- probing
def probe_before_after(config: dict[str, Any], trained_dir: str) -> list[Any]:
    """The probe records through the adapter and then the base model (one model in memory at a
    time), both with the trained Aligner, merged per record (`compare_probes`)."""
    cfg = LavenderConfig.from_dict(config)
    device = inference_device(cfg)
    run_cfg, adapter, aligner = load_model(ADAPTER, trained_dir, device)
    records = probe_records(cfg, run_cfg, device)
    map_size = run_cfg.sd.output_size
    after = probe_attention(adapter, aligner, records, map_size)
    del adapter
    _, base, _ = load_model(BASE, trained_dir, device)
    with computing(base, BASE):
        before = probe_attention(base, aligner, records, map_size)
    return compare_probes(before, after, labels=(BASE.name, ADAPTER.name))
