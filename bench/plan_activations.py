"""How close the plan's activation estimate is to a direct measurement at real widths.

    python bench/plan_activations.py                   # Llama-3.2-11B-Vision widths, reduced depth
    python bench/plan_activations.py --max-length 256  # a shorter worst-case micro-batch (faster)

The model is Llama-3.2-11B-Vision's architecture at full width (hidden 4096, MLP 14336, 32
heads, 128k vocabulary, vision 1280 wide on 560 px tiles, up to 4) with reduced depth (text 5
layers, one of them cross-attention; vision 5 local + 1 global layers), saved as a local folder
(config and processor only: nothing downloaded, no weights). `lavender plan`'s estimate
(`plan.vlm.estimate_vlm`: narrowed, shallow copies scaled up) is set against the saved bytes of
one Lavender forward of the whole model on CPU in bf16 (`plan.saved.SavedTensors`), per layer
kind. About 10 minutes and 12 GiB of RAM on 2 cores at --max-length 1024.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavender_ray.config import load_config  # noqa: E402
from lavender_ray.plan.gpus import GIB  # noqa: E402
from lavender_ray.plan.vlm import architecture, estimate_vlm, measure_saved  # noqa: E402
from lavender_ray.vlm.mllama.released import (  # noqa: E402
    llama32_11b_vision_config,
    real_size_processor,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-length", type=int, default=1024, help="vlm.max_length")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["LAVENDER_PLAN_CACHE"] = f"{folder}/plan-cache"  # measure, never read a cache
        processor = real_size_processor()
        llama32_11b_vision_config(processor.tokenizer, shallow=True).save_pretrained(folder)
        processor.save_pretrained(folder)
        cfg = load_config("llama32_11b_lora", [f"vlm.model_id={folder}", "train.use_gpu=true",
                                               f"vlm.max_length={args.max_length}"])
        start = time.perf_counter()
        estimate = estimate_vlm(cfg)
        estimated_s = time.perf_counter() - start
        config, processor, _ = architecture(cfg)
        start = time.perf_counter()
        direct = measure_saved(cfg, config, processor, torch.bfloat16)
        direct_s = time.perf_counter() - start
    print(f"11B-Vision widths, text 5 layers (1 cross), vision 5+1, {direct.tokens} tokens, "
          f"4 tiles; estimate from widths 1/{' and 1/'.join(map(str, estimate.widths))} in "
          f"{estimated_s:.0f} s, direct measurement in {direct_s:.0f} s")
    print(f"  {'layer kind':<52}{'estimate':>12}{'measured':>12}{'ratio':>8}")
    for kind, measured in sorted(direct.by_kind.items(), key=lambda kv: -kv[1]):
        guess = estimate.activations.get(kind, 0.0)
        print(f"  {kind:<52}{guess / GIB:>10.3f} G{measured / GIB:>10.3f} G"
              f"{guess / measured:>8.3f}")
    total = sum(direct.by_kind.values())
    print(f"  {'total':<52}{estimate.activation_bytes() / GIB:>10.3f} G{total / GIB:>10.3f} G"
          f"{estimate.activation_bytes() / total:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
