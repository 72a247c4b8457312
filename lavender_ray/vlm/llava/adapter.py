"""LLaVA-style VLMs: self-attention rows = text positions, columns = the image tokens.

The processor expands `<image>` into one token per vision feature; those positions are the keys
whose probabilities form the map. They are laid out row-major on the vision tower's patch grid
(image_size / patch_size per side, 24x24 for LLaVA-1.5; a leading CLS token under the "full"
feature strategy is dropped), then resized to s x s. Every decoder self-attention layer can be
captured (`vlm.attention_layers`, default all).

Shapes::

    b  batch   H  heads   T  sequence (queries and keys)   n  image tokens of one sample
    q  query rows laid out (T, or one pooled row per word)
    g  patches per side   s  map side
"""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration, PreTrainedModel

from lavender_ray.tensors import resize_maps
from lavender_ray.vlm.adapter import SelfAttentionAdapter
from lavender_ray.vlm.geometry import token_grid
from lavender_ray.vlm.llava.geometry import llava_grid
from lavender_ray.vlm.llava.tiny import tiny_llava


class LlavaAdapter(SelfAttentionAdapter):
    family = "llava"
    model_class = LlavaForConditionalGeneration
    build_tiny = staticmethod(tiny_llava)

    def __init__(self, model: PreTrainedModel, processor, **kwargs) -> None:
        super().__init__(model, processor, **kwargs)
        vision = model.config.vision_config
        self.vision_image_size = int(vision.image_size)
        self.vision_patch_size = int(vision.patch_size)

    def sample_maps(
        self, probs: torch.Tensor, inputs: dict[str, torch.Tensor], sample: int, size: int
    ) -> torch.Tensor:
        positions = self.image_key_positions(inputs["input_ids"], sample)  # [n]
        grid_h, grid_w, skip = llava_grid(
            self.vision_image_size, self.vision_patch_size, len(positions)
        )
        columns = probs[..., positions[skip:]]  # [H, q, T] -> [H, q, g*g]
        grid = token_grid(columns, grid_h, grid_w)  # [H, q, g*g] -> [H, q, g, g]
        return resize_maps(grid, size)  # [H, q, g, g] -> [H, q, s, s]
