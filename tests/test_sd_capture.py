"""The cross-attention capture on the tiny SD UNet: parity, selection, probabilities, restore."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from lavender_ray.sd.capture import (
    AttentionStore,
    CaptureProcessor,
    attn2_map_sides,
    capture,
    select_modules,
)
from lavender_ray.sd.tiny import build_offline_sd

LATENT_SIDE = 16  # tiny/sd at image_size 32 (VAE factor 2)


class RawStore(AttentionStore):
    """Also keeps every recorded probability tensor, to inspect them."""

    def __init__(self, output_size: int) -> None:
        super().__init__(output_size)
        self.raw: list[tuple[str, torch.Tensor]] = []

    def add(self, name: str, probs: torch.Tensor) -> None:
        self.raw.append((name, probs[self.keep].clone()))
        super().add(name, probs)


@pytest.fixture(scope="module")
def unet():
    return build_offline_sd("tiny/sd", seed=0).unet


def unet_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 4, LATENT_SIDE, LATENT_SIDE, generator=gen)
    context = torch.randn(batch, 77, 32, generator=gen)
    return latents, torch.tensor(500), context


def query_lengths(unet) -> dict[str, int]:
    """Processor name -> query length of every attn2 call, observed with forward pre-hooks."""
    seen: dict[str, int] = {}

    def hook_for(key: str):
        def hook(_module, args, kwargs) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[key] = hidden.shape[1]  # [b, q, c]

        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(f"{name}.processor"), with_kwargs=True)
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and name.endswith("attn2")
    ]
    latents, t, context = unet_inputs()
    with torch.no_grad():
        unet(latents, t, encoder_hidden_states=context)
    for handle in handles:
        handle.remove()
    return seen


def test_map_sides_match_the_observed_query_lengths(unet) -> None:
    sides = attn2_map_sides(unet, LATENT_SIDE)
    observed = query_lengths(unet)
    assert sides == {name: int(q**0.5) for name, q in observed.items()}
    assert sorted(set(sides.values())) == [8, 16]


def test_parity_outputs_unchanged_with_capture_recording(unet) -> None:
    latents, t, context = unet_inputs()
    names = select_modules(attn2_map_sides(unet, LATENT_SIDE), [8, 16])
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=context).sample
        store = AttentionStore(32)
        with capture(unet, store, names):
            idle = unet(latents, t, encoder_hidden_states=context).sample
            with store.recording():
                captured = unet(latents, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(captured, plain)
    torch.testing.assert_close(idle, plain)
    assert store.n_recorded == len(names)


def test_only_selected_attn2_modules_are_captured_and_probs_sum_to_one(unet) -> None:
    sides = attn2_map_sides(unet, LATENT_SIDE)
    names = select_modules(sides, [16])
    expected = {n for n, q in query_lengths(unet).items() if q == 16 * 16}
    assert set(names) == expected and len(expected) == 3
    latents, t, context = unet_inputs(batch=2)
    store = RawStore(32)
    with torch.no_grad(), capture(unet, store, names), store.recording(keep=slice(1, 2)):
        unet(latents, t, encoder_hidden_states=context)
    assert set(store.calls_per_module) == expected
    assert all(count == 1 for count in store.calls_per_module.values())
    for _, probs in store.raw:
        assert probs.shape == (1, unet.config.attention_head_dim, 16 * 16, 77)  # kept row only
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert store.token_maps().shape == (1, 77, 32, 32)


def test_other_processors_are_kept_and_all_are_restored(unet) -> None:
    before = unet.attn_processors
    names = select_modules(attn2_map_sides(unet, LATENT_SIDE), [8])
    with capture(unet, AttentionStore(32), names):
        during = unet.attn_processors
        for name, proc in during.items():
            if name in names:
                assert isinstance(proc, CaptureProcessor) and proc.fallback is before[name]
            else:
                assert proc is before[name]
                assert isinstance(proc, AttnProcessor2_0)
    assert unet.attn_processors == before


def test_restored_even_when_the_body_raises(unet) -> None:
    before = unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"):
        with capture(unet, AttentionStore(32), list(before)[:1]):
            raise RuntimeError("boom")
    assert unet.attn_processors == before


def test_unavailable_resolution_is_an_error_listing_the_available_ones(unet) -> None:
    with pytest.raises(ValueError, match=r"available sides: \[8, 16\]"):
        select_modules(attn2_map_sides(unet, LATENT_SIDE), [16, 32])


def test_empty_store_says_nothing_was_captured() -> None:
    with pytest.raises(RuntimeError, match="no cross-attention was captured"):
        AttentionStore(32).token_maps()


def test_sd14_captures_the_ten_attn2_modules_at_16_and_32_at_512px() -> None:
    """SD-1.4's UNet (its config, on the meta device: no weights) at 512 px: a 64 latent, attn2
    maps of 64, 32, 16 and 8; [16, 32] selects the 2 + 2 down-block and 3 + 3 up-block ones."""
    from lavender_ray.sd.tiny import SD14_UNET

    with torch.device("meta"):
        sd14 = UNet2DConditionModel(**SD14_UNET)
    sides = attn2_map_sides(sd14, 64)
    assert sorted(set(sides.values())) == [8, 16, 32, 64]
    names = select_modules(sides, [16, 32])
    blocks = sorted({".".join(n.split(".")[:2]) for n in names})
    assert blocks == ["down_blocks.1", "down_blocks.2", "up_blocks.1", "up_blocks.2"]
    assert len(names) == 10 and all(n.endswith("attn2.processor") for n in names)
