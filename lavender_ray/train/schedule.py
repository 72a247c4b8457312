"""When a run reports and checkpoints: pure functions of `TrainConfig`, shared by the workers'
`reporting.Reporter` and the Tune driver's checks (which count the results a trial reports),
so the driver need not import the worker's stack to know them."""

from __future__ import annotations

from lavender_ray.config import TrainConfig


def report_due(step: int, train: TrainConfig) -> tuple[bool, bool]:
    """(report, checkpoint) after optimizer step `step`: a checkpoint at every multiple of
    `train.checkpoint_every` and at the last step; a report at every multiple of
    `train.report_every` and with every checkpoint (Ray Train's report carries it)."""
    checkpoint = step % train.checkpoint_every == 0 or step >= train.max_steps
    return checkpoint or step % train.report_every == 0, checkpoint


def report_steps(train: TrainConfig) -> list[int]:
    """Every step a run reports at (`report_due`): one result each for Ray Tune."""
    return [step for step in range(1, train.max_steps + 1) if report_due(step, train)[0]]
