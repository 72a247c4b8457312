"""`CapturingAdapter`: what every family adapter shares (inputs, capture, forward).

A family subclass says where its text->image attention modules are (`attention_modules`) and how
one sample's probabilities become maps on the image grid (`sample_maps`); everything else is here:
chat-templated inputs with assistant-only labels (`chat.py`), per-layer capture through the
CAPTURE_ATTENTION attention function (`capture.py`), and the forward that returns the maps.
`SelfAttentionAdapter` adds what the self-attention families (LLaVA, Qwen2-VL) share.

Shapes::

    b  batch   T  sequence length   K  keys of one attention layer   H  heads
    L  captured layers   s  map side
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from torch import nn
from transformers import AutoProcessor, PreTrainedModel

from lavender_ray.vlm.base import CapturedAttention, ImageInput, VLMForwardOutput
from lavender_ray.vlm.capture import CAPTURE_ATTENTION, AttentionRecorder
from lavender_ray.vlm.chat import (
    IGNORE_INDEX,
    answer_flags,
    assistant_spans,
    template_messages,
    transfer_labels,
)


def select_layers(requested: list[int] | None, available: list[int]) -> list[int]:
    """`vlm.attention_layers` (None = all) checked against the family's capturable layers."""
    if requested is None:
        return list(available)
    if not requested:
        raise ValueError("vlm.attention_layers=[] selects no layer; use null for all layers")
    unknown = [i for i in requested if i not in available]
    if unknown:
        raise ValueError(
            f"vlm.attention_layers={requested}: {unknown} are not text->image attention layers of "
            f"this model; allowed: {available}"
        )
    if len(set(requested)) != len(requested):
        raise ValueError(f"vlm.attention_layers={requested} names a layer twice")
    return list(requested)


def answer_rows(labels: torch.Tensor) -> torch.Tensor:
    """Query rows that predict an answer token in any sample: `t - 1` for every position `t`
    with `labels[:, t] != -100` (HF labels are unshifted). labels `[b, T]` -> sorted `[R]`."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def to_pil(image: ImageInput) -> Image.Image:
    """A PIL image or encoded image bytes -> an RGB PIL image."""
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    if not isinstance(image, Image.Image):
        raise TypeError(f"images must be PIL images or encoded bytes, got {type(image).__name__}")
    return image.convert("RGB")


class CapturingAdapter(ABC):
    """Base of the family adapters (see `base.VLMAdapter` for the contract).

    Subclasses set `family`, `model_class`, `build_tiny` (the family's offline tiny model:
    `(seed, text_width) -> (model, processor)`), and implement `attention_modules` and
    `sample_maps`; `sequence_keys` lists the processor outputs that have the sequence on dim 1.
    """

    family: ClassVar[str]
    model_class: ClassVar[type[PreTrainedModel]]
    build_tiny: ClassVar[Callable[..., tuple[PreTrainedModel, Any]]]
    sequence_keys: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "labels")

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any,
        *,
        attention_layers: list[int] | None = None,
        map_size: int = 32,
        max_length: int = 512,
        model_id: str | None = None,
    ) -> None:
        self.model_id = model_id or model.config.name_or_path
        self.base_model = model
        self.model: nn.Module = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.map_size = map_size
        self.max_length = max_length
        self.image_token_id = int(model.config.image_token_id)
        modules = self.attention_modules(model)
        self.layers = select_layers(attention_layers, sorted(modules))
        self.num_layers = len(self.layers)
        self.num_heads = int(model.config.get_text_config().num_attention_heads)
        self.recorder = AttentionRecorder()
        for layer in self.layers:
            self.recorder.watch(modules[layer], layer)
        model.set_attn_implementation({"text_config": CAPTURE_ATTENTION})

    # ------------------------------------------------------------------ family hooks
    @classmethod
    def load_processor(cls, model_id: str, **kwargs: Any) -> Any:
        """The processor of a real checkpoint (`kwargs`: revision, trust_remote_code)."""
        return AutoProcessor.from_pretrained(model_id, **kwargs)

    @staticmethod
    @abstractmethod
    def attention_modules(model: PreTrainedModel) -> dict[int, nn.Module]:
        """Decoder-layer index -> the attention module whose probabilities are text->image."""

    @abstractmethod
    def sample_maps(
        self, probs: torch.Tensor, inputs: dict[str, torch.Tensor], sample: int, size: int
    ) -> torch.Tensor:
        """Sample `sample`'s probabilities over its layer's keys `[H, q, K]` -> maps on its
        image `[H, q, s, s]` (q: any number of query rows, e.g. one pooled row per word)."""

    def processor_images(self, images: list[Image.Image]) -> list[Any]:
        """Images in the nesting the family's processor expects (one image per sample)."""
        return [[image] for image in images]

    # ------------------------------------------------------------------ inputs
    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The family's chat template applied to HF-style messages (text, not tokens)."""
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def build_inputs(
        self, images: list[ImageInput], conversations: list[list[dict[str, str]]]
    ) -> dict[str, torch.Tensor]:
        if len(images) != len(conversations):
            raise ValueError(f"{len(images)} images for {len(conversations)} conversations")
        texts, text_ids, flags = [], [], []
        for conversation in conversations:
            text, spans = assistant_spans(self.render, template_messages(conversation))
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            texts.append(text)
            text_ids.append(encoded["input_ids"])
            flags.append(answer_flags(encoded["offset_mapping"], spans))
        batch = self.processor(
            text=texts,
            images=self.processor_images([to_pil(image) for image in images]),
            padding=True,
            padding_side="right",
            add_special_tokens=False,
            return_tensors="pt",
        )
        inputs = dict(batch)
        inputs["labels"] = self._labels(
            inputs["input_ids"], inputs["attention_mask"], text_ids, flags
        )
        return self._truncate(inputs)

    def _labels(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        text_ids: list[list[int]],
        flags: list[list[bool]],
    ) -> torch.Tensor:
        labels = torch.full_like(input_ids, IGNORE_INDEX)  # [b, T]
        for row in range(input_ids.shape[0]):
            length = int(attention_mask[row].sum())
            if not bool(attention_mask[row, :length].all()):
                raise ValueError("build_inputs needs right padding; the tokenizer padded left")
            ids = input_ids[row, :length].tolist()
            row_labels = transfer_labels(ids, text_ids[row], flags[row], self.image_token_id)
            labels[row, :length] = torch.tensor(row_labels, dtype=labels.dtype)
        return labels

    def _truncate(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cut every sequence tensor to `max_length`; an image cut off is an error."""
        length = inputs["input_ids"].shape[1]
        if length <= self.max_length:
            return inputs
        before = (inputs["input_ids"] == self.image_token_id).sum(dim=1)  # [b]
        keep = self.max_length
        cut = {k: v[:, :keep] if k in self.sequence_keys else v for k, v in inputs.items()}
        after = (cut["input_ids"] == self.image_token_id).sum(dim=1)  # [b]
        lost = (before != after).nonzero().flatten().tolist()
        if lost:
            raise ValueError(
                f"samples {lost}: vlm.max_length={self.max_length} cuts into the image tokens "
                f"(sequence length {length}); raise vlm.max_length or shorten the prompt"
            )
        return cut

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        map_size: int | None = None,
        rows: Literal["answer", "all"] = "answer",
    ) -> VLMForwardOutput:
        if "labels" not in inputs:
            raise ValueError("forward needs 'labels' in the inputs (build them with build_inputs)")
        if rows not in ("answer", "all"):
            raise ValueError(f"rows={rows!r} is not one of 'answer', 'all'")
        size = map_size or self.map_size
        length = inputs["input_ids"].shape[1]
        positions = answer_rows(inputs["labels"]) if rows == "answer" else None
        with self.recorder.recording(positions) as records:
            output = self.model(**inputs, use_cache=False)
        missing = [layer for layer in self.layers if layer not in records]
        if missing:
            raise RuntimeError(
                f"no attention recorded for layers {missing}; every sample needs an image "
                "(a forward without pixel values skips cross-attention)"
            )
        captured = CapturedAttention(
            [records[layer] for layer in self.layers],
            lambda probs, sample: self.sample_maps(probs, inputs, sample, size),
            size,
            length,
            None if positions is None else positions.tolist(),
        )
        return VLMForwardOutput(logits=output.logits, lm_loss=output.loss, captured=captured)


class SelfAttentionAdapter(CapturingAdapter):
    """Families whose text attends to the image through decoder self-attention (LLaVA,
    Qwen2-VL): every decoder layer's `self_attn` can be captured, images go to the processor as
    a flat list, and an image's keys are the positions of its expanded image tokens."""

    @staticmethod
    def attention_modules(model: PreTrainedModel) -> dict[int, nn.Module]:
        layers = model.model.language_model.layers
        return {i: layer.self_attn for i, layer in enumerate(layers)}

    def processor_images(self, images: list[Image.Image]) -> list[Any]:
        return list(images)

    def image_key_positions(self, input_ids: torch.Tensor, row: int) -> torch.Tensor:
        """Positions of the image tokens of sample `row`: the key columns of its map."""
        return (input_ids[row] == self.image_token_id).nonzero().flatten()  # [n_image_tokens]
