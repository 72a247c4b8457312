"""Benchmark of SD target extraction; prints ratios measured in one run.

Tiny stack (default, CPU is fine)::

    python bench/sd_extract.py                      # demo preset's sd section
    python bench/sd_extract.py --set sd.image_size=16 --set sd.attention_resolutions=[4,8]

    batching:  images/s at batch size 1 vs 8 (goal >= 3x)
    capture:   time with the capture processors recording vs the same schedule without them
               (goal <= 1.15x)

Real size (`--real-size`, meant for a GPU): the SD-1.4 UNet / VAE / text encoder architectures
from their configs with random weights (`random/sd14`: the FLOPs of the real model) at 512 px,
batch `sd.batch_size`, images/s in `ddim` mode (goal >= 10 on an H100) and `null_text` mode
(goal >= 1). `--smoke` shrinks everything (64 px, 1 step, 2 images) to check the path runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from PIL import Image

from lavender_ray.config import SDConfig, load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.images import decode_image
from lavender_ray.sd.extractor import SDExtractor

REAL_SIZE = {
    "model_id": "random/sd14",
    "image_size": 512,
    "attention_resolutions": [16, 32],
    "ddim_steps": 10,
    "null_text_inner_steps": 5,
    "null_text_early_stop": 0.0,  # every inner step runs: the worst case
    "guidance_scale": 7.5,
    "dtype": "auto",
}
SMOKE = {
    "image_size": 64,
    "attention_resolutions": [2, 4],
    "ddim_steps": 1,
}


def sample_batch(n: int, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    records = make_synthetic_records(n, seed=seed, image_size=64)
    return [decode_image(r["image"], 2**31) for r in records], [r["target_text"] for r in records]


def seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of `repeats` runs after one warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def images_per_second(
    extractor: SDExtractor, n: int, batch: int, repeats: int, capture: bool = True
) -> float:
    """Images per second of `trace` on `n` synthetic images in batches of `batch`."""
    images, texts = sample_batch(n)
    ids = [extractor.tokenize(t).input_ids for t in texts]

    def run() -> None:
        for start in range(0, n, batch):
            end = start + batch
            extractor.trace(images[start:end], ids[start:end], capture_maps=capture)

    return n / seconds(run, extractor.device, repeats)


def tiny_benchmark(sd: SDConfig, n: int, repeats: int) -> dict[str, float]:
    extractor = SDExtractor(sd)
    single = images_per_second(extractor, n, 1, repeats)
    batched = images_per_second(extractor, n, 8, repeats)
    without = images_per_second(extractor, n, 8, repeats, capture=False)
    return {
        "images_per_s_batch1": single,
        "images_per_s_batch8": batched,
        "batch8_over_batch1": batched / single,
        "capture_overhead": without / batched,
    }


def real_size_benchmark(sd: SDConfig, smoke: bool, repeats: int) -> dict[str, float]:
    results = {}
    for mode in ("ddim", "null_text"):
        settings = {**REAL_SIZE, **(SMOKE if smoke else {}), "inversion": mode}
        extractor = SDExtractor(sd.model_copy(update=settings))
        batch = 1 if smoke else sd.batch_size
        results[f"{mode}_images_per_s"] = images_per_second(extractor, 2 * batch, batch, repeats)
        del extractor
        if torch.cuda.is_available():
            results[f"{mode}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--real-size", action="store_true", help="SD-1.4 architecture, 512 px")
    parser.add_argument("--smoke", action="store_true", help="with --real-size: tiny settings")
    parser.add_argument("--images", type=int, default=16, help="tiny: images per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sd = load_config(args.preset, args.overrides).sd
    device = "cuda" if torch.cuda.is_available() else "cpu"
    header = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "threads": torch.get_num_threads()}
    if args.real_size:
        results = real_size_benchmark(sd, args.smoke, args.repeats)
    else:
        results = tiny_benchmark(sd, args.images, args.repeats)
    print(json.dumps({**header, **{k: round(v, 3) for k, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
