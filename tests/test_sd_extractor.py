"""SDExtractor on the tiny SD stack: batching, both inversion modes, the target contract, the
config hash, and what is recorded when."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lavender_ray.config import load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.sd.capture import AttentionStore
from lavender_ray.sd.extractor import SDExtractor
from lavender_ray.sd.settings import CONCRETE_DTYPES, resolve_dtype, sd_config_hash
from lavender_ray.tensors import TORCH_DTYPES

TEXTS = [
    "A red circle to the left of a blue square.",
    "The green triangle is above the red triangle, and the dog is red.",
    "xylophonist 42",
]


def sd_config(**overrides: object):
    """The tiny stack in fp64: a random UNet amplifies float noise along the inversion (in fp32,
    batched-vs-single differences reach ~1e-4 after min-max normalisation), fp64 keeps every
    comparison below to numerical precision. ddim: 32 px, 3 steps, unguided."""
    base = {
        "sd.image_size": 32,
        "sd.ddim_steps": 3,
        "sd.dtype": "fp64",
    }
    base.update({f"sd.{k}": v for k, v in overrides.items()})
    return load_config("demo", base).sd


def small_null_text_config(**overrides: object):
    """null_text at 16 px (map sides 8 and 4), 2 steps, 3 inner steps. With early stop 1.0 the
    first two samples stop after one inner step (loss ~0.6, ~0.8) and the third (~2.3) runs all
    three, so batching must keep each sample's own stopping."""
    settings: dict[str, object] = {
        "inversion": "null_text",
        "image_size": 16,
        "attention_resolutions": [4, 8],
        "ddim_steps": 2,
        "null_text_inner_steps": 3,
        "null_text_early_stop": 1.0,
        "guidance_scale": 7.5,
    }
    settings.update(overrides)
    return sd_config(**settings)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    records = make_synthetic_records(len(TEXTS), seed=1, image_size=48)
    return [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in records]


@pytest.fixture(scope="module")
def ddim() -> SDExtractor:
    return SDExtractor(sd_config(inversion="ddim"), device="cpu")


@pytest.fixture(scope="module")
def null_text() -> SDExtractor:
    return SDExtractor(small_null_text_config(), device="cpu")


def unet_batch_sizes(extractor: SDExtractor, run) -> list[int]:
    """Batch size of every UNet call made by `run()`."""
    calls: list[int] = []
    unet = extractor.unet
    handle = unet.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        run()
    finally:
        handle.remove()
    return calls


def test_exposes_the_components(ddim: SDExtractor) -> None:
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(ddim, part) is not None
    assert ddim.tokenizer.model_max_length == 77


def test_target_follows_the_output_contract(ddim: SDExtractor, images) -> None:
    (target,) = ddim.extract(images[1:2], TEXTS[1:2])
    assert target.words == ["the", "green", "triangle", "is", "above", "red", "and", "dog"]
    assert target.spans[0] == (0, 3) and target.spans[5] == (32, 35)
    assert target.maps.dtype == np.float32 and target.maps.shape == (8, 32, 32)
    assert np.allclose(target.maps.min(axis=(1, 2)), 0.0)
    assert np.allclose(target.maps.max(axis=(1, 2)), 1.0, atol=1e-5)
    assert target.words_cut == 0
    assert target.config_hash == ddim.config_hash == sd_config_hash(ddim.sd, "cpu")


@pytest.mark.parametrize("mode", ["ddim", "null_text"])
def test_batched_extraction_equals_single_extractions(mode: str, request, images) -> None:
    extractor: SDExtractor = request.getfixturevalue(mode)
    batched = extractor.extract(images, TEXTS)
    for i, target in enumerate(batched):
        (single,) = extractor.extract(images[i : i + 1], TEXTS[i : i + 1])
        assert single.words == target.words and single.spans == target.spans
        np.testing.assert_allclose(target.maps, single.maps, atol=1e-5, rtol=0)


def test_one_unet_call_per_step_for_the_whole_batch(ddim: SDExtractor, images) -> None:
    calls = unet_batch_sizes(ddim, lambda: ddim.extract(images, TEXTS))
    b = len(TEXTS)
    assert calls == [b] * ddim.sd.ddim_steps * 2  # inversion, then unguided denoising


def test_null_text_samples_stop_early_on_their_own(null_text: SDExtractor, images) -> None:
    calls = unet_batch_sizes(null_text, lambda: null_text.extract(images, TEXTS))
    inversion, denoising = calls[:2], calls[2:]
    assert inversion == [3, 3]
    # per step: conditional pass (3), inner steps (3, then only the unfinished sample), guided pass
    assert denoising == [3, 3, 1, 1, 3] * 2


@pytest.mark.parametrize("mode", ["ddim", "null_text"])
def test_recording_happens_in_denoising_only(mode: str, request, images) -> None:
    extractor: SDExtractor = request.getfixturevalue(mode)
    store = AttentionStore(32)
    ids = [extractor.tokenize(t).input_ids for t in TEXTS[:2]]
    before = extractor.unet.attn_processors
    trace = extractor.trace(images[:2], ids, store=store)
    # one record per selected module per denoising step: none from inversion or optimisation
    expected = {name: extractor.sd.ddim_steps for name in extractor.capture_names}
    assert dict(store.calls_per_module) == expected
    assert trace.token_maps is not None and trace.token_maps.shape == (2, 77, 32, 32)
    assert extractor.unet.attn_processors == before


def test_null_text_optimisation_brings_guided_denoising_back_to_the_image(images) -> None:
    """Guided denoising (7.5) from the inverted latent drifts off the image; optimising the
    null embedding reconstructs it better than the same denoising with the plain one."""
    null_text = SDExtractor(small_null_text_config(null_text_early_stop=0.0), device="cpu")
    unoptimised = SDExtractor(
        small_null_text_config(null_text_early_stop=0.0, null_text_lr=1e-12), device="cpu"
    )
    ids = [null_text.tokenize(t).input_ids for t in TEXTS]
    plain = unoptimised.trace(images, ids, capture_maps=False)
    optimised = null_text.trace(images, ids, capture_maps=False)
    torch.testing.assert_close(plain.latents, optimised.latents)
    error_plain = ((plain.reconstruction - plain.latents) ** 2).mean(dim=(1, 2, 3))
    error_null = ((optimised.reconstruction - optimised.latents) ** 2).mean(dim=(1, 2, 3))
    assert bool((error_null < error_plain).all()), (error_null, error_plain)


def test_fp16_null_text_loss_is_scaled_and_unscaled_before_adam(images) -> None:
    """fp16 UNets get a loss scale (their backward would underflow); the scale is divided out
    before Adam, so the optimised embeddings match the unscaled run's."""
    assert SDExtractor(small_null_text_config(dtype="fp16"), device="cpu").null_text_loss_scale > 1
    extractor = SDExtractor(small_null_text_config(null_text_early_stop=0.0), device="cpu")
    assert extractor.null_text_loss_scale == 1.0
    ids = [extractor.tokenize(t).input_ids for t in TEXTS]
    plain = extractor.trace(images, ids, capture_maps=False)
    extractor.null_text_loss_scale = 2.0**14
    scaled = extractor.trace(images, ids, capture_maps=False)
    torch.testing.assert_close(scaled.reconstruction, plain.reconstruction)


def test_null_text_step_with_overflowed_gradients_is_skipped(images) -> None:
    """An inf/NaN gradient (an fp16 backward that overflowed) leaves the null embedding as it
    was, as torch's GradScaler skips such steps, instead of writing NaN into it."""
    extractor = SDExtractor(small_null_text_config(null_text_early_stop=0.0), device="cpu")
    extractor.null_text_loss_scale = math.inf
    ids = [extractor.tokenize(t).input_ids for t in TEXTS[:1]]
    latents = extractor._encode_images(images[:1])
    cond = extractor._encode_texts(ids)
    trajectory = extractor._invert(latents, cond)
    extractor.scheduler.set_timesteps(extractor.sd.ddim_steps)
    t = extractor.scheduler.timesteps[0]
    null = extractor._null_embedding.to(extractor.latent_dtype).clone()
    eps_cond = extractor._eps(trajectory[-1], t, cond)
    out = extractor._optimise_null(trajectory[-1], t, eps_cond, trajectory[-2], null, 0)
    torch.testing.assert_close(out, null, rtol=0, atol=0)


def test_capture_off_leaves_the_trajectory_unchanged(ddim: SDExtractor, images) -> None:
    ids = [ddim.tokenize(TEXTS[0]).input_ids]
    with_capture = ddim.trace(images[:1], ids)
    without = ddim.trace(images[:1], ids, capture_maps=False)
    assert without.token_maps is None
    torch.testing.assert_close(with_capture.reconstruction, without.reconstruction)


def test_text_without_words_in_the_window_gives_no_words(ddim: SDExtractor, images) -> None:
    (target,) = ddim.extract(images[:1], ["! " * 80 + "dog"])
    assert target.words == [] and target.maps.shape == (0, 32, 32) and target.words_cut == 1


def test_config_hash_tracks_what_changes_the_maps() -> None:
    base = sd_config()
    same = [base.model_copy(update=u) for u in ({"batch_size": 1}, {"channels_last": True},
                                                   {"compile": True})]
    different = [
        base.model_copy(update=u)
        for u in (
            {"inversion": "null_text"},
            {"ddim_steps": 4},
            {"attention_resolutions": [16]},
            {"image_size": 64},
            {"model_id": "CompVis/stable-diffusion-v1-4"},
            {"revision": "main"},
            {"seed": 1},
            {"inversion": "null_text", "guidance_scale": 3.0},
            {"dtype": "bf16"},
        )
    ]
    h = sd_config_hash(base, "cpu")
    assert all(sd_config_hash(c, "cpu") == h for c in same)
    assert len({sd_config_hash(c, "cpu") for c in different} | {h}) == len(different) + 1
    auto = base.model_copy(update={"dtype": "auto"})
    fp32, fp16 = (base.model_copy(update={"dtype": d}) for d in ("fp32", "fp16"))
    assert sd_config_hash(auto, "cpu") == sd_config_hash(fp32, "cpu")
    assert sd_config_hash(auto, "cuda") == sd_config_hash(fp16, "cuda")


def test_every_sd_dtype_resolves_to_a_torch_dtype() -> None:
    """`sd.settings` names the dtypes without torch; the extractor looks each one up."""
    assert set(CONCRETE_DTYPES) == set(TORCH_DTYPES)
    for dtype in ("auto", *CONCRETE_DTYPES):
        assert TORCH_DTYPES[resolve_dtype(dtype, "cuda")].is_floating_point
    with pytest.raises(ValueError, match="sd.dtype='int8'; allowed: auto, fp32, fp16, bf16, fp64"):
        resolve_dtype("int8", "cpu")


def test_bad_image_size_and_resolution_are_reported() -> None:
    with pytest.raises(ValueError, match="available sides"):
        SDExtractor(sd_config(attention_resolutions=[32]), device="cpu")
    with pytest.raises(ValueError, match="sd.image_size"):
        SDExtractor(sd_config(image_size=30), device="cpu")


@pytest.mark.parametrize("option", ["channels_last",
                                    pytest.param("compile", marks=pytest.mark.slow)])  # ~30 s
def test_the_speed_options_give_the_eager_maps_and_keep_recording(option, images,
                                                                   monkeypatch) -> None:
    """`sd.channels_last` and `sd.compile` change how the UNet runs, not what the capture
    records: the same calls per module and the maps of the eager path, in both modes.

    Compiled here with `aot_eager`: TorchDynamo traces every region and AOTAutograd builds
    its graphs as under inductor (graph breaks, recompiles and hooks behave the same), without
    inductor's C++ code generation, which takes three minutes on two cores; the GPU check
    (`bench/device_check.sh`) runs inductor and compares its maps."""
    if option == "compile":
        compile_module = torch.nn.Module.compile
        monkeypatch.setattr(torch.nn.Module, "compile",
                            lambda self, **kw: compile_module(self, backend="aot_eager", **kw))
    for cfg in (sd_config(dtype="fp32"), small_null_text_config(dtype="fp32")):
        eager, fast = SDExtractor(cfg), SDExtractor(cfg.model_copy(update={option: True}))
        if option == "compile":
            assert any(getattr(m, "_compiled_call_impl", None) for m in fast.unet.modules())
        ids = [fast.tokenize(t).input_ids for t in TEXTS[:2]]
        stores = [AttentionStore(cfg.output_size) for _ in range(2)]
        traces = [x.trace(images[:2], ids, store=s) for x, s in zip((eager, fast), stores)]
        assert stores[1].calls_per_module == stores[0].calls_per_module
        assert torch.allclose(traces[1].token_maps, traces[0].token_maps, atol=1e-4)
        assert fast.config_hash == eager.config_hash  # cached targets stay valid
