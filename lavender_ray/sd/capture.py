"""Capture of the UNet's cross-attention probabilities through diffusers attention processors.

`CaptureProcessor` subclasses diffusers' explicit `AttnProcessor` (the one that materialises
`softmax(Q K^T / sqrt(d))` via `attn.get_attention_scores`). It is installed with
`unet.set_attn_processor` on the `attn2` (cross-attention) modules of the selected map sides only;
every other module keeps its processor (SDPA). While the store is not recording, the capture
processor delegates to the module's original processor, so inversion and null-text optimisation
run at full speed and record nothing.

Shapes::

    probs from get_attention_scores   [b * h, q, k]   (diffusers' head_to_batch_dim layout)
    handed to the store               [b, h, q, k]
    accumulated by the store          [b, k, side, side] per side, running sums (`aggregate`)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor

from lavender_ray.sd.aggregate import head_mean_maps, mean_of_recorded

ATTN2_NAME = re.compile(r"^(?:(down_blocks|up_blocks)\.(\d+)|mid_block)\..*\.attn2\.processor$")


class AttentionStore:
    """Running sums of head-mean maps per map side over the recorded (layer, step) calls of
    one batch; `token_maps()` gives their mean per-token maps [b, k, S, S].

    Records only inside `recording()`; `keep` selects the rows of the UNet batch that belong to
    the samples (e.g. the conditional half under classifier-free guidance)."""

    def __init__(self, output_size: int) -> None:
        self.output_size = output_size
        self.keep: slice | None = None
        self.sums_by_side: dict[int, torch.Tensor] = {}
        self.n_recorded = 0
        self.calls_per_module: Counter[str] = Counter()

    @property
    def is_recording(self) -> bool:
        return self.keep is not None

    @contextmanager
    def recording(self, keep: slice = slice(None)) -> Iterator[None]:
        """Record the calls made inside the block, keeping batch rows `keep`."""
        self.keep = keep
        try:
            yield
        finally:
            self.keep = None

    def add(self, name: str, probs: torch.Tensor) -> None:
        """One call of module `name`: probs [b_unet, h, q, k] (all rows of the UNet batch)."""
        assert self.keep is not None, "add() outside recording()"
        maps = head_mean_maps(probs[self.keep])  # [b, k, side, side]
        side = maps.shape[-1]
        previous = self.sums_by_side.get(side)
        self.sums_by_side[side] = maps if previous is None else previous + maps
        self.n_recorded += 1
        self.calls_per_module[name] += 1

    def token_maps(self) -> torch.Tensor:
        """Mean per-token maps [b, k, S, S] over everything recorded (float32)."""
        if not self.sums_by_side:
            raise RuntimeError(
                "no cross-attention was captured: the capture processors were not called while "
                "recording (was another attention processor installed over them?)"
            )
        return mean_of_recorded(self.sums_by_side, self.n_recorded, self.output_size)


class CaptureProcessor(AttnProcessor):
    """diffusers' explicit attention processor that also hands its probabilities to a store.

    Outside `store.recording()` it calls `fallback` (the module's original processor)."""

    def __init__(self, name: str, store: AttentionStore, fallback: object) -> None:
        super().__init__()
        self.name = name
        self.store = store
        self.fallback = fallback

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        if not self.store.is_recording:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return self._explicit(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _explicit(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        """`AttnProcessor.__call__` with the probabilities handed to the store."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            # [b, c, h, w] -> [b, h*w, c]
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        # [b, n, h*d] -> [b*h, n, d]
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))

        probs = attn.get_attention_scores(query, key, attention_mask)  # [b*h, q, k]
        b_heads, q, k = probs.shape
        self.store.add(self.name, probs.view(b_heads // attn.heads, attn.heads, q, k))

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))  # [b, q, h*d]
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout
        if input_ndim == 4:
            # [b, h*w, c] -> [b, c, h, w]
            hidden_states = hidden_states.transpose(-1, -2)
            hidden_states = hidden_states.reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def attn2_map_sides(unet: UNet2DConditionModel, latent_side: int) -> dict[str, int]:
    """Processor name of every `attn2` module -> the side of its (square) attention map.

    Each down block but the last halves the resolution (diffusers' UNet2DConditionModel), the
    mid block runs at the coarsest side, up block j at `latent_side / 2**(n_blocks - 1 - j)`."""
    n_blocks = len(unet.config.block_out_channels)
    coarsest = 2 ** (n_blocks - 1)
    if latent_side % coarsest:
        raise ValueError(
            f"latent side {latent_side} is not divisible by {coarsest}: the UNet halves it "
            f"{n_blocks - 1} times; choose sd.image_size as a multiple of "
            f"{coarsest} * the VAE's downsampling factor"
        )
    sides: dict[str, int] = {}
    for name in unet.attn_processors:
        match = ATTN2_NAME.match(name)
        if match is None:
            continue
        kind, index = match.group(1), match.group(2)
        if kind == "down_blocks":
            sides[name] = latent_side // 2 ** int(index)
        elif kind == "up_blocks":
            sides[name] = latent_side // 2 ** (n_blocks - 1 - int(index))
        else:
            sides[name] = latent_side // coarsest
    return sides


def select_modules(sides: dict[str, int], resolutions: list[int]) -> list[str]:
    """Names of the `attn2` processors whose map side is in `resolutions` (all must exist)."""
    available = sorted(set(sides.values()))
    missing = sorted(set(resolutions) - set(available))
    if missing:
        raise ValueError(
            f"sd.attention_resolutions {resolutions}: no cross-attention layer at map side(s) "
            f"{missing} for this UNet and sd.image_size; available sides: {available}"
        )
    return [name for name, side in sides.items() if side in resolutions]


@contextmanager
def capture(unet: UNet2DConditionModel, store: AttentionStore, names: list[str]) -> Iterator[None]:
    """Install `CaptureProcessor`s on `names` (other modules keep theirs); restore on exit."""
    original = unet.attn_processors
    unknown = sorted(set(names) - set(original))
    if unknown:
        raise ValueError(f"no attention processor named {unknown}; known: {sorted(original)}")
    installed = {
        name: CaptureProcessor(name, store, proc) if name in names else proc
        for name, proc in original.items()
    }
    unet.set_attn_processor(installed)
    try:
        yield
    finally:
        unet.set_attn_processor(dict(original))
