"""Step time of a Lavender training step, in each word-pooling order, vs a plain LoRA SFT step,
same model, same batch.

    python bench/train_step.py                         # tiny models of every family, CPU
    python bench/train_step.py --text-widths 32,256,1024   # the same, language models widened
    python bench/train_step.py --families mllama --steps 30 --set aligner.variant=deep
    python bench/train_step.py --real-size             # Llama-3.2-11B-Vision layout, random
                                                       # weights, LoRA, bf16, one CUDA GPU
    python bench/train_step.py --real-size --cpu-dry-run   # same code path, reduced widths, CPU
    python bench/train_step.py --real-widths-folder    # 11B-Vision widths, reduced depth, saved
                                                       # and loaded by vlm.model_id; 1/2/4 tiles

Lavender step: forward with attention capture + words + Aligner + loss, backward, AdamW step,
timed in both `aligner.word_pooling` orders: `aligner_then_pool` (the authors': the Aligner
runs on every distinct attention row of the matched words, a word is the mean of its rows'
outputs) and `pool_then_aligner` (the Aligner runs on one pooled map per word). Plain step: the
same model with SDPA everywhere (capture off), HF's LM loss, backward, AdamW step. Steps rotate
(Lavender in each order, then plain) so machine noise hits all alike; the medians are reported
with each order's ratio to plain (goal: <= 1.3x) and the ratio of the two orders, the maps
through the Aligner per step (counted on its input), the share of the words' maps (row layout +
Aligner + pooling, forward + backward alone) and the captured probabilities kept for backward
(answer rows; "all rows" is what capturing every row would keep). The Aligner costs
the same whatever the size of the language model (it scales with maps x layers x heads x s^2),
so the ratio falls as the model grows: `--text-widths` widens the tiny language models (hidden
size, MLP; same layers, heads and maps) to show that trend on a CPU. The real-size model is
built from the published Llama-3.2-11B-Vision hyper-parameters with random weights (nothing is
downloaded); its text comes from the tiny Mllama tokenizer (ids < 400 are valid ids of the 128k
vocabulary) and words come from the labels (`loss.word_source=label`): random weights predict
no real words.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavender_ray.align import build_aligner  # noqa: E402
from lavender_ray.config import LavenderConfig, load_config  # noqa: E402
from lavender_ray.data.synthetic import make_synthetic_records  # noqa: E402
from lavender_ray.families import registered_families  # noqa: E402
from lavender_ray.schema import encode_maps  # noqa: E402
from lavender_ray.sd.prompt import find_words  # noqa: E402
from lavender_ray.train.step import (  # noqa: E402
    LavenderModule,
    TrainBatch,
    aligned_word_maps,
    build_optimizer,
    collate_records,
    matched_words,
    optimizer_step,
)
from lavender_ray.vlm import VLMAdapter  # noqa: E402
from lavender_ray.vlm.lora import apply_finetuning  # noqa: E402
from lavender_ray.vlm.mllama.released import llama32_11b_vision_config, real_size_processor  # noqa: E402
from lavender_ray.vlm.registry import adapter_class, build_tiny  # noqa: E402
from lavender_ray.vlm.tiny import TEXT_HIDDEN  # noqa: E402

GOAL_RATIO = 1.3
ORDERS = ("aligner_then_pool", "pool_then_aligner")  # aligner.word_pooling, the default first


# ----------------------------------------------------------------------------- data
def with_synthetic_targets(record: dict, size: int, seed: int) -> dict:
    """`record` + SD target columns: one Gaussian blob per word of its target text."""
    keys = list(dict.fromkeys(o.key for o in find_words(record["target_text"])))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centres = rng.uniform(0.2 * size, 0.8 * size, size=(len(keys), 2))
    distance = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2  # [n, s, s]
    maps = np.exp(-distance / (size**2 / 32))
    return dict(record, sd_words=keys, sd_maps=encode_maps(maps), sd_map_size=size)


def bench_batch(cfg: LavenderConfig, adapter: VLMAdapter, image_size: int) -> TrainBatch:
    """`train.micro_batch_size` synthetic records with targets, collated by the adapter."""
    count = cfg.train.micro_batch_size
    records = make_synthetic_records(count, seed=cfg.train.seed, image_size=image_size)
    size = cfg.sd.output_size
    records = [with_synthetic_targets(r, size, seed=i) for i, r in enumerate(records)]
    return collate_records(records, adapter, size)


# ----------------------------------------------------------------------------- timing
@contextmanager
def plain_attention(model: torch.nn.Module) -> Iterator[None]:
    """SDPA in every text attention layer (capture off) inside the block."""
    text_config = model.config.get_text_config()
    previous = text_config._attn_implementation
    model.set_attn_implementation({"text_config": "sdpa"})
    try:
        yield
    finally:
        model.set_attn_implementation({"text_config": previous})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def compare(
    cfg: LavenderConfig, adapter: VLMAdapter, batch: TrainBatch, steps: int, warmup: int
) -> dict[str, float]:
    """Rotate Lavender steps in each `ORDERS` pooling order and plain steps; median seconds of
    each (keys: the order, "plain"), ratios, maps through the Aligner per step, matched words."""
    device = next(adapter.model.parameters()).device
    batch = batch.to(device)
    kinds: dict[str, Callable[[], None]] = {}
    modules: dict[str, LavenderModule] = {}
    matched: list[float] = []
    aligner_maps: dict[str, list[int]] = {order: [] for order in ORDERS}
    for order in ORDERS:
        torch.manual_seed(cfg.train.seed)  # the same initial Aligner in both orders
        aligner_cfg = cfg.aligner.model_copy(update={"word_pooling": order})
        aligner = build_aligner(aligner_cfg, adapter.num_heads).to(device)
        aligner.register_forward_hook(
            lambda _module, args, _out, order=order: aligner_maps[order].append(len(args[0]))
        )  # fmt: skip
        module = LavenderModule(adapter, aligner, cfg.loss, cfg.sd.output_size).train()
        modules[order] = module
        kinds[order] = lavender_step(module, build_optimizer(module, cfg.optim), batch, steps,
                                     cfg.optim.grad_clip, matched)  # fmt: skip
    plain_optimizer = build_optimizer(modules[ORDERS[0]], cfg.optim)

    def plain() -> None:
        with plain_attention(adapter.base_model):
            loss = adapter.model(**adapter.model_inputs(batch.inputs), use_cache=False).loss
            optimizer_step(loss, plain_optimizer, modules[ORDERS[0]], cfg.optim.grad_clip)

    kinds["plain"] = plain
    times: dict[str, list[float]] = {name: [] for name in kinds}
    peaks: dict[str, float] = {}
    for name, step in kinds.items():
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            timed(step, device)
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
    for order in ORDERS:
        aligner_maps[order].clear()  # count the timed steps only
    for _ in range(steps):
        for name, step in kinds.items():
            times[name].append(timed(step, device))
    result = {name: statistics.median(values) for name, values in times.items()}
    for order in ORDERS:
        result[f"ratio/{order}"] = result[order] / result["plain"]
        result[f"maps/{order}"] = statistics.mean(aligner_maps[order])
    for order in ORDERS:  # after the counts: these calls go through the Aligner too
        result[f"aligner/{order}"] = aligner_share(modules[order], batch, steps, device)
    result["ratio"] = result[ORDERS[0]] / result[ORDERS[1]]
    result.update(captured_sizes(modules[ORDERS[0]], batch))
    result["matched_words"] = statistics.mean(matched)
    for name, peak in peaks.items():
        result[f"peak_gib/{name}"] = peak
    return result


def lavender_step(
    module: LavenderModule,
    optimizer: torch.optim.Optimizer,
    batch: TrainBatch,
    steps: int,
    grad_clip: float,
    matched: list[float],
) -> Callable[[], None]:
    """One Lavender training step of `module` (appends its matched words to `matched`)."""

    def step() -> None:
        out = module(batch, step=0, total_steps=max(steps, 1))
        optimizer_step(out.total, optimizer, module, grad_clip)
        matched.append(out.metrics["align/matched_words"])

    return step


def aligner_share(
    module: LavenderModule, batch: TrainBatch, steps: int, device: torch.device
) -> float:
    """Median seconds of the words' maps alone (row layout + Aligner + pooling, in the module's
    order), forward + backward, on the step's captured attention."""
    with torch.no_grad():
        outputs = module.adapter.forward(batch.inputs, module.map_size)
    matched = matched_words(outputs, batch, module.adapter.tokenizer, module.loss_cfg)
    rows = [[word.rows for word in words] for words in matched]
    if not any(rows):
        return 0.0
    for probs in outputs.captured.probs:
        probs.requires_grad_(True)  # backward into the layout too, as in training

    def step() -> None:
        aligned_word_maps(module.aligner, outputs.captured, rows).square().mean().backward()

    return statistics.median(timed(step, device) for _ in range(max(steps, 1)))


def captured_sizes(module: LavenderModule, batch: TrainBatch) -> dict[str, float]:
    """MiB of captured probabilities (answer rows) and what every row would take."""
    with torch.no_grad():
        captured = module.adapter.forward(batch.inputs, module.map_size).captured
    mib = sum(p.numel() * p.element_size() for p in captured.probs) / 2**20
    return {"captured_mib": mib, "all_rows_mib": mib * captured.length / len(captured.rows)}


def report(label: str, result: dict[str, float]) -> None:
    line = (
        f"{label:<38} plain {1e3 * result['plain']:9.1f} ms   "
        f"words/batch {result['matched_words']:.1f}   "
        f"probs kept {result['captured_mib']:.2f} MiB (all rows {result['all_rows_mib']:.2f})"
    )
    if "peak_gib/plain" in result:
        line += f"   peak {result['peak_gib/plain']:.1f} GiB"
    print(line, flush=True)
    for order in ORDERS:
        ratio = result[f"ratio/{order}"]
        verdict = "ok" if ratio <= GOAL_RATIO else f"above the {GOAL_RATIO}x goal"
        line = (
            f"  {order:<20} lavender {1e3 * result[order]:9.1f} ms   ratio {ratio:.2f}x "
            f"({verdict})   Aligner maps/step {result[f'maps/{order}']:.1f}   "
            f"maps fwd+bwd {1e3 * result[f'aligner/{order}']:.1f} ms"
        )
        if f"peak_gib/{order}" in result:
            line += f"   peak {result[f'peak_gib/{order}']:.1f} GiB"
        print(line, flush=True)
    print(f"  {ORDERS[0]} / {ORDERS[1]}: {result['ratio']:.2f}x step time", flush=True)


# ----------------------------------------------------------------------------- real size
def real_size_adapter(cfg: LavenderConfig, device: torch.device, dtype: torch.dtype) -> VLMAdapter:
    """Llama-3.2-11B-Vision with random weights on `device`, LoRA from `cfg.lora`, capture on."""
    from transformers import MllamaForConditionalGeneration

    processor = real_size_processor()
    config = llama32_11b_vision_config(processor.tokenizer, cpu_dry_run=device.type == "cpu")
    with torch.device(device):
        model = MllamaForConditionalGeneration._from_config(config, dtype=dtype)
    return adapter_around(cfg, model, processor)


def real_widths_from_folder(preset: str, overrides: list[str]) -> None:
    """Llama-3.2-11B-Vision's widths at reduced depth (`llama32_11b_vision_config(shallow=True)`),
    random weights saved with `save_pretrained` and loaded through `vlm.model_id=<folder>` (the
    real loading path), then one Lavender step with LoRA on 1-, 2- and 4-tile images: the
    tiles and tokens the processor made, the loss, the step time and the peak resident memory."""
    import resource
    import tempfile

    from transformers import MllamaForConditionalGeneration

    from lavender_ray.vlm.registry import build_adapter

    processor = real_size_processor()
    config = llama32_11b_vision_config(processor.tokenizer, shallow=True)
    vision = config.vision_config
    tile_tokens = (vision.image_size // vision.patch_size) ** 2 + 1  # + the class token
    with tempfile.TemporaryDirectory(prefix="mllama-11b-widths-") as folder:
        start = time.perf_counter()
        model = MllamaForConditionalGeneration._from_config(config)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        del model
        cfg = bench_config(preset, [f"vlm.model_id={folder}", "vlm.family=mllama",
                                    "vlm.max_length=8192", *overrides], family=None)
        adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)  # from_pretrained
        print(f"saved and loaded in {time.perf_counter() - start:.0f} s: {params / 1e9:.2f} B "
              f"parameters, {adapter.num_layers} captured layer(s) x {adapter.num_heads} heads, "
              f"LoRA r={cfg.lora.r}, {cfg.vlm.dtype} weights, CPU", flush=True)
        module = LavenderModule(adapter, build_aligner(cfg.aligner, adapter.num_heads), cfg.loss,
                                cfg.sd.output_size)
        module.train()
        optimizer = build_optimizer(module, cfg.optim)
        for width, height in ((560, 560), (1120, 560), (1120, 1120)):
            record = make_synthetic_records(1, seed=width + height, image_size=width)[0]
            image = Image.open(io.BytesIO(record["image"])).convert("RGB").resize((width, height))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            record = with_synthetic_targets(dict(record, image=buffer.getvalue()),
                                            cfg.sd.output_size, seed=0)
            batch = collate_records([record], adapter, cfg.sd.output_size)
            tiles = int(batch.inputs["cross_attention_mask"].sum(dim=-1).amax())
            tokens = batch.inputs["input_ids"].shape[1]
            start = time.perf_counter()
            out = module(batch, step=0, total_steps=1)
            optimizer_step(out.total, optimizer, module, cfg.optim.grad_clip)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"{width}x{height}: {tiles} tile(s) of {tile_tokens} vision tokens, {tokens} text tokens, "
                  f"loss/total {out.total.item():.3f} (att {out.metrics['loss/att']:.4f}, "
                  f"{out.metrics['align/matched_words']:.0f} words), step {seconds:.1f} s, "
                  f"peak RSS so far {peak:.1f} GiB", flush=True)


def adapter_around(cfg: LavenderConfig, model, processor) -> VLMAdapter:
    """The `cfg.vlm.family` adapter around `model` (capture on), LoRA/full from `cfg.lora`."""
    adapter = adapter_class(cfg.vlm.family)(
        model,
        processor,
        attention_layers=cfg.vlm.attention_layers,
        map_size=cfg.sd.output_size,
        max_length=cfg.vlm.max_length,
    )
    adapter.model = apply_finetuning(model, cfg.lora, seed=cfg.vlm.seed)
    return adapter


def run_real_size(
    cfg: LavenderConfig, steps: int, warmup: int, cpu_dry_run: bool, image_size: int
) -> None:
    """Build the 11B model (or its CPU dry-run widths), time both steps, print one line."""
    if cpu_dry_run:
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "--real-size needs a CUDA GPU (about 30 GiB: 11B bf16 weights + activations); "
                "none is visible. Use --cpu-dry-run to exercise the same code path at reduced "
                "widths on a CPU."
            )
        device, dtype = torch.device("cuda"), torch.bfloat16
    start = time.perf_counter()
    adapter = real_size_adapter(cfg, device, dtype)
    params = sum(p.numel() for p in adapter.model.parameters())
    trainable = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    print(
        f"built in {time.perf_counter() - start:.0f} s: {params / 1e9:.2f} B parameters, "
        f"{trainable / 1e6:.2f} M trainable (LoRA r={cfg.lora.r} on {cfg.lora.target_modules}), "
        f"{adapter.num_layers} captured layers x {adapter.num_heads} heads, {dtype}, {device}",
        flush=True,
    )
    batch = bench_batch(cfg, adapter, image_size)
    batch.inputs = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.inputs.items()
    }  # pixel values in the weights' dtype
    tiles = int(batch.inputs["cross_attention_mask"].sum(dim=-1).amax())
    tokens = batch.inputs["input_ids"].shape[1]
    label = f"11B-Vision b={len(batch)} T={tokens} tiles={tiles}"
    label += " [cpu dry run]" if cpu_dry_run else ""
    report(label, compare(cfg, adapter, batch, steps, warmup))


# ----------------------------------------------------------------------------- main
def bench_config(preset: str, overrides: list[str], family: str | None) -> LavenderConfig:
    defaults = ["loss.word_source=label"]  # random weights predict no real words
    if family is not None:
        defaults += [f"vlm.family={family}", f"vlm.model_id=tiny/{family}"]
    return load_config(preset, defaults + overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="demo", help="config preset (default: demo)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override, repeatable (e.g. aligner.hidden_dim=32)",
    )  # fmt: skip
    parser.add_argument("--families", default=",".join(registered_families()), help="tiny families to run")
    parser.add_argument(
        "--text-widths",
        default=str(TEXT_HIDDEN),
        help=f"language-model hidden sizes to run each family at (tiny: {TEXT_HIDDEN})",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--real-size", action="store_true", help="Llama-3.2-11B-Vision, one GPU")
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="with --real-size: CPU, small widths"
    )
    parser.add_argument("--image-size", type=int, default=None, help="default 64 tiny, 1120 real")
    parser.add_argument(
        "--real-widths-folder", action="store_true",
        help="Llama-3.2-11B-Vision widths, reduced depth, from a saved folder: one step at 1/2/4 "
             "tiles (CPU)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.real_widths_folder:
        real_widths_from_folder(args.preset, args.overrides)
        return 0
    if args.real_size:
        cfg = bench_config(args.preset, ["vlm.max_length=4096", *args.overrides], family=None)
        if cfg.vlm.family != "mllama":
            raise SystemExit(
                f"--real-size builds Llama-3.2-11B-Vision (mllama); vlm.family={cfg.vlm.family!r}"
            )
        run_real_size(cfg, args.steps, args.warmup, args.cpu_dry_run, args.image_size or 1120)
        return 0
    widths = [int(w) for w in args.text_widths.split(",")]
    for family in args.families.split(","):
        cfg = bench_config(args.preset, args.overrides, family)
        for width in widths:
            model, processor = build_tiny(cfg.vlm.model_id, cfg.vlm.seed, text_width=width)
            adapter = adapter_around(cfg, model, processor)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            batch = bench_batch(cfg, adapter, args.image_size or 64)
            label = (
                f"tiny/{family} w={width} {params:.1f}M b={len(batch)} "
                f"{cfg.aligner.variant}/{cfg.aligner.hidden_dim}"
            )
            report(label, compare(cfg, adapter, batch, args.steps, args.warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
