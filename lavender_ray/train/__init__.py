"""Training: the single-process step and loop (`local`), the Ray Train + DeepSpeed trainer."""
