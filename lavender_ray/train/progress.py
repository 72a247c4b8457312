"""The driver's progress display of a training run, fed by the metrics rank 0 reports.

    with follow_training(run_dir, cfg.train.max_steps):     # around `TorchTrainer.fit()`
        trainer.fit()

A driver thread tails `<run>/metrics.jsonl` (`runs.metrics_path`; rank 0 appends one JSON object
per report, before Ray Train gets the report, and a resumed run's rank 0 rewrites it from the
restored history first) and moves the command's progress display (`console.progress`): steps of
`train.max_steps`, the last loss, samples/s and the ETA, from the reported step time
(`train_status`). Outside a command (no console, e.g. a Tune trial's driver) nothing is
followed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lavender_ray import console
from lavender_ray.runs import metrics_path
from lavender_ray.storage import JsonlTail

POLL_S = 2.0


def train_status(
    record: dict[str, Any], previous: dict[str, Any] | None, max_steps: int,
    first: bool | None = None,
) -> tuple[list[str], float | None]:
    """(fields, ETA in seconds) for one report: the last loss, samples/s (records per step since
    the previous report, or since the start, over the reported mean step time) and the ETA
    (the steps left at that step time).

    The first report of a run (`first`, by default when there is no `previous`; a resumed run's
    first has its checkpoint's report as `previous`) whose window was mostly the wait for the
    pipeline's first batch (SD actors loading: `time/first_batch_s` over half the window) shows
    that wait instead of a rate, and the ETA from the window's other steps, their data waits
    included: a rate over the start-up would read 0.07 samples/s and an ETA the next report
    takes back."""
    step, step_s = record.get("step", 0), record.get("time/step_s")
    fields = []
    if "loss/total" in record:
        fields.append(f"loss {record['loss/total']:.4g}")
    wait = record.get("time/first_batch_s") or 0.0
    window = step - (previous.get("step", 0) if previous else 0)  # steps since the last report
    if (previous is None if first is None else first) and window > 0 and step_s and (
            wait > step_s * window / 2):
        fields.append(f"first batches after {wait:.0f} s")
        compute_s = (step_s * window - wait) / window
        return fields, (max_steps - step) * compute_s if compute_s > 0 else None
    if previous is not None and step > previous.get("step", 0):
        per_step = (record.get("records", 0) - previous.get("records", 0)) / (
            step - previous["step"])
    else:
        per_step = record.get("records", 0) / step if step else 0.0
    if step_s:
        fields.append(console.format_rate(per_step / step_s, "samples"))
    eta = (max_steps - step) * step_s if step_s is not None else None
    return fields, eta


class TrainFollower:
    """Moves `shown` to each new report of the run in `run_dir` (see the module docstring). A
    run resumed at `from_step` starts there: the reports up to it (the restored history) are
    not shown again, and the first one after it is the run's first (`train_status`)."""

    def __init__(
        self, run_dir: str, max_steps: int, shown: console.Progress, from_step: int = 0
    ) -> None:
        self.max_steps, self.shown, self.from_step = max_steps, shown, from_step
        self.tail = JsonlTail(metrics_path(run_dir))
        self.last: dict[str, Any] | None = None
        if from_step:
            shown.set(from_step)

    def poll(self) -> None:
        for record in self.tail.read_new():
            if "step" not in record or (self.last and record["step"] <= self.last["step"]):
                continue
            if record["step"] > self.from_step:
                first = self.last is None or self.last["step"] <= self.from_step
                fields, eta = train_status(record, self.last, self.max_steps, first)
                self.shown.set(record["step"], eta_s=eta, fields=fields)
            self.last = record


@contextmanager
def follow_training(
    run_dir: str, max_steps: int, every_s: float = POLL_S, from_step: int = 0
) -> Iterator[None]:
    """Show the run's progress while the block trains (see the module docstring); a resumed run
    from `from_step` (`TrainFollower`)."""
    if not console.active():
        yield
        return
    with console.progress("train", max_steps, unit="steps", every_s=0.0) as shown:
        with console.polling(TrainFollower(run_dir, max_steps, shown, from_step).poll, every_s):
            yield
