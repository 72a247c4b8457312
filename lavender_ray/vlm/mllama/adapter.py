"""Mllama / Llama-3.2-Vision: the cross-attention layers' text->image probabilities.

Only the cross-attention layers of the text model attend to the image; their keys are the vision
tokens, one block per tile (CLS + p*p patches), up to `max_num_tiles` tiles. Layers named in
`vlm.attention_layers` (default: all of `text_config.cross_attention_layers`) also compute eager
probabilities (softmax(Q K^T), the answer rows, beside their SDPA output; `capture.py`); every
other attention layer runs SDPA alone. Geometry (METHOD.md sections 3 and 3a): drop each tile's
CLS, put each tile's p x p patches on its place on the canvas given by the image's aspect-ratio
id, cut the canvas to the image's extent (the processor pads the rest) and resample it to s x s.
p = vision image_size / patch_size, from the config.

Shapes::

    b  batch   H  text heads   T  sequence   K  max_tiles * (1 + p*p) vision keys
    q  query rows laid out (T, or one pooled row per word)
    R, C  tile rows / columns of one image's canvas   s  map side
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import MllamaForConditionalGeneration, PretrainedConfig, PreTrainedModel

from lavender_ray.vlm.adapter import FRAME_SIZES, CapturingAdapter
from lavender_ray.vlm.base import KeyLayout
from lavender_ray.vlm.mllama.geometry import canvas_pixels, image_box, mllama_canvas, tile_grid
from lavender_ray.vlm.mllama.released import released_architecture
from lavender_ray.vlm.mllama.tiny import tiny_mllama


def _side(value: int | list[int] | tuple[int, int]) -> int:
    """A config size given as an int or a square (h, w) pair -> the int."""
    if isinstance(value, int):
        return value
    h, w = value
    if h != w:
        raise ValueError(f"non-square vision size {value} is not supported")
    return int(h)


class MllamaAdapter(CapturingAdapter):
    family = "mllama"
    model_class = MllamaForConditionalGeneration
    sequence_keys = ("input_ids", "attention_mask", "labels", "cross_attention_mask")
    build_tiny = staticmethod(tiny_mllama)

    def __init__(self, model: PreTrainedModel, processor, **kwargs) -> None:
        super().__init__(model, processor, **kwargs)
        vision = model.config.vision_config
        self.tile_size, self.patch_size = _side(vision.image_size), _side(vision.patch_size)
        self.patches_per_side = self.tile_size // self.patch_size
        self.supported_aspect_ratios = [list(r) for r in vision.supported_aspect_ratios]

    @classmethod
    def shallow_config(cls, config: PretrainedConfig, depth: int) -> PretrainedConfig:
        """`depth` self-attention and `depth` cross-attention text layers (alternating), `depth`
        local and `depth` global vision layers, the same number of intermediate vision outputs."""
        shallow = copy.deepcopy(config)
        text, vision = shallow.text_config, shallow.vision_config
        text.num_hidden_layers = 2 * depth
        text.cross_attention_layers = list(range(1, 2 * depth, 2))
        vision.num_hidden_layers = vision.num_global_layers = depth
        vision.intermediate_layers_indices = [
            i % depth for i in range(len(vision.intermediate_layers_indices))]
        return shallow

    @classmethod
    def released_architecture(cls, model_id: str) -> tuple[PretrainedConfig, Any] | None:
        return released_architecture(model_id)

    @staticmethod
    def attention_modules(model: PreTrainedModel) -> dict[int, nn.Module]:
        text = model.model.language_model
        return {i: text.layers[i].cross_attn for i in text.config.cross_attention_layers}

    def key_layout(self, inputs: dict[str, torch.Tensor], sample: int) -> KeyLayout:
        """Keys of the image's tiles on their canvas `[R*p, C*p]` (CLS and padding tiles
        dropped); the box is the fitted image, the processor's padding left out."""
        rows, cols = self._tiling(inputs, sample)
        p = self.patches_per_side
        keys = torch.arange(inputs["pixel_values"].shape[2] * (1 + p * p))  # [K]
        height, width = (int(v) for v in inputs[FRAME_SIZES][sample])
        box = image_box(height, width, rows, cols, self.tile_size, self.patch_size)
        return KeyLayout(mllama_canvas(keys, p, rows, cols), box)  # [K] -> [R*p, C*p]

    def patch_pixels(self, inputs: dict[str, torch.Tensor], sample: int) -> torch.Tensor:
        rows, cols = self._tiling(inputs, sample)
        tiles = inputs["pixel_values"][sample, 0]  # [max_tiles, 3, T, T]
        return canvas_pixels(tiles, rows, cols, self.patch_size)  # -> [3, R*p, C*p]

    def _tiling(self, inputs: dict[str, torch.Tensor], sample: int) -> tuple[int, int]:
        """(tile rows, tile columns) of sample `sample`'s canvas, from its aspect-ratio id."""
        ratio_ids = inputs["aspect_ratio_ids"]  # [b, images]
        if ratio_ids.shape[1] != 1:
            raise ValueError(f"one image per sample is supported, got {ratio_ids.shape[1]}")
        return tile_grid(int(ratio_ids[sample, 0]), self.supported_aspect_ratios)
