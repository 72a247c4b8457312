"""The contract every VLM family adapter meets (one file per family in this folder).

Shapes::

    b  batch            T  text (sequence) length     L  captured attention layers
    H  heads per layer  s  map side (config: sd.output_size, 32)

An adapter owns the HF model (optionally wrapped by PEFT), its processor and tokenizer, and knows
where the family's text->image attention lives and how image keys map to a 2-D grid. Nothing
outside `lavender_ray.vlm` names a model family: callers go through `build_adapter` and this
Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

ImageInput = Image.Image | bytes


@dataclass
class VLMForwardOutput:
    logits: torch.Tensor  # [b, T, vocab]
    lm_loss: torch.Tensor  # scalar: next-token CE over label positions (labels != -100)
    attention: torch.Tensor  # [b, L, H, T, s, s]: row t = attention of query position t over
    #                          the image, laid out on the image's 2-D grid, resized to s x s


@runtime_checkable
class VLMAdapter(Protocol):
    family: str
    model: torch.nn.Module  # the HF model (PEFT-wrapped once LoRA is applied)
    processor: Any
    tokenizer: Any
    layers: list[int]  # decoder-layer indices of the captured attention layers, in map order
    num_layers: int  # L: captured layers
    num_heads: int  # H: heads of each captured layer
    map_size: int  # s used when `forward` is not given one

    def build_inputs(
        self, images: list[ImageInput], conversations: list[list[dict[str, str]]]
    ) -> dict[str, torch.Tensor]:
        """Chat-templated, right-padded batch with `labels` (-100 on everything but assistant
        tokens); one image per conversation, placed in its first user turn."""
        ...

    def forward(
        self, inputs: dict[str, torch.Tensor], map_size: int | None = None
    ) -> VLMForwardOutput:
        """One forward pass returning logits, the LM loss and the captured attention maps.

        The maps are returned, not stored: nothing survives between calls, and gradients flow
        from `attention` back into the captured layers' query/key projections."""
        ...
