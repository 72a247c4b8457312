"""The model card (`README.md`) of an export: Hugging Face front matter, then what the model is,
how it was trained and on what, its metrics and evaluation, how to load it, and the citation.

Only what the run recorded is stated; what it did not record is said in words (never a
placeholder to fill in).
"""

from __future__ import annotations

import re

import yaml

from lavender_ray.config import LavenderConfig, SourceConfig
from lavender_ray.export.facts import RunFacts
from lavender_ray.runs import ALIGNER_FILE, VLM_DIR

MERGED_DIR = "merged"
PAPER = "https://arxiv.org/abs/2502.06814"
CITATION = """\
@inproceedings{jin2025diffusion,
  title     = {Diffusion Instruction Tuning},
  author    = {Jin, Chen and Tanno, Ryutaro and Saseendran, Amrutha and Diethe, Tom and
               Teare, Philip},
  booktitle = {Proceedings of the 42nd International Conference on Machine Learning (ICML)},
  year      = {2025},
  eprint    = {2502.06814},
  archivePrefix = {arXiv}
}"""
HEADLINE_METRICS = ("step", "records", "loss/total", "loss/lm", "loss/att", "align/matched_words")
WORD_SOURCES = {"predicted": "predictions", "label": "labels"}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def model_card(
    cfg: LavenderConfig, facts: RunFacts, model_class: str, merged: bool, where: str
) -> str:
    """The card's Markdown. `model_class`: the family's transformers class name; `merged`: the
    export has `merged/`; `where`: the folder or Hub repo the snippets load from."""
    sections = [
        front_matter(cfg),
        f"# {cfg.train.run_name}: Lavender fine-tune of `{cfg.vlm.model_id}`",
        summary(cfg, merged),
        model_section(cfg),
        method_section(cfg),
        data_section(cfg, facts),
        training_section(cfg, facts),
        metrics_section(facts),
        evaluation_section(facts),
        how_to_load(cfg, model_class, merged, where),
        f"## Citation\n\n```bibtex\n{CITATION}\n```",
    ]
    return "\n\n".join(sections) + "\n"


def front_matter(cfg: LavenderConfig) -> str:
    """`base_model` when the model id is a Hub id; no `license`: the run does not record the
    base model's (it applies, see the card's text)."""
    meta: dict[str, object] = {}
    if HUB_ID.match(cfg.vlm.model_id):
        meta["base_model"] = cfg.vlm.model_id
    meta["library_name"] = "peft" if cfg.lora.mode == "lora" else "transformers"
    meta["pipeline_tag"] = "image-text-to-text"
    meta["tags"] = ["lavender", "vision-language", "diffusion-instruction-tuning",
                    cfg.vlm.family, "lora" if cfg.lora.mode == "lora" else "full-fine-tuning"]
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---"


def summary(cfg: LavenderConfig, merged: bool) -> str:
    what = "A PEFT LoRA adapter" if cfg.lora.mode == "lora" else "Fully fine-tuned weights"
    text = (
        f"{what} for `{cfg.vlm.model_id}`, trained with *Lavender* "
        f"([Diffusion Instruction Tuning]({PAPER}), ICML 2025) by lavender_ray: supervised "
        "fine-tuning whose second loss pulls the model's text-to-image attention towards "
        "Stable Diffusion's cross-attention map of the same word, so that the model also learns "
        "where each answer word is in the image."
    )
    if merged:
        text += f" `{MERGED_DIR}/` holds the full model with the fine-tuning merged in."
    return text + " The base model's license applies."


def model_section(cfg: LavenderConfig) -> str:
    lora = cfg.lora
    tuning = (f"LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout} on "
              f"{', '.join(f'`{t}`' for t in lora.target_modules)}"
              if lora.mode == "lora" else "full fine-tuning (every weight)")  # fmt: skip
    layers = cfg.vlm.attention_layers or "the family's default"
    return table("Model", [
        ("base model", f"`{cfg.vlm.model_id}`" + (f" @ `{cfg.vlm.revision}`"
                                                  if cfg.vlm.revision else "")),
        ("family", cfg.vlm.family),
        ("fine-tuning", tuning),
        ("aligned attention layers", str(layers)),
        ("Aligner", f"{cfg.aligner.variant} (width {cfg.aligner.hidden_dim}, "
                    f"{cfg.aligner.norm} norm, {cfg.aligner.activation}), in `{ALIGNER_FILE}`"),
    ])  # fmt: skip


def method_section(cfg: LavenderConfig) -> str:
    loss, sd = cfg.loss, cfg.sd
    decay = f", decayed as exp(-{loss.lambda_decay} t/T)" if loss.lambda_decay else ""
    rows = [
        ("loss", "alpha_t * L_lm + lambda_t * L_att (L_att: MSE of Aligner(VLM map) vs SD map "
                 "per matched word)"),
        ("lambda", f"{loss.lambda_:g}{decay}"),
        ("word matching", f"{loss.matching}, the model's words from its "
                          f"{WORD_SOURCES[loss.word_source]}"
                          f"{', stop words skipped' if loss.skip_stop_words else ''}"),
        ("Aligner pre-training", f"{loss.aligner_pretrain_steps} steps at alpha "
                                 f"{loss.pretrain_alpha:g}" if loss.aligner_pretrain_steps
                                 else "none"),
        ("SD targets", f"`{sd.model_id}`, {sd.inversion} inversion, {sd.ddim_steps} steps, "
                       f"attention at sides {sd.attention_resolutions}, {sd.output_size}x"
                       f"{sd.output_size} maps"),
    ]  # fmt: skip
    return table("Method", rows)


def data_section(cfg: LavenderConfig, facts: RunFacts) -> str:
    by_source = facts.rejects_by_source
    lines = ["## Training data", "",
             "| source | format | path | sampling | rejected |", "|---|---|---|---|---:|"]
    for s in cfg.data.sources:
        rejected = str(by_source.get(s.name, 0)) if by_source is not None else "n/a"
        path = f"`{s.path}`" if s.path else "generated"
        lines.append(f"| {s.name} | {s.format} | {path} | {sampling(s)} | {rejected} |")
    final = facts.metrics[-1] if facts.metrics else {}
    trained = f"{final['records']:.0f}" if "records" in final else "not recorded"
    rejected = (f"{sum(by_source.values())} (`{facts.shown(facts.rejects_note)}`)"
                if by_source is not None else facts.rejects_note)  # fmt: skip
    lines += ["", f"Records trained on: {trained}. Rejected records: {rejected}."]
    if facts.rejects_by_reason:
        lines += ["", "| stage/reason | records |", "|---|---:|"]
        lines += [f"| {k} | {n} |" for k, n in sorted(facts.rejects_by_reason.items())]
    return "\n".join(lines)


def sampling(source: SourceConfig) -> str:
    parts = [f"weight {source.weight:g}"]
    if source.format == "synthetic":
        parts.append(f"{source.num_samples} generated")
    if source.fraction is not None:
        parts.append(f"fraction {source.fraction:g}")
    if source.max_samples is not None:
        parts.append(f"at most {source.max_samples}")
    return ", ".join(parts)


def training_section(cfg: LavenderConfig, facts: RunFacts) -> str:
    train, optim = cfg.train, cfg.optim
    last = facts.metrics[-1] if facts.metrics else {}
    steps = f"{last['step']:.0f}" if "step" in last else "not recorded"
    if last.get("train/epoch"):
        steps += f", in {last['train/epoch']:.0f} pass(es) over the data"
    return table("Training", [
        ("steps", f"{steps} (of train.max_steps={train.max_steps})"),
        ("batch", f"{train.micro_batch_size} x {train.grad_accum_steps} accumulation x "
                  f"{train.num_workers} workers per optimizer step"),
        ("optimizer", f"AdamW lr {optim.lr:g}, weight decay {optim.weight_decay:g}, StepLR gamma "
                      f"{optim.step_lr_gamma:g} every {max(1, train.max_steps // train.epochs)} "
                      f"steps (train.epochs={train.epochs}), warm-up {optim.warmup_steps} steps"),
        ("precision", f"{train.precision} (DeepSpeed ZeRO-{train.zero_stage})"),
        ("config", "`config.yaml` (the resolved config of the run)"),
    ])  # fmt: skip


def metrics_section(facts: RunFacts) -> str:
    if not facts.metrics:
        return "## Training metrics\n\nNo metrics history was found next to this export."
    first, last = facts.metrics[0], facts.metrics[-1]
    keys = [k for k in HEADLINE_METRICS if k in last]
    keys += sorted(k for k in last if k not in keys and isinstance(last[k], int | float))
    source = f"From `{facts.shown(facts.metrics_file)}` ({len(facts.metrics)} reports)."
    lines = ["## Training metrics", "", source, "",
             "| metric | first report | final |", "|---|---:|---:|"]  # fmt: skip
    lines += [f"| {k} | {number(first.get(k))} | {number(last[k])} |" for k in keys]
    return "\n".join(lines)


def evaluation_section(facts: RunFacts) -> str:
    if facts.evaluation is None:
        return ("## Evaluation\n\nThis run has no evaluation report; `lavender evaluate "
                "--adapter <export>/ --bench ...` writes one (base model vs this adapter).")
    return f"## Evaluation\n\nFrom `{facts.shown(facts.evaluation_file)}`.\n\n{facts.evaluation}"


def how_to_load(cfg: LavenderConfig, model_class: str, merged: bool, where: str) -> str:
    path = f"path = {where!r}  # this folder, or the Hub repo it was uploaded to\n"
    imports = f"from transformers import AutoProcessor, {model_class}\n\n"
    processor = "processor = AutoProcessor.from_pretrained(path)"
    if cfg.lora.mode == "lora":
        tuned = (f"from peft import PeftModel\n{imports}{path}"
                 f"base = {model_class}.from_pretrained({cfg.vlm.model_id!r})\n"
                 f"model = PeftModel.from_pretrained(base, path, subfolder={VLM_DIR!r})\n")
    else:
        tuned = (f"{imports}{path}"
                 f"model = {model_class}.from_pretrained(path, subfolder={VLM_DIR!r})\n")
    text = ["## How to load", "", f"The fine-tuned weights in `{VLM_DIR}/`, on the base model:",
            "", f"```python\n{tuned}{processor}\n```"]
    if merged:
        code = (f"{imports}{path}model = {model_class}.from_pretrained(path, "
                f"subfolder={MERGED_DIR!r})\n{processor}")
        text += ["", f"The merged weights in `{MERGED_DIR}/` need no PEFT; serve that folder "
                 f"(e.g. `vllm serve <export>/{MERGED_DIR}`):", "", f"```python\n{code}\n```"]
    else:
        text += ["", "Merged weights to serve without PEFT: `lavender export <run> --out DIR "
                 f"--merge` writes them into `DIR/{MERGED_DIR}/`."]
    text += ["", "With the Aligner, as lavender_ray evaluates it (attention maps per word), from "
             "a local copy:", "", "```python\nfrom lavender_ray.runs import load_trained\n\n"
             f"cfg, adapter, aligner = load_trained({where!r})\n```"]
    return "\n".join(text)  # fmt: skip


def table(title: str, rows: list[tuple[str, str]]) -> str:
    """A section of one two-column table."""
    lines = [f"## {title}", "", "| | |", "|---|---|"]
    return "\n".join(lines + [f"| {key} | {value} |" for key, value in rows])


def number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.4g}"
