"""Qwen2-VL: self-attention rows = text positions, columns = the merged image tokens.

The processor expands `<|image_pad|>` into `t*h*w / merge^2` tokens for an image of
`image_grid_thw = (t, h, w)` patches; after the vision tower's spatial merge they are row-major on
an `(h / merge) x (w / merge)` grid, which may be non-square. The processor resizes the whole
image onto that grid (no crop, no padding), so the grid is the frame stretched and is resampled
to s x s as it is (METHOD.md section 3a).
Every decoder self-attention layer can be captured (`vlm.attention_layers`, default all).

Shapes::

    b  batch   H  heads   T  sequence (queries and keys)   n  image tokens of one sample
    q  query rows laid out (T, or one pooled row per word)
    gh, gw  merged token grid   s  map side
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2VLForConditionalGeneration,
)

from lavender_ray.vlm.adapter import SelfAttentionAdapter
from lavender_ray.vlm.base import KeyLayout
from lavender_ray.vlm.geometry import token_grid
from lavender_ray.vlm.qwen2_vl.geometry import merged_grid, merged_pixels
from lavender_ray.vlm.qwen2_vl.processor import Qwen2VLImageProcessorOnly
from lavender_ray.vlm.qwen2_vl.tiny import tiny_qwen2_vl


class Qwen2VLAdapter(SelfAttentionAdapter):
    family = "qwen2_vl"
    model_class = Qwen2VLForConditionalGeneration
    sequence_keys = ("input_ids", "attention_mask", "labels", "mm_token_type_ids")
    build_tiny = staticmethod(tiny_qwen2_vl)

    def __init__(self, model: PreTrainedModel, processor, **kwargs) -> None:
        super().__init__(model, processor, **kwargs)
        self.merge_size = int(model.config.vision_config.spatial_merge_size)

    @classmethod
    def load_processor(cls, model_id: str, **kwargs: Any) -> Any:
        """AutoProcessor; without torchvision it yields a bare tokenizer, then the image-only
        processor is assembled from the same files (with a warning)."""
        processor = AutoProcessor.from_pretrained(model_id, **kwargs)
        if isinstance(processor, ProcessorMixin):
            return processor
        warnings.warn(
            f"AutoProcessor returned a {type(processor).__name__} for {model_id!r} (the Qwen2-VL "
            "video processor needs torchvision); using an image-only Qwen2-VL processor",
            stacklevel=2,
        )
        tokenizer = AutoTokenizer.from_pretrained(model_id, **kwargs)
        image_processor = AutoImageProcessor.from_pretrained(model_id, **kwargs)
        return Qwen2VLImageProcessorOnly(
            image_processor, tokenizer, chat_template=tokenizer.chat_template
        )

    def key_layout(self, inputs: dict[str, torch.Tensor], sample: int) -> KeyLayout:
        grid_h, grid_w = self._merged_grid(inputs, sample)
        positions = self.image_key_positions(inputs["input_ids"], sample)  # [n]
        keys = token_grid(positions, grid_h, grid_w)  # [gh*gw] -> [gh, gw]
        return KeyLayout(keys, (0.0, 0.0, float(grid_h), float(grid_w)))

    def patch_pixels(self, inputs: dict[str, torch.Tensor], sample: int) -> torch.Tensor:
        grids = inputs["image_grid_thw"]  # [images, 3]
        counts = [int(t * h * w) for t, h, w in grids.tolist()]
        start = sum(counts[:sample])
        patches = inputs["pixel_values"][start : start + counts[sample]]  # [t*h*w, C*t*p*p]
        _, grid_h, grid_w = (int(v) for v in grids[sample])
        return merged_pixels(patches, grid_h, grid_w, self.merge_size)  # -> [3, gh/m, gw/m]

    def _merged_grid(self, inputs: dict[str, torch.Tensor], sample: int) -> tuple[int, int]:
        grids = inputs["image_grid_thw"]  # [images, 3]; one image per sample, in batch order
        samples = inputs["input_ids"].shape[0]
        if grids.shape[0] != samples:
            raise ValueError(
                f"one image per sample is supported: {grids.shape[0]} images, {samples} samples"
            )
        return merged_grid(grids[sample].tolist(), self.merge_size)
