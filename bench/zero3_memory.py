"""Peak host memory of each rank, ZeRO-2 vs ZeRO-3: `--ranks` ranks (default 2) on CPU build
the engine as a Ray Train worker does (`train.worker.build_engine`) from a model folder loaded by
the real `from_pretrained` path, then train two micro-batches.

    python bench/zero3_memory.py                      # ~340M-parameter Mllama, fp32, 2 ranks
    python bench/zero3_memory.py --ranks 4
    python bench/zero3_memory.py --live-parameters 8000000
    python bench/zero3_memory.py --gradient-checkpointing   # activations recomputed

The model is the tiny Mllama (tokenizer, processor, vision tower) with its language model widened
to `--text-width` (MLP twice that) and deepened to `--text-layers`, so that, as in the 11B model,
no single weight is a large part of it; random weights, saved with `save_pretrained` in 200 MB
shards (the Hub ships 5 GB shards). ZeRO-3 keeps up to `train.zero3_live_parameters` parameters
gathered at once and prefetches `train.zero3_prefetch_parameters`; the defaults here are the
shares of this model that DeepSpeed's defaults (1e9 and 5e7) are of an 11B model (9% and 0.45%),
else a model this small would simply stay gathered whole.

Each rank prints its resident memory before the model is built (Python, torch, transformers,
DeepSpeed: the same for both stages), after the build (`built`), its peak up to then (`peak
built`) and after two micro-batches (`peak`, `ru_maxrss`), and the peaks of anonymous and
file-backed resident memory sampled every 10 ms (`/proc/self/status`). The anonymous memory is
what a GPU would hold (tensors); the file-backed pages are the checkpoint, which transformers
maps (safetensors, mmap): under ZeRO-3, rank 0 maps every shard while it loads and scatters it,
and under ZeRO-2 fp32 weights may stay file-backed on rank 0 (other ranks receive rank 0's
weights and hold them anonymously). The ranks run with `MALLOC_MMAP_THRESHOLD_=65536`: glibc
would otherwise keep the gathered weights ZeRO-3 frees, and the peak would count every layer
ever gathered. The last lines give ZeRO-3 / ZeRO-2 for the larger rank of each (goal <= 0.6x),
and the anonymous share ZeRO-3 can reach: the weights / ranks, the gathered window, and what both
stages hold alike (LoRA, Aligner, their optimizer state, activations, DeepSpeed's buffers). The
last line counts the parameters ZeRO-3 still holds gathered as a forward ends (a hook after
DeepSpeed's own): the layers backward needs first, held with the forward's activations at the
peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RANK_SCRIPT = r"""
import json, os, resource, sys, threading, time
import psutil

peaks = {"RssAnon": 0, "RssFile": 0}


def sample():  # the peaks of anonymous and file-backed resident memory, every 10 ms
    while True:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]) * 1024)
        time.sleep(0.01)


threading.Thread(target=sample, daemon=True).start()
import torch
import lavender_ray.train.worker as worker
from lavender_ray.config import load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.sd.target import stand_in_target
from lavender_ray.train.reporting import Reporter, TrainState
from lavender_ray.train.step import collate_records

torch.set_num_threads(1)
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
folder, stage, live, prefetch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = load_config("demo", [f"vlm.model_id={folder}", f"train.zero_stage={stage}",
                           f"vlm.gradient_checkpointing={sys.argv[5]}",
                           "loss.word_source=label", "train.precision=fp32",
                           f"train.zero3_live_parameters={live}",
                           f"train.zero3_prefetch_parameters={prefetch}"])
import deepspeed  # noqa: F401  (imported before the baseline, as build_engine would)

baseline = psutil.Process().memory_info().rss
time.sleep(0.05)
anon_baseline = peaks["RssAnon"]
engine, module, scheduler, dtype = worker.build_engine(cfg, world)
built = psutil.Process().memory_info().rss
peak_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
held = [0]  # the most parameters ZeRO-3 keeps gathered as a forward ends (0 under ZeRO-2)


def count_held(*_):  # runs after DeepSpeed's own hooks have released what they release
    held[0] = max(held[0], sum(p.ds_numel for p in module.parameters() if hasattr(p, "ds_status")
                               and p.ds_status.name == "AVAILABLE" and not p.ds_persist))


module.register_forward_hook(count_held)
reporter = Reporter(cfg, engine, module, scheduler, rank, TrainState())
for seed in range(2):
    record = make_synthetic_records(1, seed=seed * world + rank, image_size=48)[0]
    record |= stand_in_target(record["target_text"], seed=seed).to_row()
    batch = collate_records([record], module.adapter, 32)
    assert worker.train_micro_batch(engine, reporter, batch, dtype, 10)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
result = {"rank": rank, "baseline": baseline, "built": built, "peak": peak,
          "peak_built": peak_built, "params": params, "anon_baseline": anon_baseline,
          "anon_peak": peaks["RssAnon"], "file_peak": peaks["RssFile"], "held": held[0]}
sys.stdout.write(f"RESULT {json.dumps(result)}\n")  # one write: the ranks share the pipe
sys.stdout.flush()
"""


def save_model(folder: Path, text_width: int, text_layers: int) -> int:
    """The tiny Mllama with its language model widened to `text_width` and deepened to
    `text_layers` (a cross-attention layer every fifth from the fourth, as in the 11B model),
    random weights, + processor in `folder`; returns its parameter count."""
    from transformers import MllamaForConditionalGeneration

    from lavender_ray.vlm.registry import build_tiny

    tiny, processor = build_tiny("tiny/mllama", seed=0, text_width=text_width)
    config = tiny.config
    config.text_config.num_hidden_layers = text_layers
    config.text_config.cross_attention_layers = list(range(3, text_layers, 5))
    model = MllamaForConditionalGeneration(config)
    model.save_pretrained(folder, max_shard_size="200MB")
    processor.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run_stage(folder: Path, stage: int, live: int, prefetch: int, ranks: int,
              work: Path, recompute: bool) -> list[dict]:
    script = work / "rank.py"
    script.write_text(RANK_SCRIPT)
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--master_port", str(29680 + stage), str(script), str(folder), str(stage), str(live),
            str(prefetch), str(recompute).lower()]
    # glibc keeps freed blocks below its (growing) mmap threshold: the gathered weights ZeRO-3
    # frees would stay resident, and the peak would count every layer ever gathered
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ, "DS_ACCELERATOR": "cpu"}
    run = subprocess.run(args, env=env, cwd=work,
                         capture_output=True, text=True, timeout=1800)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode != 0 or len(lines) != ranks:
        errors = [line for line in run.stderr.splitlines() if "Warning" not in line
                  and "return func" not in line]
        raise SystemExit(f"ZeRO-{stage} ranks failed (exit {run.returncode}):\n{run.stdout[-2000:]}"
                         + "\n".join(errors[-40:]))
    return sorted((json.loads(line[len("RESULT "):]) for line in lines), key=lambda r: r["rank"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-width", type=int, default=1536,
                        help="hidden size of the language model (MLP twice that; default 1536)")
    parser.add_argument("--text-layers", type=int, default=16,
                        help="decoder layers of the language model (default 16: ~380M params)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks (CPU processes)")
    parser.add_argument("--live-parameters", type=int, default=None,
                        help="train.zero3_live_parameters (default: the model's parameters / 11,"
                             " the share DeepSpeed's default of 1e9 is of an 11B model)")
    parser.add_argument("--prefetch-parameters", type=int, default=None,
                        help="train.zero3_prefetch_parameters (default: the model's parameters x"
                             " 5e7 / 11e9, the share the default 5e7 is of an 11B model)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="vlm.gradient_checkpointing=true in both stages (the cluster preset's"
                             " setting: activations recomputed in backward)")
    args = parser.parse_args(argv)
    gib = 2**30
    with tempfile.TemporaryDirectory(prefix="zero3-mem-") as tmp:
        folder = Path(tmp) / "model"
        params = save_model(folder, args.text_width, args.text_layers)
        print(f"model: tiny Mllama, text width {args.text_width} x {args.text_layers} layers: "
              f"{params / 1e6:.0f}M parameters ({params * 4 / gib:.2f} GiB fp32), {args.ranks} "
              "ranks, CPU", flush=True)
        # DeepSpeed's default window (1e9 parameters gathered at once) is 9% of an 11B model;
        # the same share of this one, or ZeRO-3 keeps a model this small gathered whole
        live = args.live_parameters or round(params * 1e9 / 11e9)
        prefetch = args.prefetch_parameters or round(params * 5e7 / 11e9)
        print(f"train.zero3_live_parameters={live} train.zero3_prefetch_parameters={prefetch}",
              flush=True)
        print(f"vlm.gradient_checkpointing={str(args.gradient_checkpointing).lower()}", flush=True)
        results = {stage: run_stage(folder, stage, live, prefetch, args.ranks, Path(tmp),
                                    args.gradient_checkpointing)
                   for stage in (2, 3)}
    print(f"{'GiB':<8}{'rank':>5}{'before':>8}{'built':>7}{'peak built':>11}{'peak':>6}"
          f"{'peak-before':>12}{'anon peak':>10}{'anon-before':>12}{'file peak':>10}")
    for stage, ranks in results.items():
        for r in ranks:
            print(f"ZeRO-{stage:<3}{r['rank']:>5}{r['baseline'] / gib:>8.2f}"
                  f"{r['built'] / gib:>7.2f}"
                  f"{r['peak_built'] / gib:>11.2f}{r['peak'] / gib:>6.2f}"
                  f"{(r['peak'] - r['baseline']) / gib:>12.2f}{r['anon_peak'] / gib:>10.2f}"
                  f"{(r['anon_peak'] - r['anon_baseline']) / gib:>12.2f}"
                  f"{r['file_peak'] / gib:>10.2f}")
    peak = {s: max(r["peak"] for r in ranks) for s, ranks in results.items()}
    share = {s: max(r["peak"] - r["baseline"] for r in ranks) for s, ranks in results.items()}
    anon = {s: max(r["anon_peak"] for r in ranks) for s, ranks in results.items()}
    anon_share = {s: max(r["anon_peak"] - r["anon_baseline"] for r in ranks)
                  for s, ranks in results.items()}
    print("ZeRO-3 / ZeRO-2, the larger rank of each:")
    print("  anonymous memory (the tensors: what a GPU would hold): "
          f"peak {anon[3] / anon[2]:.2f}x, "
          f"the model's share (peak - before) {anon_share[3] / anon_share[2]:.2f}x  (goal <= 0.6x)")
    print(f"  resident memory with the mapped checkpoint: peak {peak[3] / peak[2]:.2f}x, share "
          f"{share[3] / share[2]:.2f}x (under ZeRO-3 rank 0 maps every shard at once while it "
          "scatters them: transformers merges the shards' state dicts first; clean page cache "
          "the kernel can drop, never on the GPU)")
    # what ZeRO-3 can reach: its share of the weights, the gathered window, and what both
    # stages hold alike (LoRA, Aligner, their optimizer state, activations, buffers)
    weights = params * 4
    alike = anon_share[2] - weights
    window = (live + prefetch) * 4
    held = max(r["held"] for r in results[3]) * 4
    expected = weights / args.ranks + window + alike
    print(f"ZeRO-3's anonymous share, expected: weights / {args.ranks} "
          f"({weights / args.ranks / gib:.2f}) + gathered window ({window / gib:.2f}) + held alike"
          f" by both stages ({alike / gib:.2f}) = {expected / gib:.2f} GiB, "
          f"{expected / anon_share[2]:.2f}x of ZeRO-2's; measured {anon_share[3] / gib:.2f} GiB")
    # DeepSpeed keeps what backward needs first gathered through the forward's end (the reuse
    # distance, and parameters its prefetch scan passed): the peak holds them with the activations
    print(f"ZeRO-3 keeps {held / 4 / 1e6:.1f}M parameters ({held / gib:.2f} GiB) gathered as a "
          "forward ends (the last layers, which backward needs first); with them: weights / "
          f"{args.ranks} + held + alike = {(weights / args.ranks + held + alike) / gib:.2f} GiB, "
          f"{(weights / args.ranks + held + alike) / anon_share[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
