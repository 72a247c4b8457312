"""Where a run's files live, and the saved-run format (one home for every name below).

A training run (`lavender train`, a Tune trial, the demo) writes under
`<train.storage_path>/<train.run_name>/` (a local path or any pyarrow URI)::

    config.yaml                     the resolved config (`CONFIG_FILE`)
    rejects/                        every record a stage could not use (`lavender_ray.rejects`)
    logs/<command>-<time>.log       Ray's, DeepSpeed's and the workers' own output of each
                                    `lavender` command (`LOGS_DIR`, `lavender_ray.console`)
    checkpoint_step<N>/             one Ray Train checkpoint (`checkpoint_name`):
        deepspeed/                  every rank's DeepSpeed state (`DS_TAG`)
        lavender_state_rank<r>.json step and records of rank r (`STATE_FILE`)
        metrics.jsonl               rank 0's reported metrics so far (`METRICS_FILE`)
        export/                     the verified saved run (`EXPORT_DIR`)
    adapter/                        the final saved run, copied from the last export
    metrics.jsonl                   rank 0's reported metrics, one JSON line appended per
                                    report as it happens (`METRICS_FILE`; a resumed run goes
                                    on from its checkpoint's history)
    report/curves.png               the metric curves, drawn at the end (`CURVES_FILE`)
    report/step_<N>/                attention PNGs of step N (`attention_report_dir`,
                                    `train.attention_png_every`)
    tracking.json                   the experiment trackers' run ids (`TRACKING_FILE`)
    tensorboard/                    TensorBoard event files (`train.report_to`)
    mlruns/                         the embedded MLflow store (no tracking URI given)
    wandb/                          W&B's run files (unless WANDB_DIR says otherwise)

A **saved run** (`save_trained` / `load_trained`; what `lavender evaluate --adapter` reads)::

    vlm/                            PEFT adapter (or full weights) + lavender_vlm.json
    aligner.safetensors             the Aligner with its architecture in the metadata
    config.yaml                     the resolved config it was trained with

Other layouts build on these: a Tune experiment (`lavender_ray.tune.layout`) and the SD target
cache (`lavender_ray.pipeline.cache`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
import yaml

from lavender_ray.config import (
    CONFIG_FILE,
    ConfigError,
    LavenderConfig,
    config_differences,
    load_config,
)
from lavender_ray.storage import absolute, filesystem_and_path, read_text

if TYPE_CHECKING:
    import torch

    from lavender_ray.align import Aligner
    from lavender_ray.vlm import VLMAdapter

VLM_DIR = "vlm"
ALIGNER_FILE = "aligner.safetensors"
SAVED_RUN_PARTS = (VLM_DIR, ALIGNER_FILE, CONFIG_FILE)
ADAPTER_DIR = "adapter"
EXPORT_DIR = "export"
METRICS_FILE = "metrics.jsonl"
LOGS_DIR = "logs"  # a command's log files (`lavender_ray.console`): <run>/logs, <out>/logs
REPORT_DIR = "report"
CURVES_FILE = f"{REPORT_DIR}/curves.png"
TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
DS_TAG = "deepspeed"
CHECKPOINT_PREFIX = "checkpoint_step"  # + the step, 7 digits (`checkpoint_name`)
STATE_FILE = "lavender_state_rank{rank}.json"  # one per rank: Ray merges the ranks' folders
FAULT_MARKER = "fault_injected"  # `train.fail_at_step`: the injected failure happened


def run_dir_of(cfg: LavenderConfig) -> str:
    """`<storage_path>/<run_name>`; a local storage path is made absolute."""
    return f"{absolute(cfg.train.storage_path).rstrip('/')}/{cfg.train.run_name}"


def check_run(cfg: LavenderConfig, run_dir: str, resume: bool | None) -> bool:
    """Whether the run in `run_dir` is resumed. `resume`: False = the run must be new, True = it
    must exist, None = resume it if it exists (Tune trials); a resumed run must have the config
    it was started with, unless it has no checkpoint (it stopped before its first, e.g. on a
    model that did not load: nothing was trained, it starts again at step 0 with `cfg`).
    `ConfigError` naming what to do otherwise."""
    name = cfg.train.run_name
    saved = read_text(f"{run_dir}/{CONFIG_FILE}")
    if saved is None:
        if resume:
            raise ConfigError(f"--resume: there is no run {name!r} at {run_dir} to resume")
        return False
    started = bool(checkpoint_steps(run_dir))
    if resume is False:
        how = (": continue it with --resume (the same preset and --set values)" if started else
               " without a checkpoint (it stopped before its first one): add --resume to start "
               "it again at step 0 with this config")
        raise ConfigError(
            f"a run {name!r} exists at {run_dir}{how}, or start a new one with another "
            "train.run_name (or none: a fresh name is made for every run)"
        )
    differences = config_differences(yaml.safe_load(saved), cfg.to_dict())
    if differences and started:
        raise ConfigError(
            f"--resume: run {name!r} ({run_dir}) was started with another config; it differs in "
            f"{differences}. Resume with the same preset and --set values, or start a new run "
            "(another train.run_name)"
        )
    return True


def metrics_path(run_dir: str) -> str:
    """The run's live metrics log: one JSON object per report, appended by rank 0."""
    return f"{run_dir}/{METRICS_FILE}"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimizer steps."""
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def is_saved_run(folder: str | Path) -> bool:
    """Whether `folder` (a local path or URI) holds every part of a saved run."""
    fs, root = filesystem_and_path(str(folder))
    found = fs.get_file_info([f"{root.rstrip('/')}/{part}" for part in SAVED_RUN_PARTS])
    return all(info.type != pafs.FileType.NotFound for info in found)


def checkpoint_step(path: str) -> int | None:
    """The step of a `checkpoint_step<N>` folder (its path or name), None for another name."""
    name = PurePosixPath(path).name
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def checkpoint_steps(run_dir: str) -> list[int]:
    """The steps of the run's `checkpoint_step<N>/` folders (local path or URI), ascending."""
    fs, root = filesystem_and_path(run_dir)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    steps = (checkpoint_step(info.base_name) for info in found
             if info.type == pafs.FileType.Directory)
    return sorted(step for step in steps if step is not None)


def latest_complete_checkpoint(run_dir: str, ranks: int) -> int | None:
    """The step of the run's newest checkpoint that every one of `ranks` ranks finished writing
    (each rank's `STATE_FILE`, written after its DeepSpeed state, and rank 0's export and
    metrics history), or None. A run stopped by Ctrl-C or a lost driver can leave a newer
    checkpoint that Ray Train never registered, or a half-written one: this reads the folders
    themselves, so `reporting.restore` resumes from the newest checkpoint there is."""
    fs, root = filesystem_and_path(run_dir)
    for step in reversed(checkpoint_steps(run_dir)):
        folder = f"{root.rstrip('/')}/{checkpoint_name(step)}"
        parts = [STATE_FILE.format(rank=r) for r in range(ranks)]
        parts += [METRICS_FILE, *(f"{EXPORT_DIR}/{part}" for part in SAVED_RUN_PARTS)]
        found = fs.get_file_info([f"{folder}/{part}" for part in parts])
        if all(info.type != pafs.FileType.NotFound for info in found):
            return step
    return None


def attention_report_dir(step: int) -> str:
    """The folder (relative to the run) of the attention PNGs drawn after `step` steps."""
    return f"{REPORT_DIR}/step_{step:06d}"


def checkpoint_location(run_dir: str, checkpoint_path: str) -> str:
    """Where a checkpoint of the run in `run_dir` lives, as a local path or full URI. Ray's
    checkpoint paths drop the URI scheme (`bucket/prefix/...` for s3://bucket/prefix/...)."""
    return f"{run_dir}/{PurePosixPath(checkpoint_path).name}"


def save_trained(
    directory: str | Path,
    adapter: VLMAdapter,
    aligner: Aligner,
    cfg: LavenderConfig,
    vlm_state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a saved run: `vlm/` (PEFT adapter dir, or full weights), `aligner.safetensors`
    and the resolved `config.yaml`. Under ZeRO-3 pass the gathered VLM weights as
    `vlm_state_dict` and call inside the Aligner's `GatheredParameters`."""
    # imported here, as in load_trained: the drivers that only name a run's folders (train,
    # tune: tests/test_layout.py) do not load transformers, PEFT and torch for them
    from lavender_ray.align import save_aligner
    from lavender_ray.vlm import save_adapter

    directory = Path(directory)
    save_adapter(adapter, directory / VLM_DIR, state_dict=vlm_state_dict)
    save_aligner(aligner, directory / ALIGNER_FILE)
    cfg.save(directory)
    return directory


def trained_config(directory: str | Path) -> LavenderConfig:
    """The resolved config of a saved run, after checking the folder holds one
    (`FileNotFoundError` naming the missing parts)."""
    directory = Path(directory)
    missing = [n for n in SAVED_RUN_PARTS if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{str(directory)!r} is not a saved run: missing {', '.join(missing)}"
        )
    return load_config(str(directory / CONFIG_FILE))


def load_trained(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[LavenderConfig, VLMAdapter, Aligner]:
    """Read back what `save_trained` wrote: (config, adapter with its trained weights, Aligner)."""
    from lavender_ray.align import load_aligner  # see save_trained
    from lavender_ray.vlm import load_adapter

    directory = Path(directory)
    cfg = trained_config(directory)
    adapter = load_adapter(cfg.vlm, cfg.lora, directory / VLM_DIR, map_size=cfg.sd.output_size)
    adapter.model.to(device)
    aligner = load_aligner(directory / ALIGNER_FILE, expected=cfg.aligner, device=device)
    return cfg, adapter, aligner
