"""`export_run`: one trained run -> one folder to serve or share (layout in the package
docstring), every part verified after writing."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from transformers import AutoProcessor

from lavender_ray.config import CONFIG_FILE, ConfigError, LavenderConfig
from lavender_ray.export.card import MERGED_DIR, model_card
from lavender_ray.export.facts import run_facts
from lavender_ray.export.hub import check_repo_id, push_folder
from lavender_ray.export.merged import MergedReport, write_merged
from lavender_ray.runs import ALIGNER_FILE, VLM_DIR, load_trained, trained_config
from lavender_ray.runs.locate import LocatedRun, locate
from lavender_ray.storage import is_uri
from lavender_ray.train.export import ExportReport, verify_export
from lavender_ray.vlm.lora import FULL_WEIGHTS, PEFT_WEIGHTS
from lavender_ray.vlm.registry import adapter_class

CARD_FILE = "README.md"


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what its checks found; `pushed`: the Hub URL, if uploaded."""

    out_dir: Path
    source: LocatedRun
    report: ExportReport
    processor: str
    merged: MergedReport | None = None
    pushed: str | None = None


def export_run(
    path: str | Path, out_dir: str | Path, merge: bool = False, push_to_hub: str | None = None
) -> ExportResult:
    """Export the run, checkpoint or saved run at `path` into the new or empty folder
    `out_dir`; `merge`: add `merged/`; `push_to_hub`: then upload the folder to that repo.
    Bad arguments are `ConfigError`s raised before anything is written."""
    if push_to_hub is not None:
        check_repo_id(push_to_hub)
    source = locate(path)
    out = check_out_dir(out_dir)
    print(f"export from {source.how}", flush=True)
    cfg = trained_config(source.saved_run)
    report = copy_saved_run(source.saved_run, out)
    adapter = load_trained(out)[1] if merge else None  # the export loads as a saved run
    processor = adapter.processor if adapter is not None else family_processor(cfg)
    processor_name = save_processor(processor, out)
    merged = write_merged(adapter, processor, out / MERGED_DIR) if adapter is not None else None
    model_class = adapter_class(cfg.vlm.family).model_class.__name__
    card = model_card(cfg, run_facts(source, cfg), model_class, merge, push_to_hub or str(out))
    (out / CARD_FILE).write_text(card)
    pushed = push_folder(out, push_to_hub) if push_to_hub else None
    return ExportResult(out, source, report, processor_name, merged, pushed)


def check_out_dir(out_dir: str | Path) -> Path:
    """`out_dir` as a new or empty local folder (created), else `ConfigError`."""
    if is_uri(str(out_dir)):
        raise ConfigError(f"--out {str(out_dir)!r} is a URI; export into a local folder")
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r} is a file; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"--out {str(out_dir)!r} holds files already; give a new or empty folder (an export "
            "is never mixed with older files)"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def copy_saved_run(saved_run: Path, out: Path) -> ExportReport:
    """Copy `vlm/`, the Aligner and `config.yaml`, then verify the copy as the trainer verifies
    its exports, against the tensor shapes of the source."""
    expected, aligner_tensors = source_tensors(saved_run)
    shutil.copytree(saved_run / VLM_DIR, out / VLM_DIR)
    for name in (ALIGNER_FILE, CONFIG_FILE):
        shutil.copy2(saved_run / name, out / name)
    return verify_export(out, expected, expected_aligner=aligner_tensors)


def source_tensors(saved_run: Path) -> tuple[dict[str, tuple[int, ...]], int]:
    """The shapes of the saved run's VLM tensors and the count of its Aligner tensors."""
    vlm = saved_run / VLM_DIR
    weights = [vlm / name for name in (PEFT_WEIGHTS, FULL_WEIGHTS) if (vlm / name).is_file()]
    if not weights:
        raise ConfigError(
            f"{str(saved_run)!r} is not a complete saved run: {VLM_DIR}/ holds no "
            f"{PEFT_WEIGHTS} or {FULL_WEIGHTS}"
        )
    return tensor_shapes(weights[0]), len(tensor_shapes(saved_run / ALIGNER_FILE))


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}


def family_processor(cfg: LavenderConfig) -> Any:
    """The processor the run trained with, without loading the model's weights."""
    return adapter_class(cfg.vlm.family).build_vlm_inputs(cfg.vlm).processor


def save_processor(processor: Any, out: Path) -> str:
    """Save `processor` into `out` and check that its class loads it back; warn when
    `AutoProcessor` gives another class (then load it with the class the warning names)."""
    processor.save_pretrained(out)
    cls = type(processor)
    try:
        cls.from_pretrained(out)
    except (OSError, ValueError) as err:
        raise RuntimeError(f"export check: {cls.__name__} does not load from {out}: {err}") from err
    auto = type(AutoProcessor.from_pretrained(out))
    if auto is not cls:
        warnings.warn(
            f"AutoProcessor.from_pretrained({str(out)!r}) gives a {auto.__name__}, not the "
            f"{cls.__name__} the run trained with; load it with {cls.__module__}.{cls.__name__}",
            stacklevel=2,
        )
    return cls.__name__


def describe(result: ExportResult) -> str:
    """Where the export went and what was verified, for people."""
    report, out = result.report, result.out_dir
    lines = [
        f"export:    {out}",
        f"  {VLM_DIR}/      {report.vlm_tensors} tensors, {report.vlm_params} values (verified); "
        f"{ALIGNER_FILE}: {report.aligner_tensors} tensors; {CONFIG_FILE}",
        f"  processor {result.processor} (save_pretrained at the top level)",
        f"  {CARD_FILE} the model card",
    ]
    if result.merged is not None:
        merged = result.merged
        lines.append(f"  {MERGED_DIR}/   the full model, LoRA merged: {merged.tensors} tensors, "
                     f"{merged.values} values in {merged.files} file(s) (verified)")  # fmt: skip
    if result.pushed:
        lines.append(f"pushed:    {result.pushed}")
    return "\n".join(lines)
