"""LLaVA-style VLMs: self-attention rows = text positions, columns = the image tokens.

The processor expands `<image>` into one token per vision feature; those positions are the keys
whose probabilities form the map. They are laid out row-major on the vision tower's patch grid
(image_size / patch_size per side, 24x24 for LLaVA-1.5; a leading CLS token under the "full"
feature strategy is dropped); the image, padded to a square before the processor, is cut out of
that grid and resampled to s x s (METHOD.md section 3a). Every decoder self-attention layer can be
captured (`vlm.attention_layers`, default all).

Shapes::

    b  batch   H  heads   T  sequence (queries and keys)   n  image tokens of one sample
    q  query rows laid out (T, or one pooled row per word)
    g  patches per side   s  map side
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LlavaForConditionalGeneration, PreTrainedModel

from lavender_ray.vlm.adapter import FRAME_SIZES, SelfAttentionAdapter
from lavender_ray.vlm.base import KeyLayout
from lavender_ray.vlm.geometry import token_grid
from lavender_ray.vlm.llava.geometry import (
    check_keeps_the_square,
    llava_grid,
    mean_colour,
    pad_to_square,
    square_box,
)
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
        check_keeps_the_square(processor.image_processor)
        self.pad_colour = mean_colour(processor.image_processor)

    def processor_images(self, images: list[Image.Image]) -> list[Any]:
        """Each image padded to a square (see `geometry`), so the processor's crop keeps it."""
        return [pad_to_square(image, self.pad_colour) for image in images]

    def key_layout(self, inputs: dict[str, torch.Tensor], sample: int) -> KeyLayout:
        positions = self.image_key_positions(inputs["input_ids"], sample)  # [n]
        grid_h, grid_w, skip = llava_grid(
            self.vision_image_size, self.vision_patch_size, len(positions)
        )
        keys = token_grid(positions[skip:], grid_h, grid_w)  # [g*g] -> [g, g]
        height, width = (int(v) for v in inputs[FRAME_SIZES][sample])
        return KeyLayout(keys, square_box(height, width, grid_h))

    def patch_pixels(self, inputs: dict[str, torch.Tensor], sample: int) -> torch.Tensor:
        pixels = inputs["pixel_values"][sample].float()  # [3, S, S]
        return F.avg_pool2d(pixels[None], self.vision_patch_size)[0]  # -> [3, g, g]
