"""Mllama / Llama-3.2-Vision: the cross-attention layers' text->image probabilities.

Only the cross-attention layers of the text model attend to the image; their keys are the vision
tokens, one block per tile (CLS + p*p patches), up to `max_num_tiles` tiles. Layers named in
`vlm.attention_layers` (default: all of `text_config.cross_attention_layers`) also compute eager
probabilities (softmax(Q K^T), the answer rows, beside their SDPA output; `capture.py`); every
other attention layer runs SDPA alone. Geometry (METHOD.md section 3): drop
each tile's CLS, put each tile's p x p patches on its place on the canvas given by the image's
aspect-ratio id, resize the canvas to s x s. p = vision image_size / patch_size, from the config.

Shapes::

    b  batch   H  text heads   T  sequence   K  max_tiles * (1 + p*p) vision keys
    q  query rows laid out (T, or one pooled row per word)
    R, C  tile rows / columns of one image's canvas   s  map side
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MllamaForConditionalGeneration, PreTrainedModel

from lavender_ray.tensors import resize_maps
from lavender_ray.vlm.adapter import CapturingAdapter
from lavender_ray.vlm.mllama.geometry import mllama_canvas, tile_grid
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
        self.patches_per_side = _side(vision.image_size) // _side(vision.patch_size)
        self.supported_aspect_ratios = [list(r) for r in vision.supported_aspect_ratios]

    @staticmethod
    def attention_modules(model: PreTrainedModel) -> dict[int, nn.Module]:
        text = model.model.language_model
        return {i: text.layers[i].cross_attn for i in text.config.cross_attention_layers}

    def sample_maps(
        self, probs: torch.Tensor, inputs: dict[str, torch.Tensor], sample: int, size: int
    ) -> torch.Tensor:
        ratio_ids = inputs["aspect_ratio_ids"]  # [b, images]
        if ratio_ids.shape[1] != 1:
            raise ValueError(f"one image per sample is supported, got {ratio_ids.shape[1]}")
        rows, cols = tile_grid(int(ratio_ids[sample, 0]), self.supported_aspect_ratios)
        canvas = mllama_canvas(probs, self.patches_per_side, rows, cols)  # -> [H, q, R*p, C*p]
        return resize_maps(canvas, size)  # [H, q, R*p, C*p] -> [H, q, s, s]
