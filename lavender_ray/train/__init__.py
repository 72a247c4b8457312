"""Training: the shared step (`step`), the one-process loop (`local`), and the Ray Train +
DeepSpeed trainer (`launch` on the driver, `worker` per rank, `reporting` where its metrics and
checkpoints leave, `export` of the trained parts, `precision` for the DeepSpeed config,
`faults` for `train.fail_at_step`)."""
