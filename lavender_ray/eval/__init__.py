"""Evaluation of a trained run against its base model.

- `metrics`: pure benchmark metrics with each benchmark's answer rules, the benchmark-name ->
  metric registry, and attention-map agreement (MSE, Pearson, top-10% IoU).
- `models`: the two models compared (base, adapter) and their device.
- `inference`: Ray Data batch inference, one model per actor (the pipeline the driver plans).
- `generation`: the models at work, in the actors and the probe task: loading, greedy
  decoding, the attention probe before/after (the only eval module that loads the VLM stack;
  it and `attention` are the only ones that load torch).
- `scoring`: each model's predictions scored with the benchmark's metric, per-row files.
- `attention`: attention probes on a model (SD | VLM | aligned maps per word), their records.
- `probes`: probe records from `eval.probe_path`, before/after comparison, agreement, PNGs
  (no torch: what the driver needs of the probes).
- `synthetic_bench`: a synthetic benchmark written as VLMEvalKit TSV, Parquet and JSONL.
- `report`: `results.json` and the Markdown tables of `results.md`.
- `evaluate`: the orchestration behind `lavender evaluate` and its report folder.
"""
