"""Benchmark of SD target extraction; prints ratios measured in one run.

Tiny stack (default, CPU is fine)::

    python bench/sd_extract.py                      # demo preset's sd section
    python bench/sd_extract.py --set sd.image_size=16 --set sd.attention_resolutions=[4,8]

    batching:  images/s at batch size 1 vs 8 (goal >= 3x); with t(b) = overhead + b x compute
               per batch, the fixed overhead per batch, the compute per image, and the most
               batching can give here (batch -> infinity: (overhead + compute) / compute)
    capture:   time with the capture processors recording vs the same schedule without them
               (goal <= 1.15x)

Real size (`--real-size`, meant for a GPU): the SD-1.4 UNet / VAE / text encoder architectures
from their configs with random weights (`random/sd14`: the FLOPs of the real model) at 512 px,
batch `sd.batch_size`, images/s in `ddim` mode (goal >= 10 on an H100) and `null_text` mode
(goal >= 1); `ddim` again with `sd.channels_last` + `sd.compile` (the first, compiling batch is
left out of the timing: `compile_warmup_s`); and the null-text maps of the same images in the
GPU dtype (fp16) against fp32, and the DDIM maps of the compiled UNet against eager: the
largest difference of a map value (maps are min-max normalised to [0, 1]) and the mean per-word
correlation. `--smoke` shrinks everything (64 px,
1 step, 2 images) to check the path runs.

From a folder (`--from-folder`, CPU is fine: a few minutes on 2 cores): the SD-1.4 architecture
with random weights saved as a diffusers repository and loaded through the real loading path
(`sd.model_id=<folder>`, `from_pretrained`), extraction of 2 images at 512 px in both modes
(`--steps` DDIM steps, default 2; null-text with 2 inner steps): the attn2 modules captured, the
words and map shapes, and the extraction time over a bare loop of the same UNet calls (same
batch sizes, the same backward passes for the null-text optimisation; goal <= 1.10x: capture,
aggregation, VAE and text encoding cost little next to the UNet).
"""

from __future__ import annotations

import argparse
import json
import tempfile
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
    # per batch: t(b) = overhead + b * compute (the same work per call, then per image)
    per_image_1, per_image_8 = 1 / single, 1 / batched
    overhead = (per_image_1 - per_image_8) * 8 / 7
    compute = per_image_1 - overhead
    return {
        "images_per_s_batch1": single,
        "images_per_s_batch8": batched,
        "batch8_over_batch1": batched / single,
        "capture_overhead": without / batched,
        "per_batch_overhead_ms": overhead * 1000,
        "per_image_compute_ms": compute * 1000,
        "batching_limit": per_image_1 / compute,  # batch -> infinity
    }


def real_size_benchmark(sd: SDConfig, smoke: bool, repeats: int) -> dict[str, float]:
    results = {}
    batch = 1 if smoke else sd.batch_size
    base = {**REAL_SIZE, **(SMOKE if smoke else {})}
    runs = {"ddim": {}, "null_text": {}, "ddim_compiled": {"channels_last": True, "compile": True}}
    for name, options in runs.items():
        mode = name.removesuffix("_compiled")
        settings = {**base, "inversion": mode, **options,
                    "guidance_scale": 1.0 if mode == "ddim" else base["guidance_scale"]}
        extractor = SDExtractor(sd.model_copy(update=settings))
        if options:
            start = time.perf_counter()
            images_per_second(extractor, batch, batch, 1)  # compiles
            results["compile_warmup_s"] = time.perf_counter() - start
        results[f"{name}_images_per_s"] = images_per_second(extractor, 2 * batch, batch, repeats)
        del extractor
        if torch.cuda.is_available():
            results[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.empty_cache()
    # null-text maps in the device's dtype (fp16 on a GPU: `auto`) vs fp32; DDIM maps of the
    # inductor-compiled UNet (+ channels_last) vs eager
    null_text = sd.model_copy(update={**base, "inversion": "null_text"})
    results.update(maps_agreement(null_text, "auto_vs_fp32", {"dtype": "auto"}, {"dtype": "fp32"}))
    ddim = sd.model_copy(update={**base, "inversion": "ddim", "guidance_scale": 1.0})
    results.update(maps_agreement(ddim, "compiled_vs_eager",
                                  {"compile": True, "channels_last": True}, {}))
    return results


def from_folder_benchmark(steps: int) -> dict[str, object]:
    """SD-1.4 with random weights saved as a folder, loaded back, extracted at 512 px."""
    from lavender_ray.sd.tiny import RANDOM_SD14_ID, build_offline_sd

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="sd14-") as folder:
        build_offline_sd(RANDOM_SD14_ID).save_pretrained(folder)
        for mode in ("ddim", "null_text"):
            settings = {**REAL_SIZE, "model_id": folder, "inversion": mode, "ddim_steps": steps,
                        "null_text_inner_steps": 2, "dtype": "fp32", "batch_size": 2,
                        "guidance_scale": None}  # the mode's own: 1 (ddim) or 7.5
            extractor = SDExtractor(load_config("demo", {f"sd.{k}": v for k, v in
                                                         settings.items()}).sd)
            results[f"{mode}_captured"] = sorted({".".join(n.split(".")[:2])
                                                  for n in extractor.capture_names})
            results[f"{mode}_captured_modules"] = len(extractor.capture_names)
            results.update({f"{mode}_{k}": v for k, v in unet_overhead(extractor).items()})
            del extractor
    return results


def unet_overhead(extractor: SDExtractor) -> dict[str, object]:
    """Extraction of 2 images vs a bare loop of the UNet calls it made (batch sizes and
    backward passes alike)."""
    images, texts = sample_batch(2)
    calls: list[tuple[int, bool]] = []
    forward = extractor.unet.forward

    def counted(sample: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append((sample.shape[0], torch.is_grad_enabled()))
        return forward(sample, *args, **kwargs)

    extractor.unet.forward = counted
    start = time.perf_counter()
    targets = extractor.extract(images, texts)
    extract_s = time.perf_counter() - start
    del extractor.unet.forward  # the class's forward again
    side = extractor.sd.image_size // 8
    latents = torch.randn(2, 4, side, side)
    context = extractor._null_embedding.expand(2, -1, -1).float()
    t = extractor.scheduler.timesteps[0]
    start = time.perf_counter()
    for batch, grad in calls:
        if grad:  # a null-text inner step: backward to the embeddings
            embedding = context[:batch].clone().requires_grad_(True)
            out = extractor.unet(latents[:batch], t, encoder_hidden_states=embedding).sample
            out.square().mean().backward()
        else:
            with torch.no_grad():
                extractor.unet(latents[:batch], t, encoder_hidden_states=context[:batch])
    bare_s = time.perf_counter() - start
    return {"unet_calls": len(calls), "backward_calls": sum(g for _, g in calls),
            "words": [t.words for t in targets], "map_shapes": [list(t.maps.shape) for t in targets],
            "extract_s": extract_s, "bare_unet_s": bare_s, "over_bare_unet": extract_s / bare_s}


def maps_agreement(sd: SDConfig, label: str, changed: dict[str, object],
                   reference: dict[str, object], n: int = 2) -> dict[str, float]:
    """The maps of `n` images with `sd` + `changed` vs `sd` + `reference`: the largest absolute
    difference and the mean per-word correlation, as `maps_<label>_max_abs` / `_mean_corr`."""
    images, texts = sample_batch(n)
    targets = []
    for update in (changed, reference):
        extractor = SDExtractor(sd.model_copy(update=update))
        targets.append(extractor.extract(images, texts))
        del extractor
    worst, correlations = 0.0, []
    for low, full in zip(*targets):
        a, b = torch.from_numpy(low.maps).double(), torch.from_numpy(full.maps).double()
        worst = max(worst, float((a - b).abs().max()))
        for x, y in zip(a.flatten(1), b.flatten(1)):
            correlations.append(float(torch.corrcoef(torch.stack([x, y]))[0, 1]))
    return {f"maps_{label}_max_abs": worst,
            f"maps_{label}_mean_corr": sum(correlations) / max(1, len(correlations))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--real-size", action="store_true", help="SD-1.4 architecture, 512 px")
    parser.add_argument("--smoke", action="store_true", help="with --real-size: tiny settings")
    parser.add_argument("--from-folder", action="store_true",
                        help="SD-1.4 saved as a folder, loaded by sd.model_id, 512 px (CPU is fine)")
    parser.add_argument("--steps", type=int, default=2, help="with --from-folder: DDIM steps")
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
    if args.from_folder:
        results = from_folder_benchmark(args.steps)
    elif args.real_size:
        results = real_size_benchmark(sd, args.smoke, args.repeats)
    else:
        results = tiny_benchmark(sd, args.images, args.repeats)
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}
    print(json.dumps({**header, **rounded}, indent=2))


if __name__ == "__main__":
    main()
