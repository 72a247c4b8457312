"""The plan of a preset: the memory of a train worker and of an SD actor on each GPU type the
preset may place them on, their speed, the SD pool that keeps the trainer fed, and whether it
fits at all.

    plan = build_plan(cfg)       # measures (a minute at 11B on 2 cores; seconds for tiny models)
    print(plan.describe())
    plan.check()                 # ConfigError naming the stage, the GPU types and the keys

Memory of a train worker (N base / T trainable parameters, W workers, b bytes per element: 2 in
bf16/fp16, 4 in fp32):
- base weights N*b, divided by W under ZeRO-3, plus the layers ZeRO-3 gathers at once
  (`train.zero3_live_parameters` + `train.zero3_prefetch_parameters`, at most N);
- trainable weights T*b (/W under ZeRO-3) and their gradients T*b, plus T*4 for the fp32
  accumulation of bf16 gradients (/W from ZeRO-2);
- AdamW: fp32 master weights and two moments, T*12 (/W from ZeRO-1);
- activations: the measured worst-case micro-batch (`plan.vlm`) times `train.micro_batch_size`;
- DeepSpeed's gradient buckets (reduce + all-gather, T elements each at most 5e8:
  `train.precision.gradient_buckets`);
- 10% allocator slack on top, and CUDA_RESERVED_GIB per GPU for the CUDA context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.placement import Device, gpu_stages, resolve_precision
from lavender_ray.plan.gpus import CUDA_RESERVED_GIB, GIB, GPU, gpus_for
from lavender_ray.plan.sd import SDEstimate, estimate_sd
from lavender_ray.plan.vlm import VLMEstimate, estimate_vlm
from lavender_ray.train.precision import gradient_buckets

# Share of a GPU's dense peak a stage reaches (model FLOPs utilisation): typical figures for
# bf16 LoRA fine-tuning of a 10B model and for SD-1.x UNet inference at batch 8; the rates are
# estimates to size the pool with, not promises.
TRAIN_EFFICIENCY = 0.35
SD_EFFICIENCY = 0.30
SLACK = 0.10
OVERHEAD_BOUND = 1000.0  # samples or images per second: beyond it, FLOPs say nothing


@dataclass
class Fit:
    """One stage on one GPU type: memory lines (label, bytes), total, and the rate."""

    gpu: GPU
    lines: list[tuple[str, float]]
    rate: float  # samples/s (train worker) or images/s (SD actor)
    note: str = ""

    def total(self) -> float:
        return sum(b for _, b in self.lines)

    def fits(self) -> bool:
        return not self.note and self.total() <= self.gpu.usable_bytes()


@dataclass
class Plan:
    cfg: LavenderConfig
    vlm: VLMEstimate | None
    sd: SDEstimate | None
    train: list[Fit] = field(default_factory=list)
    sd_actor: list[Fit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # stages left unplanned, and why

    def pool_size(self, train_fit: Fit, sd_fit: Fit) -> int:
        """SD actors that produce what `train.num_workers` workers consume."""
        demand = train_fit.rate * self.cfg.train.num_workers
        return max(1, math.ceil(demand / sd_fit.rate))

    @property
    def on_gpu(self) -> bool:
        """Whether the trainer or the SD actors run on GPUs (else there is nothing to size)."""
        return any(gpu_stages(self.cfg))

    def describe(self) -> str:
        lines = []
        if self.vlm is not None:
            v = self.vlm
            t = self.cfg.train
            lines.append(
                f"Train worker: {self.cfg.vlm.model_id} ({v.source}), {_count(v.base_params)} "
                f"frozen + {_count(v.trainable_params)} trained parameters, ZeRO-{t.zero_stage} "
                f"over {t.num_workers} workers, micro-batch {t.micro_batch_size}")
            if v.measured:
                lines.append(
                    f"  worst-case micro-batch: {v.tokens} text tokens, {v.image_tokens} tokens "
                    f"per vision layer; activations measured at widths 1/"
                    f"{' and 1/'.join(map(str, v.widths))}, one and two layers of each kind:")
            else:
                lines.append("  activations not measured: the weights and the optimizer alone "
                             "fit none of the GPU types")
            for kind, nbytes in sorted(self.vlm.activations.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {_gib(nbytes):>9}  {kind}")
            lines += _fit_table(self.train, "samples/s")
            lines += _placement_hint(self.train, "train workers", "train.accelerator")
        elif not gpu_stages(self.cfg)[0]:
            lines.append("Train worker: on CPU (train.use_gpu=false): no GPU memory to plan")
        if self.sd is not None:
            s, sd = self.sd, self.cfg.sd
            lines += [
                "",
                f"SD actor: {sd.model_id} ({s.source}), {_count(s.params)} parameters in "
                f"{sd.dtype}, {sd.inversion} with {sd.ddim_steps} steps at {sd.image_size} px, "
                f"batch {sd.batch_size}: {s.flops_per_image / 1e12:.1f} TFLOP per image "
                f"({s.unet_evaluations:g} UNet evaluations)",
            ]
            lines += _fit_table(self.sd_actor, "images/s")
            lines += _placement_hint(self.sd_actor, "SD actors", "pipeline.sd_accelerator")
        elif self.cfg.pipeline.mode != "precomputed" and not gpu_stages(self.cfg)[1]:
            lines += ["", "SD actor: on CPU (pipeline.sd_num_gpus=0): no GPU memory to plan"]
        pools, sizes = _pool_table(self) if self.cfg.pipeline.mode == "stream" else ([], [])
        if pools:
            p = self.cfg.pipeline
            lines += ["", f"SD actors that keep {self.cfg.train.num_workers} train workers fed "
                          f"(pipeline.sd_pool_min={p.sd_pool_min}, sd_pool_max={p.sd_pool_max}):",
                      *pools]
            if max(sizes) > p.sd_pool_max:
                where = "every pairing" if min(sizes) > p.sd_pool_max else "some pairings"
                lines.append(f"  pipeline.sd_pool_max={p.sd_pool_max} is below what {where} "
                             "need: the trainer would wait for SD targets (and samples shorter "
                             "than the worst case train faster and need more)")
        if any(f.rate > OVERHEAD_BOUND for f in self.train + self.sd_actor):
            lines += ["", f"Rates above {OVERHEAD_BOUND:g}/s: these models are too small for "
                          "their FLOPs to bound their speed (per-step overheads do), so neither "
                          "those rates nor the pool sizes apply to them."]
        lines += ["", *self.notes] if self.notes else []
        if not self.on_gpu:
            return "\n".join(lines)
        lines += ["", f"Rates assume {TRAIN_EFFICIENCY:.0%} (training) and {SD_EFFICIENCY:.0%} "
                      f"(SD) of each GPU's dense peak; memory adds {SLACK:.0%} allocator slack "
                      f"and {CUDA_RESERVED_GIB:g} GiB of CUDA context per GPU."]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line per GPU stage: the GPU types it fits, with the memory it needs there."""
        lines = []
        for stage, fits in (("train worker", self.train), ("SD actor", self.sd_actor)):
            fitting = [f"{f.gpu.name} {_gib(f.total())}" for f in fits if f.fits()]
            if fitting:
                lines.append(f"plan: a {stage} fits on {', '.join(fitting)} "
                             "(`lavender plan` for the details)")
        return "\n".join(lines + [f"plan: {note}" for note in self.notes])

    def problems(self) -> list[str]:
        """Why the preset cannot run as planned (empty when it can)."""
        out = []
        for stage, fits, keys in (
            ("a train worker", self.train, "train.micro_batch_size, vlm.max_length, "
             "train.zero_stage, vlm.gradient_checkpointing or train.accelerator"),
            ("an SD actor", self.sd_actor, "sd.batch_size, sd.dtype or pipeline.sd_accelerator"),
        ):
            if fits and not any(f.fits() for f in fits):
                needs = ", ".join(f"{f.gpu.name} needs {_gib(f.total())} of "
                                  f"{_gib(f.gpu.usable_bytes())}" + (f" ({f.note})" if f.note else "")
                                  for f in fits)
                out.append(f"{stage} fits none of the GPU types it may run on: {needs}; "
                           f"change {keys}")
        return out

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("the plan refuses this preset:\n  " + "\n  ".join(problems))


def build_plan(cfg: LavenderConfig, progress: Callable[[str], None] | None = None) -> Plan:
    """Measure and size every GPU stage of `cfg` (stages on CPU are not planned); `progress`
    hears before the slow step. A train worker whose weights and optimizer alone fit no GPU
    type is refused without measuring its activations."""
    t, p = cfg.train, cfg.pipeline
    notes = []

    def gpus(accelerator: str | None, stage: str) -> list[GPU]:
        try:
            return gpus_for(accelerator)
        except ValueError as err:  # a GPU type Ray knows and this table does not: not planned
            notes.append(f"{stage} not planned: {err}")
            return []

    train_on_gpu, sd_on_gpu = gpu_stages(cfg)
    train_gpus = gpus(t.accelerator, "train workers") if train_on_gpu else []
    sd_gpus = gpus(p.sd_accelerator, "SD actors") if sd_on_gpu else []
    vlm = None
    if train_gpus:
        # when the weights and the optimizer alone fit no GPU type, activations cannot help
        vlm = estimate_vlm(
            cfg, measure=lambda sizes: any(train_fit(cfg, sizes, g).fits() for g in train_gpus),
            progress=progress)
    sd = estimate_sd(cfg.sd) if sd_gpus else None
    plan = Plan(cfg, vlm, sd, notes=notes)
    plan.train = [train_fit(cfg, vlm, gpu) for gpu in train_gpus] if vlm else []
    plan.sd_actor = [sd_fit(cfg, sd, gpu) for gpu in sd_gpus] if sd else []
    return plan


def train_fit(cfg: LavenderConfig, vlm: VLMEstimate, gpu: GPU) -> Fit:
    t = cfg.train
    try:
        precision, note = resolve_precision(t.precision, Device("cuda", gpu.name, gpu.bf16)), ""
    except ConfigError:  # bf16 asked for on a GPU without it
        precision, note = t.precision, "no bf16 on this GPU"
    b = 4 if precision == "fp32" else 2
    n, trained, world, stage = vlm.base_params, vlm.trainable_params, t.num_workers, t.zero_stage
    lines = [(f"base weights ({_count(n)} x {b} B" + (f" / {world} ranks)" if stage == 3 else ")"),
              n * b / (world if stage == 3 else 1))]
    if stage == 3:
        gathered = min(t.zero3_live_parameters + t.zero3_prefetch_parameters, n)
        lines.append(("ZeRO-3 gathered layers (live + prefetch)", gathered * b))
    grad_bytes = b + (4 if precision == "bf16" and stage else 0)
    lines += [
        ("trained weights + gradients", trained * b / (world if stage == 3 else 1)
         + trained * grad_bytes / (world if stage >= 2 else 1)),
        ("AdamW: fp32 weights + 2 moments", trained * 12 / (world if stage >= 1 else 1)),
        (f"activations ({t.micro_batch_size} x worst-case sample, "
         + ("measured)" if vlm.measured else "not measured)"),
         vlm.activation_bytes() * t.micro_batch_size * b / vlm.dtype_bytes),
        ("DeepSpeed gradient buckets", gradient_buckets(trained)["reduce_bucket_size"] * b
         * (1 if stage == 3 else 2)),
    ]
    lines.append((f"allocator slack ({SLACK:.0%})", SLACK * sum(x for _, x in lines)))
    flops = vlm.flops_per_sample
    rate = gpu.peak_flops(b) * TRAIN_EFFICIENCY / flops if flops else 0.0
    return Fit(gpu, lines, rate, note)


def sd_fit(cfg: LavenderConfig, sd: SDEstimate, gpu: GPU) -> Fit:
    dtype = cfg.sd.dtype
    note = "no bf16 on this GPU" if dtype == "bf16" and not gpu.bf16 else ""
    lines = [("UNet + VAE + text encoder", sd.weights),
             (f"activations (batch {cfg.sd.batch_size})", sd.activations)]
    lines.append((f"allocator slack ({SLACK:.0%})", SLACK * sum(x for _, x in lines)))
    element = 4 if dtype in ("fp32", "fp64") else 2
    rate = gpu.peak_flops(element) * SD_EFFICIENCY / sd.flops_per_image
    return Fit(gpu, lines, rate, note)


def _fit_table(fits: list[Fit], unit: str) -> list[str]:
    """Memory lines as rows, GPU types as columns; then total, usable, rate and the verdict."""
    usable = "usable (memory - CUDA context)"
    label_width = max(len(usable), *(len(label) for label, _ in fits[0].lines)) + 2
    width = max(11, *(len(f.gpu.name) + 2 for f in fits))

    def row(label: str, cells: list[str]) -> str:
        return "  " + label.ljust(label_width) + "".join(c.rjust(width) for c in cells)

    out = [row("", [f.gpu.name for f in fits])]
    for i, (label, _) in enumerate(fits[0].lines):
        out.append(row(label, [_gib(f.lines[i][1]) for f in fits]))
    out += [
        row("total", [_gib(f.total()) for f in fits]),
        row(usable, [_gib(f.gpu.usable_bytes()) for f in fits]),
        row(unit, [f"{f.rate:.3g}" for f in fits]),
        row("", ["fits" if f.fits() else "NO" for f in fits]),
    ]
    out += [f"  {f.gpu.name}: {f.note}" for f in fits if f.note]
    return out


def _placement_hint(fits: list[Fit], stage: str, key: str) -> list[str]:
    fitting = [f.gpu for f in fits if f.fits()]
    if not fitting or len(fitting) == len(fits):
        return []
    names = sorted({g.ray_type for g in fitting})
    return [f"  {stage} fit only on {', '.join(g.name for g in fitting)}: set {key} to "
            f"{' or '.join(names)} so that Ray places them there"]


def _pool_table(plan: Plan) -> tuple[list[str], list[int]]:
    """SD actors needed, trainer GPU types as rows, SD GPU types as columns (fitting ones): the
    table's lines and its sizes (none: no fitting pair)."""
    trains = [f for f in plan.train if f.fits()]
    sds = [f for f in plan.sd_actor if f.fits()]
    if not trains or not sds:
        return [], []
    rows = [[plan.pool_size(tr, sd) for sd in sds] for tr in trains]
    out = ["  trainer on \\ SD on".ljust(24) + "".join(f.gpu.name.rjust(11) for f in sds)]
    out += [f"  {tr.gpu.name}".ljust(24) + "".join(str(n).rjust(11) for n in row)
            for tr, row in zip(trains, rows)]
    return out, [n for row in rows for n in row]


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB / 100 else f"{nbytes / 2**20:.1f} MiB"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))
