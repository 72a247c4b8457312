"""`lavender plan`: activations measured on narrowed, shallow copies and scaled to full width and
depth agree with a direct measurement of the full model; SD is measured on the meta device as a
GPU runs it; the memory arithmetic per ZeRO stage; refusals name the reason, in `lavender plan`
and before `lavender train` starts Ray."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from commands import run_lavender

from lavender_ray.config import load_config
from lavender_ray.families import registered_families
from lavender_ray.plan import build_plan
from lavender_ray.plan.build import Plan, sd_fit, train_fit
from lavender_ray.plan.gpus import GIB, gpus_for
from lavender_ray.plan.saved import SavedTensors
from lavender_ray.plan.scaling import widened_config
from lavender_ray.plan.sd import estimate_sd, sd_configs
from lavender_ray.plan.vlm import (
    VLMEstimate,
    architecture,
    cache_file,
    estimate_vlm,
    measure_saved,
)
from lavender_ray.sd.tiny import build_offline_sd
from lavender_ray.vlm.registry import adapter_class


@pytest.mark.parametrize("family", registered_families())
def test_narrow_shallow_measurements_scale_to_the_full_models_activations(family, tmp_path):
    """The tiny model of each family, 8x wider (so the plan narrows it 4x and 2x), its config
    and processor saved as a local folder: the plan's figure per layer kind equals a direct
    measurement of the whole model within 1%."""
    model, processor = adapter_class(family).build_tiny(0)
    config = widened_config(model.config, 8)
    config.save_pretrained(tmp_path)  # config and processor only: the plan reads no weights
    processor.save_pretrained(tmp_path)
    cfg = load_config("demo", [f"vlm.family={family}", f"vlm.model_id={tmp_path}",
                               "vlm.max_length=96", "train.use_gpu=true"])
    estimate = estimate_vlm(cfg)
    assert estimate.widths[0] >= 4  # it did narrow the model
    config, processor, source = architecture(cfg)
    assert source == "local folder"
    direct = measure_saved(cfg, config, processor, torch.bfloat16)
    assert estimate.activations.keys() == direct.by_kind.keys()
    for kind, measured in direct.by_kind.items():
        assert estimate.activations[kind] == pytest.approx(measured, rel=0.01), kind
    assert estimate.tokens == direct.tokens == 96
    assert estimate.base_params > 0 and estimate.trainable_params > 0


def test_the_saved_bytes_follow_storages_not_views():
    layer = torch.nn.Linear(4, 4)
    x = torch.ones(3, 4, requires_grad=True)
    with SavedTensors(layer) as saved:
        y = layer(x) * 2  # linear saves x (not its weight); the product saves nothing here
        (y.t() * y.t()).sum()  # one storage saved twice through views: counted once
    assert saved.total() == x.numel() * 4 + y.numel() * 4


def test_sd_on_the_meta_device_matches_a_cpu_measurement():
    """The tiny SD UNet's saved activations for the null-text backward: on the meta device with
    fused attention they equal the bytes a real CPU forward (fused SDPA there too) saves."""
    cfg = load_config("demo", ["sd.inversion=null_text", "sd.batch_size=2", "sd.dtype=fp32"])
    sd = build_offline_sd(cfg.sd.model_id)
    unet = sd.unet.requires_grad_(False)
    side = cfg.sd.image_size // 2 ** (len(sd.vae.config.block_out_channels) - 1)  # the latent's
    context = torch.zeros(2, 77, unet.config.cross_attention_dim, requires_grad=True)
    with SavedTensors(unet) as saved:
        unet(torch.zeros(2, 4, side, side), torch.tensor(500), encoder_hidden_states=context)
    ddim = estimate_sd(cfg.sd.model_copy(update={"inversion": "ddim"}))
    null_text = estimate_sd(cfg.sd)
    assert null_text.activations - ddim.activations == pytest.approx(saved.total(), rel=0.05)


def test_sd14_flops_and_parameters_are_the_published_models(recwarn):
    cfg = load_config("llama32_11b_lora", ["sd.inversion=ddim", "sd.ddim_steps=10"])
    unet, _, _, source = sd_configs(cfg.sd)
    # diffusers' Hub lookup warned of a huggingface_hub argument on `lavender plan`'s console
    assert not [w for w in recwarn if "local_dir_use_symlinks" in str(w.message)]
    assert unet["block_out_channels"] in ((320, 640, 1280, 1280), [320, 640, 1280, 1280])
    estimate = estimate_sd(cfg.sd)
    assert estimate.params == pytest.approx(1.066e9, rel=0.01)  # UNet 860M + VAE 84M + CLIP 123M
    assert estimate.unet_evaluations == 20
    # about 0.8 TFLOP per UNet call at 512 px (the figure usually quoted for SD 1.x)
    assert 0.75e12 * 20 < estimate.flops_per_image < 0.9e12 * 20 + 2e12
    null_text = estimate_sd(cfg.sd.model_copy(update={"inversion": "null_text"}))
    assert null_text.unet_evaluations == 10 * 3 + 2 * 10 * 5
    assert null_text.activations > 2 * estimate.activations  # the backward keeps a forward


def fake_vlm(**changes) -> VLMEstimate:
    base = VLMEstimate(base_params=10_000_000_000, trainable_params=10_000_000,
                       activations={"layers": 8 * GIB}, tokens=1024, image_tokens=6404,
                       flops_per_sample=60e12, widths=(16, 8), dtype_bytes=2, source="test")
    return dataclasses.replace(base, **changes)


def test_zero3_shards_the_base_weights_and_zero2_does_not():
    a100 = gpus_for("A100-80G")[0]
    lines = {}
    for stage in (2, 3):
        cfg = load_config("llama32_11b_lora", [f"train.zero_stage={stage}"])
        lines[stage] = dict(train_fit(cfg, fake_vlm(), a100).lines)
    weights = {stage: next(v for k, v in lines[stage].items() if k.startswith("base"))
               for stage in lines}
    assert weights[2] == pytest.approx(2e10)  # 10B x 2 bytes on every rank
    assert weights[3] == pytest.approx(2e10 / 8)  # over 8 workers
    activations = next(v for k, v in lines[3].items() if k.startswith("activations"))
    assert activations == 8 * GIB


def test_bf16_on_a_v100_and_a_too_large_preset_are_refused_naming_the_reason():
    v100 = load_config("llama32_11b_lora", ["train.accelerator=V100", "train.precision=bf16"])
    fits = [train_fit(v100, fake_vlm(), gpu) for gpu in gpus_for("V100")]
    plan = Plan(v100, fake_vlm(), None, train=fits)
    (problem,) = plan.problems()
    assert "no bf16" in problem and "V100-16GB" in problem and "V100-32GB" in problem
    big = fake_vlm(activations={"layers": 100 * GIB})
    cfg = load_config("llama32_11b_lora", [])
    plan = Plan(cfg, big, None, train=[train_fit(cfg, big, g) for g in gpus_for(None)])
    assert "fits none of the GPU types" in plan.problems()[0]


def test_the_pool_size_feeds_every_train_worker():
    cfg = load_config("llama32_11b_lora", ["train.num_workers=8"])
    a100, v100 = gpus_for("A100-80G")[0], gpus_for("V100")[0]
    train = train_fit(cfg, fake_vlm(), a100)
    sd = estimate_sd(cfg.sd)
    actor = sd_fit(cfg, sd, v100)
    n = Plan(cfg, fake_vlm(), sd).pool_size(train, actor)
    assert (n - 1) * actor.rate < 8 * train.rate <= n * actor.rate


def test_plan_of_a_tiny_gpu_preset_fits_everywhere():
    cfg = load_config("demo", ["train.use_gpu=true", "pipeline.sd_num_gpus=1"])
    plan = build_plan(cfg)
    assert plan.problems() == [] and len(plan.train) == len(plan.sd_actor) == 5
    text = plan.describe()
    assert "A100-40GB" in text and "SD actors that keep 2 train workers fed" in text


@pytest.mark.slow  # two CLI processes, each importing the whole stack (about 30 s)
def test_lavender_plan_and_train_refuse_before_ray_starts(tmp_path):
    """bf16 on V100s: both commands exit 2 with the reason, without measuring (the weights
    cannot be placed) and, for `train`, before the run folder or Ray exist."""
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "train.jsonl").write_text("")
    args = ["--preset", "llama32_11b_lora", "--set", "train.accelerator=V100",
            "--set", "train.precision=bf16"]
    out = run_lavender(tmp_path, "plan", *args, timeout_s=120, exit_code=2)
    assert "activations not measured" in out and "no bf16" in out
    out = run_lavender(tmp_path, "train", *args, timeout_s=120, exit_code=2)
    assert "no bf16" in out and "V100-32GB" in out
    assert not (tmp_path / "outputs").exists()


def test_a_second_plan_reads_the_measurement_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LAVENDER_PLAN_CACHE", str(tmp_path))
    cfg = load_config("demo", ["train.use_gpu=true"])
    assert not cache_file(cfg, architecture(cfg)[0]).exists()
    first = estimate_vlm(cfg)
    assert cache_file(cfg, architecture(cfg)[0]).exists()

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr("lavender_ray.plan.vlm.measure_saved", no_measuring)
    assert estimate_vlm(cfg) == first
    changed = load_config("demo", ["train.use_gpu=true", "vlm.max_length=64"])
    with pytest.raises(AssertionError, match="measured again"):
        estimate_vlm(changed)  # another micro-batch: another key


def test_gpu_types_by_ray_name_and_an_unknown_one_is_refused():
    assert [g.name for g in gpus_for("A100")] == ["A100-40GB", "A100-80GB"]
    assert [g.name for g in gpus_for("V100")] == ["V100-16GB", "V100-32GB"]
    assert [g.name for g in gpus_for("H200")] == ["H200-141GB"]
    assert "H200-141GB" not in [g.name for g in gpus_for(None)]
    with pytest.raises(ValueError, match="'B300'.*knows A100, A100-40G"):
        gpus_for("B300")


def test_a_gpu_type_without_figures_is_left_unplanned_not_refused():
    cfg = load_config("demo", ["train.use_gpu=true", "train.accelerator=B300"])
    plan = build_plan(cfg)
    assert plan.problems() == [] and plan.train == []
    assert "train workers not planned" in plan.summary() and "'B300'" in plan.describe()
    assert plan.on_gpu and "Train worker: on CPU" not in plan.describe()  # on GPUs, unplanned


def test_tune_plans_the_largest_value_of_each_searched_number(capsys):
    """`lavender tune` plans the trials' worst case: a micro-batch of 1 fits a V100, the
    search's largest (200,000 worst-case samples) does not, and the refusal names it."""
    from lavender_ray.commands.plan import check_before_start
    from lavender_ray.config import ConfigError
    from lavender_ray.tune.space import parse_search_space

    search = ('tune.search_space={"train.micro_batch_size": "choice([1, 200000])", '
              '"optim.lr": "loguniform(1e-5, 1e-3)", "aligner.variant": "grid([light, sim])"}')
    cfg = load_config("demo", ["train.use_gpu=true", "train.accelerator=V100",
                               "pipeline.sd_num_gpus=0", "train.precision=fp16", search])
    largest = parse_search_space(cfg.tune.search_space, cfg.to_dict()).largest()
    assert largest["train.micro_batch_size"] == 200000 and "aligner.variant" not in largest
    assert largest["optim.lr"] < 1e-3
    check_before_start(cfg)  # the preset as given fits
    with pytest.raises(ConfigError, match="micro_batch_size"):
        check_before_start(cfg, searched=True)
    assert "train.micro_batch_size=200000" in capsys.readouterr().out


def test_a_cpu_preset_says_there_is_nothing_to_size(capsys):
    """The demo runs on CPU: no GPU table, no rates footnote, and no claim that GPU stages fit."""
    from lavender_ray.cli import main

    assert main(["plan", "--preset", "demo"]) == 0
    out = capsys.readouterr().out
    assert "nothing in this preset runs on a GPU" in out
    assert "Rates assume" not in out and "every GPU stage fits" not in out
    gpu = load_config("demo", ["train.use_gpu=true"])
    assert build_plan(gpu).on_gpu and "Rates assume" in build_plan(gpu).describe()


def test_a_hub_id_this_machine_cannot_read_is_refused_naming_the_offline_switch(monkeypatch):
    """Offline (`HF_HUB_OFFLINE=1`, as the README tells machines without internet), a Hub id
    that is not in the cache is refused at once, naming the key and how to run offline."""
    import huggingface_hub.constants

    from lavender_ray.config import ConfigError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    vlm = load_config("llama32_11b_lora", ["vlm.family=qwen2_vl",
                                           "vlm.model_id=nobody/no-such-vlm"])
    refused = r"(?s){}.model_id='nobody/no-such-{}'.*HF_HUB_OFFLINE=1"
    with pytest.raises(ConfigError, match=refused.format("vlm", "vlm")):
        architecture(vlm)
    sd = load_config("llama32_11b_lora", ["sd.model_id=nobody/no-such-sd"])
    with pytest.raises(ConfigError, match=refused.format("sd", "sd")):
        sd_configs(sd.sd)
