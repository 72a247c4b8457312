"""Which saved run a path names, and the run folder around it (see `lavender_ray.runs`): what
`lavender evaluate --adapter` and `lavender export` accept.

`locate(path)` accepts, in this order:

1. a run folder `<storage>/<run_name>/`: its `adapter/` (the trainer's copy of the last
   checkpoint's verified export), else the export of its latest checkpoint that has one;
2. a checkpoint folder `<run>/checkpoint_step<N>/`: its `export/`;
3. a saved run itself (`vlm/` + `aligner.safetensors` + `config.yaml`).

Local folders only. Everything that is not one of these is refused with one line
(`ConfigError`), the run folder without a checkpoint included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lavender_ray.config import CONFIG_FILE, ConfigError
from lavender_ray.runs import (
    ADAPTER_DIR,
    EXPORT_DIR,
    METRICS_FILE,
    SAVED_RUN_PARTS,
    checkpoint_name,
    checkpoint_steps,
    is_saved_run,
)
from lavender_ray.storage import is_uri

ACCEPTED = (
    "a run folder (<storage>/<run_name>/ with adapter/ or checkpoint_step*/), a checkpoint "
    "(checkpoint_step<N>/ with export/) or a saved run (vlm/ + aligner.safetensors + config.yaml)"
)


@dataclass(frozen=True)
class LocatedRun:
    """The saved run a path names and where it came from.

    how: one line for the console naming the folder used and why; run_dir: the run folder it
    belongs to (config, rejects, metrics, evaluation), when there is one; checkpoint: the
    checkpoint it was exported from, when known."""

    saved_run: Path
    how: str
    run_dir: Path | None = None
    checkpoint: Path | None = None

    def metrics_file(self) -> Path | None:
        """The metrics history: the checkpoint's, else the run's final one, else the latest
        checkpoint's."""
        candidates = [self.checkpoint] if self.checkpoint else []
        if self.run_dir is not None:
            candidates += [self.run_dir, *reversed(checkpoints(self.run_dir))]
        files = [c / METRICS_FILE for c in candidates if (c / METRICS_FILE).is_file()]
        return files[0] if files else None


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    return [run_dir / checkpoint_name(step) for step in checkpoint_steps(str(run_dir))]


def is_run_dir(folder: Path) -> bool:
    has_checkpoint = (folder / ADAPTER_DIR).is_dir() or bool(checkpoints(folder))
    return (folder / CONFIG_FILE).is_file() and has_checkpoint


def enclosing_run(saved_run: Path) -> Path | None:
    """The run folder of `<run>/adapter` or `<run>/checkpoint_step<N>/export`, if it is one."""
    for folder in (saved_run.parent, saved_run.parent.parent):
        if is_run_dir(folder):
            return folder
    return None


def locate(path: str | Path) -> LocatedRun:
    """The saved run behind `path` (see the module docstring); `ConfigError` if there is none."""
    if is_uri(str(path)):
        raise ConfigError(
            f"{str(path)!r} is a URI; a saved run is read from a local folder: copy the run (or "
            "its adapter/) to a local folder first (e.g. `aws s3 cp --recursive`)"
        )
    folder = Path(path).resolve()
    if not folder.exists():
        raise ConfigError(f"{str(path)!r} does not exist; give {ACCEPTED}")
    if not folder.is_dir():
        raise ConfigError(f"{str(path)!r} is a file; give {ACCEPTED}")
    if is_run_dir(folder):
        return from_run_dir(folder)
    if (folder / EXPORT_DIR).is_dir():
        return from_checkpoint(folder)
    if is_saved_run(folder):
        run_dir = enclosing_run(folder)
        checkpoint = folder.parent if folder.name == EXPORT_DIR else None
        return LocatedRun(folder, f"saved run {folder}", run_dir, checkpoint)
    if (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"{str(path)!r} is a run without a checkpoint yet: no saved run in it")
    raise ConfigError(f"{str(path)!r} is none of {ACCEPTED}")


def from_run_dir(run_dir: Path) -> LocatedRun:
    adapter = run_dir / ADAPTER_DIR
    if is_saved_run(adapter):
        how = f"run folder {run_dir}: its {ADAPTER_DIR}/ (the last checkpoint's export)"
        return LocatedRun(adapter, how, run_dir)
    exported = [c for c in checkpoints(run_dir) if is_saved_run(c / EXPORT_DIR)]
    if not exported:
        raise ConfigError(
            f"{str(run_dir)!r} is a run without a complete {ADAPTER_DIR}/ or checkpoint "
            f"{EXPORT_DIR}/ yet: no saved run in it"
        )
    latest = exported[-1]
    how = (f"run folder {run_dir}: no complete {ADAPTER_DIR}/, so the latest checkpoint's "
           f"{latest.name}/{EXPORT_DIR}/")  # fmt: skip
    return LocatedRun(latest / EXPORT_DIR, how, run_dir, latest)


def from_checkpoint(checkpoint: Path) -> LocatedRun:
    saved = checkpoint / EXPORT_DIR
    if not is_saved_run(saved):
        missing = [p for p in SAVED_RUN_PARTS if not (saved / p).exists()]
        raise ConfigError(
            f"{str(checkpoint)!r} is a checkpoint whose {EXPORT_DIR}/ is incomplete (missing "
            f"{', '.join(missing)}): no saved run in it"
        )
    run_dir = checkpoint.parent if is_run_dir(checkpoint.parent) else None
    return LocatedRun(saved, f"checkpoint {checkpoint}: its {EXPORT_DIR}/", run_dir, checkpoint)
