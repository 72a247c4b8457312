"""Is the trainer fed fast enough by the live SD stream?

In one run, on one local Ray, with the same records and model:

1. the SD cost per sample of one extractor (one actor's worth), measured in process;
2. the trainer fed by targets pre-materialised in the cache (`pipeline.mode=precomputed`);
3. the trainer fed by the live SD stream (`pipeline.mode=stream`).

Prints trainer samples/s for both feeds and their ratio (goal >= 0.9 once the SD pool is sized
for the trainer), the time each trainer spent blocked on data, and the SD pool size the
measurements call for: ceil(trainer samples/s x SD seconds per sample per actor).

The trainer hides the stream when it is slower than the SD pool (the tiny one on a CPU is), so a
fourth measurement takes it out: consumers that only iterate the trainer's batches
(`train.num_workers` shares of `streaming_split`, as Ray Train splits the stream; no model) read
`--delivery-samples` records from the live stream with a fixed pool of `pipeline.sd_pool_max`
actors. Delivered records/s (first batch to last: the actors' start-up left out) over what the
pool produces alone (pool size x one actor's rate, measured in process): goal >= 0.9.

    python bench/pipeline.py                       # tiny models, CPU (defaults: demo preset)
    python bench/pipeline.py --preset P --set ...  # any preset, e.g. on a GPU cluster
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from lavender_ray.cli import add_config_arguments
from lavender_ray.config import LavenderConfig, load_config


def sd_seconds_per_sample(cfg: LavenderConfig, n: int) -> float:
    """Wall seconds per sample of one in-process extractor at `sd.batch_size` (after warm-up)."""
    from lavender_ray.data.synthetic import make_synthetic_records
    from lavender_ray.images import decode_image
    from lavender_ray.sd.extractor import SDExtractor

    records = make_synthetic_records(n, seed=7)
    images = [decode_image(r["image"], cfg.data.max_image_pixels) for r in records]
    texts = [r["target_text"] for r in records]
    extractor = SDExtractor(cfg.sd, device="cpu")
    b = cfg.sd.batch_size
    extractor.extract(images[:b], texts[:b])  # warm-up
    start = time.perf_counter()
    for i in range(0, n, b):
        extractor.extract(images[i : i + b], texts[i : i + b])
    return (time.perf_counter() - start) / n


def delivered_rate(cfg: LavenderConfig, rejects_dir: str) -> float:
    """Records/s the live stream delivers to `train.num_workers` consumers that only iterate
    their share's batches, from the first batch to the last."""
    import threading

    from lavender_ray.pipeline.dataset import build_train_dataset

    shares = build_train_dataset(cfg, rejects_dir).streaming_split(cfg.train.num_workers,
                                                                   equal=True)
    arrivals: list[tuple[float, int]] = []

    def consume(share) -> None:
        for batch in share.iter_batches(batch_size=cfg.train.micro_batch_size,
                                        batch_format="pyarrow"):
            arrivals.append((time.perf_counter(), batch.num_rows))

    threads = [threading.Thread(target=consume, args=(s,)) for s in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    arrivals.sort()
    if len(arrivals) < 2:
        raise SystemExit("too few batches to measure delivery: raise --delivery-samples")
    records = sum(rows for _, rows in arrivals[1:])
    return records / (arrivals[-1][0] - arrivals[0][0])


def trainer_rate(checkpoint: str, cfg: LavenderConfig) -> tuple[float, float]:
    """(samples/s, seconds blocked on data per report interval) from a run's metrics history,
    leaving out the first interval (start-up)."""
    lines = (Path(checkpoint) / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines][1:]
    if not history:
        raise SystemExit("too few steps to measure: raise train.max_steps / lower report_every")
    per_step = sum(h["time/step_s"] for h in history) / len(history)
    batch = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * cfg.train.num_workers
    wait = sum(h["time/data_wait_s"] for h in history) / len(history)
    return batch / per_step, wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--samples", type=int, default=64, help="records per run (even)")
    parser.add_argument("--delivery-samples", type=int, default=256,
                        help="records the batch-only consumers read from the live stream")
    args = parser.parse_args()

    from lavender_ray.pipeline.extract import extract_to_cache
    from lavender_ray.resources import connect
    from lavender_ray.train.launch import train

    root = tempfile.mkdtemp(prefix="lavender-bench-")
    steps = args.samples // 2
    base = [f"data.sources=[{{name: synthetic, format: synthetic, num_samples: {args.samples}}}]",
            f"train.max_steps={steps}", f"train.checkpoint_every={steps}",
            "train.report_every=4", f"train.storage_path={root}/runs"]
    cfg = load_config(args.preset, base + args.overrides)
    connect(cfg, "train")

    sd_cost = sd_seconds_per_sample(cfg, n=2 * cfg.sd.batch_size)
    extract_to_cache(cfg, f"{root}/cache")
    pre_cfg = load_config(args.preset, base + args.overrides + [
        "pipeline.mode=precomputed", f"pipeline.precomputed_path={root}/cache",
        "train.run_name=precomputed"])
    pre = trainer_rate(train(pre_cfg).checkpoint, pre_cfg)
    live_cfg = load_config(args.preset, base + args.overrides + ["train.run_name=stream"])
    live = trainer_rate(train(live_cfg).checkpoint, live_cfg)

    pool = cfg.pipeline.sd_pool_max
    source = (f"data.sources=[{{name: synthetic, format: synthetic, "
              f"num_samples: {args.delivery_samples}}}]")
    delivery_cfg = load_config(args.preset, base + args.overrides + [
        source, f"pipeline.sd_pool_min={pool}"])
    delivered = delivered_rate(delivery_cfg, f"{root}/delivery-rejects")
    produced = pool / sd_cost
    print(f"\nSD per sample, one actor:          {sd_cost * 1000:.1f} ms")
    print(f"trainer, pre-materialised targets: {pre[0]:.2f} samples/s "
          f"(blocked on data {pre[1]:.2f} s per {cfg.train.report_every} steps)")
    print(f"trainer, live SD stream ({pool} actor{'s' * (pool > 1)}): {live[0]:.2f} samples/s "
          f"(blocked on data {live[1]:.2f} s per {cfg.train.report_every} steps)")
    print(f"ratio live / pre-materialised:     {live[0] / pre[0]:.2f}x  (goal >= 0.9x)")
    print(f"batches only, no model ({cfg.train.num_workers} consumers): {delivered:.1f} records/s "
          f"delivered; the SD pool alone makes {produced:.1f} ({pool} x {1 / sd_cost:.1f}/s): "
          f"{delivered / produced:.2f}x  (goal >= 0.9x)")
    needed = math.ceil(pre[0] * sd_cost)
    print(f"recommended SD pool for this trainer: pipeline.sd_pool_min={needed} "
          f"(= ceil({pre[0]:.2f} samples/s x {sd_cost:.3f} s/sample))")


if __name__ == "__main__":
    main()
