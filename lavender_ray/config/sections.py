"""The typed config tree of lavender_ray: one pydantic section per stage, `LavenderConfig` at the
root.

Walking the tree (keys, the error messages that name the key, the value and what is allowed,
hashes) is in `lavender_ray.config.tree`, loading (presets, dotted overrides) in
`lavender_ray.config.loading`; import everything from
`lavender_ray.config`. This module imports no Ray, torch, diffusers or transformers.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lavender_ray.config.tree import format_validation_error
from lavender_ray.families import check_family, check_tiny_model

CONFIG_FILE = "config.yaml"  # the resolved config next to every run, export and report


class ConfigError(ValueError):
    """A preset, override, path or value that does not fit: its message says all (`for_people`:
    the command line prints it alone, with no traceback, not in the log either)."""

    for_people = True


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    # allow_inf_nan=False: inf and NaN cannot train (a NaN loss, an infinite learning rate)
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False
    )


# --------------------------------------------------------------------------------------- data
SourceFormat = Literal[
    "synthetic", "records", "messages", "llava", "flickr30k", "laion", "rlaif_v", "ocrvqa"
]
FlickrSplit = Literal["train", "val", "test", "restval"]


class SourceConfig(Section):
    """One data source. `path` is a local path or any pyarrow filesystem URI (`s3://...`).

    Sampling (`lavender_ray.data.mixture`): a record is kept with probability `fraction`, decided
    by a hash of (data.seed, name, record id), so the sample is deterministic and order-free;
    then `max_samples` caps the count (the first ones read)."""

    name: str = "synthetic"
    format: SourceFormat = "synthetic"
    path: str | None = None
    image_root: str | None = Field(
        default=None, description="folder image paths in the source are relative to"
    )
    weight: float = Field(
        default=1.0, gt=0, description="share of data.total_samples (relative to the others)"
    )
    fraction: float | None = Field(
        default=None, gt=0, le=1,
        description="keep each record with this probability; null = from data.total_samples "
        "and weight (the source is counted once), or 1 without a total",
    )
    max_samples: int | None = Field(default=None, gt=0)
    num_samples: int = Field(default=48, gt=0, description="synthetic only: how many to generate")
    splits: list[FlickrSplit] | None = Field(
        default=None, min_length=1,
        description="flickr30k only: Karpathy splits to read; null = all",
    )
    captions: Literal["all", "first"] = Field(
        default="all", description="flickr30k only: one sample per caption, or the first only"
    )

    @model_validator(mode="after")
    def _path_needed(self) -> SourceConfig:
        if self.format != "synthetic" and not self.path:
            raise ValueError(f"source {self.name!r}: format {self.format!r} needs a 'path'")
        if self.format == "flickr30k" and not self.image_root:
            raise ValueError(
                f"source {self.name!r}: format 'flickr30k' needs 'image_root' (the folder "
                "holding the images the Karpathy JSON names)"
            )
        flickr_options = {"splits": self.splits is not None, "captions": self.captions != "all"}
        for option, is_set in flickr_options.items():
            if is_set and self.format != "flickr30k":
                raise ValueError(
                    f"source {self.name!r}: {option!r} applies to format 'flickr30k' only, "
                    f"not {self.format!r}"
                )
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()])
    seed: int = 0
    total_samples: int | None = Field(
        default=None, gt=0,
        description="mixture size: source i gets about total * weight_i / sum(weights) records",
    )
    max_text_chars: int = Field(default=2000, gt=0, description="longer texts are rejected")
    max_image_pixels: int = Field(
        default=8192 * 8192, gt=0, description="larger images are rejected"
    )
    rejects_path: str | None = Field(
        default=None, description="where rejected records go; default <run dir>/rejects"
    )
    read_num_cpus: float = Field(default=0.25, gt=0, description="CPUs per read/convert task")

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"data.sources: names must be unique (they key sampling and rejects), "
                f"repeated: {repeated}"
            )
        return self


# ----------------------------------------------------------------------------------------- sd
Dtype = Literal["auto", "fp32", "fp16", "bf16"]
NULL_TEXT_GUIDANCE = 7.5  # the guidance null-text inversion optimises for (the paper's w)
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def new_run_name(prefix: str) -> str:
    """`<prefix>-<date>-<time>-<4 hex>`: a fresh run name (a run is never reused by accident)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
SDDtype = Literal["auto", "fp32", "fp16", "bf16", "fp64"]


class SDConfig(Section):
    model_id: str = "CompVis/stable-diffusion-v1-4"
    revision: str | None = None
    inversion: Literal["ddim", "null_text"] = "null_text"
    ddim_steps: int = Field(
        default=10, gt=0,
        description="DDIM steps of the inversion and of the denoising (the same schedule: "
        "denoising retraces the inverted trajectory)",
    )
    null_text_inner_steps: int = Field(default=5, ge=1)
    null_text_lr: float = Field(default=1e-2, gt=0)
    null_text_early_stop: float = Field(default=1e-5, ge=0)
    guidance_scale: float | None = Field(
        default=None, ge=1.0,
        description="classifier-free guidance of the denoising; null = 7.5 for null_text, 1 for "
        "ddim (the only value that stays on the image's trajectory there)",
    )
    image_size: int = Field(default=512, gt=0)
    attention_resolutions: list[int] = Field(default_factory=lambda: [16, 32], min_length=1)
    output_size: int = Field(default=32, gt=0)
    dtype: SDDtype = Field(
        default="auto", description="auto = fp16 on GPU, fp32 on CPU; fp64 for reference runs"
    )
    batch_size: int = Field(default=8, gt=0)
    seed: int = 0
    channels_last: bool = Field(
        default=False,
        description="UNet in the channels-last memory format (faster convolutions on recent GPUs)",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the UNet's ResNet blocks, feed-forward layers and "
        "self-attention (regions: the cross-attention modules stay eager, so the capture "
        "records as written); the first batch of each actor pays the compilation",
    )

    @model_validator(mode="before")
    @classmethod
    def _guidance_of_the_mode(cls, raw: Any) -> Any:
        """`guidance_scale: null` -> the mode's own: 7.5 (null_text, the paper's) or 1 (ddim)."""
        if isinstance(raw, dict) and raw.get("guidance_scale") is None:
            ddim = raw.get("inversion", "null_text") == "ddim"
            raw = {**raw, "guidance_scale": 1.0 if ddim else NULL_TEXT_GUIDANCE}
        return raw

    @model_validator(mode="after")
    def _ddim_stays_on_the_trajectory(self) -> SDConfig:
        if self.inversion == "ddim" and self.guidance_scale != 1.0:
            raise ValueError(
                f"sd.inversion=ddim with sd.guidance_scale={self.guidance_scale}: plain DDIM "
                "inversion is unguided, and guided denoising leaves the inverted trajectory (the "
                "maps would describe another image); use sd.guidance_scale=1 (negative-prompt "
                "inversion) or sd.inversion=null_text, which optimises for guidance"
            )
        return self


# ---------------------------------------------------------------------------------------- vlm
class VLMConfig(Section):
    family: str = Field(
        default="mllama", description="one of `lavender_ray.families.VLM_FAMILIES`"
    )
    model_id: str = "meta-llama/Llama-3.2-11B-Vision-Instruct"
    revision: str | None = None
    attention_layers: list[int] | None = Field(
        default=None, description="layers whose text->image attention is aligned; null = all"
    )
    dtype: Dtype = "auto"
    max_length: int = Field(default=512, gt=0)
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    overlong: Literal["reject", "truncate_question"] = Field(
        default="reject",
        description="a sample whose answer vlm.max_length would cut: reject it, or cut its "
        "question (the earliest user text) until the answer fits",
    )
    seed: int = Field(
        default=0, ge=0, description="seed of the VLM side's random weights: tiny/*, LoRA init"
    )

    @field_validator("family")
    @classmethod
    def _registered_family(cls, family: str) -> str:
        return check_family(family)

    @model_validator(mode="after")
    def _tiny_model_of_the_family(self) -> VLMConfig:
        check_tiny_model(self.model_id, self.family)
        return self


# ------------------------------------------------------------------------------------ aligner
class AlignerConfig(Section):
    variant: Literal["light", "sim", "deep"] = "sim"
    norm: Literal["instance", "batch", "group", "none"] = "instance"
    activation: Literal["relu6", "leaky_relu"] = "relu6"
    hidden_dim: int = Field(default=32, gt=0)
    layer_reduction: Literal["aligner_then_mean", "mean_then_aligner"] = "aligner_then_mean"
    word_pooling: Literal["aligner_then_pool", "pool_then_aligner"] = Field(
        default="aligner_then_pool",
        description="run the Aligner on each attention row of a word and average the word after "
        "it (the authors' order), or average the word's rows first (fewer maps)",
    )


# --------------------------------------------------------------------------------------- loss
class LossConfig(Section):
    lambda_: float = Field(default=10.0, ge=0, alias="lambda")
    matching: Literal["exact", "root"] = "exact"
    word_source: Literal["predicted", "label"] = "predicted"
    skip_stop_words: bool = False
    aligner_pretrain_steps: int = Field(default=0, ge=0)
    pretrain_alpha: float = Field(
        default=0.0, ge=0, le=1, description="alpha_t during pre-training"
    )
    alpha_schedule: Literal["step", "linear"] = Field(
        default="step", description="after pre-training: jump to 1, or ramp linearly to 1"
    )
    alpha_ramp_steps: int = Field(default=0, ge=0)
    lambda_decay: float = Field(default=0.0, ge=0, description="k in lambda*exp(-k t/T)")

    @model_validator(mode="after")
    def _ramp_needs_steps(self) -> LossConfig:
        if self.alpha_schedule == "linear" and self.alpha_ramp_steps == 0:
            raise ValueError(
                "loss.alpha_schedule=linear ramps alpha over loss.alpha_ramp_steps, "
                "which must then be > 0 (got 0)"
            )
        return self


# --------------------------------------------------------------------------------------- lora
class LoraConfig(Section):
    mode: Literal["lora", "full"] = "lora"
    r: int = Field(default=8, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


# -------------------------------------------------------------------------------------- optim
class OptimConfig(Section):
    lr: float = Field(default=1e-4, gt=0)
    aligner_lr: float | None = Field(default=None, gt=0, description="null = optim.lr")
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    step_lr_gamma: float = Field(default=0.85, gt=0, le=1, description="StepLR gamma per epoch")
    grad_clip: float = Field(default=1.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)


# -------------------------------------------------------------------------------------- train
TrackerName = Literal["tensorboard", "mlflow", "wandb"]
TRACKERS: tuple[str, ...] = get_args(TrackerName)


class TrainConfig(Section):
    num_workers: int = Field(default=2, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    accelerator: str | None = Field(default=None, description="e.g. A100; null = any")
    zero_stage: Literal[0, 1, 2, 3] = 2
    zero3_live_parameters: int = Field(
        default=1_000_000_000, gt=0,
        description="ZeRO-3: the most parameters a rank keeps gathered (whole) at once "
        "(DeepSpeed's stage3_max_live_parameters and stage3_max_reuse_distance); lower it "
        "when a rank runs out of memory",
    )
    zero3_prefetch_parameters: int = Field(
        default=50_000_000, gt=0,
        description="ZeRO-3: parameters gathered ahead of use (stage3_prefetch_bucket_size)",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    micro_batch_size: int = Field(default=1, gt=0)
    grad_accum_steps: int = Field(default=1, gt=0)
    max_steps: int = Field(default=1000, gt=0)
    epochs: int = Field(
        default=1, gt=0,
        description="the epochs max_steps is taken to span, for the LR schedule only: StepLR "
        "multiplies the LR by optim.step_lr_gamma every max_steps / epochs steps (the default 1 "
        "keeps it flat: the paper trains a fraction of an epoch). A run always takes max_steps "
        "steps, going round the data as often as that needs (metric train/epoch)",
    )
    checkpoint_every: int = Field(default=200, gt=0)
    report_every: int = Field(default=10, gt=0)
    storage_path: str = Field(
        default="outputs", description="local path (one node), shared mount or URI (s3://...)"
    )
    shared_storage: bool = Field(
        default=False, description="storage_path is a mount every node sees (NFS, FSx, ...)"
    )
    run_name: str = Field(
        default_factory=lambda: new_run_name("run"),
        description="one folder name under storage_path (letters, digits, . _ -); default: "
        "run-<date>-<time>-<random>, new for every run",
    )
    keep_checkpoints: int = Field(default=2, gt=0)
    max_failures: int = Field(default=1, ge=0)
    fail_at_step: int | None = Field(
        default=None, ge=0, description="testing: rank 0 raises once at this step"
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        default="stop",
        description="a step whose loss is NaN or inf: stop the run with an error, or skip the "
        "step (no update) and count it in the metric train/skipped_steps",
    )
    stall_timeout_s: float = Field(
        default=300.0, gt=0,
        description="print what waits for which resource when work has been pending this long",
    )
    report_to: list[TrackerName] = Field(
        default_factory=list,
        description="experiment trackers that get every reported metric, the resolved config "
        "and the attention PNGs: tensorboard (<run>/tensorboard), mlflow, wandb (WANDB_MODE; "
        "offline without an API key); [] = none (metrics.jsonl and report/ are always written)",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server; null = MLFLOW_TRACKING_URI if set, else an "
        "embedded store in the run folder (sqlite:///<run>/mlruns/mlflow.db)",
    )
    attention_png_every: int = Field(
        default=0, ge=0,
        description="every this many steps, rank 0 draws its micro-batch's words (image | SD | "
        "VLM | aligned) into <run>/report/step_<N>/ and sends them to the trackers; 0 = off",
    )
    seed: int = 0

    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list):
            return value  # pydantic says what type it wants
        allowed = ", ".join(TRACKERS)
        for name in names:
            if name not in TRACKERS:
                raise ValueError(
                    f"unknown tracker {name!r}; allowed: {allowed} (a list; [] = none)"
                )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"trackers named more than once: {repeated}")
        return names

    @field_validator("run_name")
    @classmethod
    def _one_safe_folder(cls, name: str) -> str:
        if not RUN_NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(
                "must be one folder name: letters, digits, '.', '_' and '-', starting with a "
                "letter or digit, at most 100 characters (no '/' or '..')"
            )
        return name


# ----------------------------------------------------------------------------------- pipeline
class PipelineConfig(Section):
    mode: Literal["stream", "cache", "precomputed"] = "stream"
    cache_path: str | None = Field(default=None, description="target cache (cache mode)")
    precomputed_path: str | None = None
    precomputed_format: Literal["parquet", "authors"] = "parquet"
    sd_pool_min: int = Field(default=1, gt=0)
    sd_pool_max: int = Field(default=1, gt=0)
    sd_num_gpus: float = Field(default=0.0, ge=0, description="GPUs per SD actor; 0 = CPU")
    sd_num_cpus: float = Field(default=1.0, gt=0)
    sd_accelerator: str | None = Field(default=None, description="e.g. V100; null = any")
    check_num_cpus: float = Field(
        default=0.25, gt=0,
        description="CPUs per task of the step that checks each record against the VLM's "
        "processor (chat template, max_length, image) before training",
    )
    replay_mb: int = Field(
        default=1024, ge=0,
        description="MiB of host memory each train worker may keep its first epoch's "
        "micro-batches in; when they fit on every worker, later epochs replay them instead of "
        "running the dataset again (actor pools started anew, SD run again in stream mode); "
        "0 = never",
    )
    sd_fail_at_batch: int | None = Field(
        default=None, gt=0, description="testing: an SD actor dies once at this batch"
    )

    @model_validator(mode="after")
    def _pool_bounds(self) -> PipelineConfig:
        if self.sd_pool_min > self.sd_pool_max:
            raise ValueError(
                f"pipeline.sd_pool_min ({self.sd_pool_min}) must be <= "
                f"pipeline.sd_pool_max ({self.sd_pool_max})"
            )
        return self


# --------------------------------------------------------------------------------------- tune
class TuneConfig(Section):
    search_space: dict[str, str] = Field(
        default_factory=dict, description="dotted key -> 'loguniform(1, 30)' / 'choice([..])'"
    )
    num_samples: int = Field(default=8, gt=0)
    metric: str = "loss/att"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(default=1, gt=0)
    reduction_factor: float = Field(default=2.0, gt=1)
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    targets: Literal["cache", "precomputed", "stream"] = Field(
        default="cache",
        description="SD targets of the trials: extracted once into pipeline.cache_path before the "
        "trials, then read in pipeline.mode=cache (cache) or from the cache's targets folder "
        "without SD actors (precomputed); stream: every trial runs SD itself",
    )
    trial_resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 0.1},
        description="resources of each trial's driver (its TorchTrainer's workers ask for their "
        "own), e.g. {lavender_driver: 1} to run drivers on the cluster head",
    )
    seed: int = Field(default=0, ge=0, description="seed of the search-space sampling")

    @model_validator(mode="after")
    def _trial_resources_positive(self) -> TuneConfig:
        bad = {k: v for k, v in self.trial_resources.items() if not v > 0}
        if not self.trial_resources or bad:
            raise ValueError(
                f"tune.trial_resources={self.trial_resources!r}: give at least one resource, "
                "every amount > 0 (Ray Tune refuses trials that ask for nothing)"
            )
        return self


# --------------------------------------------------------------------------------------- eval
# the metrics of `lavender_ray.eval.metrics.METRICS` (a test keeps the two lists equal)
MetricName = Literal[
    "vqa_accuracy", "anls", "relaxed_accuracy", "exact_match", "multiple_choice",
    "multiple_choice_circular", "multiple_choice_language", "pope", "mme", "ocrbench",
]  # fmt: skip


class EvalConfig(Section):
    benchmarks: dict[str, str] = Field(
        default_factory=dict, description="benchmark name -> local Parquet/JSONL/TSV path"
    )
    metrics: dict[str, MetricName] = Field(
        default_factory=dict,
        description="benchmark name -> metric, for names that do not start with a known benchmark",
    )
    batch_size: int = Field(default=8, gt=0)
    max_new_tokens: int = Field(default=32, gt=0)
    pool_size: int = Field(default=1, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    num_cpus: float = Field(default=1.0, gt=0, description="CPUs per inference actor")
    probe_samples: int = Field(default=8, gt=0)
    probe_path: str | None = Field(
        default=None,
        description="Parquet of held-out records with SD targets for the attention probe; "
        "null = synthetic probe records with targets from the sd section",
    )
    synthetic_samples: int = Field(
        default=16, gt=0, description="rows of the generated benchmark `--bench synthetic`"
    )


# ----------------------------------------------------------------------------------------- root
class LavenderConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    sd: SDConfig = Field(default_factory=SDConfig)
    vlm: VLMConfig = Field(default_factory=VLMConfig)
    aligner: AlignerConfig = Field(default_factory=AlignerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-safe dict (aliases such as `loss.lambda` as written in YAML)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LavenderConfig:
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, cls)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, directory: str | Path) -> Path:
        """Write the resolved config as `config.yaml` into `directory` (created)."""
        path = Path(directory) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path
