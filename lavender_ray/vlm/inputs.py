"""`VLMInputs`: a family's chat-templated model inputs with assistant-only labels, built from its
processor alone (no model weights).

The adapter's `build_inputs` is `VLMInputs.build_inputs`, and the pipeline's check stage
(`lavender_ray.pipeline.vlm_check`) runs the same steps on every record before training, so a
record the check passes is one the trainer's collate can take. The steps, each callable on its
own so the check can tell their failures apart:

    text = inputs.encode_text(conversation)   # chat template, answer spans, answer flags per token
    batch = inputs.process([image], [text])   # the processor: image placeholders expanded, padded
    batch["labels"] = inputs.labels(batch, [text])  # the flags moved onto the processor's ids
    batch = inputs.truncate(batch)            # cut to max_length; cutting an image is an error

How labels are placed: `chat.py`. Shapes::

    b  batch   T  sequence length
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from lavender_ray.vlm.base import ImageInput
from lavender_ray.vlm.chat import (
    IGNORE_INDEX,
    answer_flags,
    assistant_spans,
    template_messages,
    transfer_labels,
)

FRAME_SIZES = "frame_sizes"  # [b, 2]: each original image's (height, width), for the layout
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")


def to_pil(image: ImageInput) -> Image.Image:
    """A PIL image or encoded image bytes -> an RGB PIL image."""
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    if not isinstance(image, Image.Image):
        raise TypeError(f"images must be PIL images or encoded bytes, got {type(image).__name__}")
    return image.convert("RGB")


@dataclass(frozen=True)
class EncodedText:
    """One conversation through the chat template: the rendered text, its token ids (image
    placeholders not expanded) and, per token, whether it belongs to an assistant turn."""

    text: str
    ids: list[int]
    answer: list[bool]


class VLMInputs:
    """Builds a family's model inputs from its processor.

    processor: the family's HF processor (tokenizer + image processor + chat template);
    image_token_id: the id the processor expands into the image's tokens; max_length:
    `vlm.max_length`; processor_images: the family's `processor_images` (images in the nesting
    and padding its processor expects); sequence_keys: the processor outputs with the sequence on
    dim 1 (cut by `truncate`).
    """

    def __init__(
        self,
        processor: Any,
        image_token_id: int,
        max_length: int,
        processor_images: Callable[[list[Image.Image]], list[Any]],
        sequence_keys: Sequence[str] = SEQUENCE_KEYS,
    ) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = image_token_id
        self.max_length = max_length
        self.processor_images = processor_images
        self.sequence_keys = tuple(sequence_keys)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The family's chat template applied to HF-style messages (text, not tokens)."""
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_text(self, conversation: list[dict[str, str]]) -> EncodedText:
        """Render `conversation` (record turns) and flag its answer tokens; `ValueError` when it
        has no user turn for the image or no assistant turn, or when the template cannot be
        split into turns (the chat template itself may raise anything on odd conversations)."""
        text, spans = assistant_spans(self.render, template_messages(conversation))
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return EncodedText(
            text, encoded["input_ids"], answer_flags(encoded["offset_mapping"], spans)
        )

    def process(
        self, images: list[Image.Image], texts: list[EncodedText]
    ) -> dict[str, torch.Tensor]:
        """The processor on the rendered texts and their RGB images (one each), right-padded;
        no labels yet."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} conversations")
        batch = self.processor(
            text=[t.text for t in texts],
            images=self.processor_images(images),
            padding=True,
            padding_side="right",
            add_special_tokens=False,
            return_tensors="pt",
        )
        return dict(batch)

    def labels(self, inputs: dict[str, torch.Tensor], texts: list[EncodedText]) -> torch.Tensor:
        """`[b, T]` labels: the answer tokens' ids, -100 everywhere else (prompt, image tokens,
        padding). `ValueError` when the processor's ids differ from the text's outside the
        image tokens, or the batch is padded on the left."""
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        labels = torch.full_like(input_ids, IGNORE_INDEX)  # [b, T]
        for row, text in enumerate(texts):
            length = int(attention_mask[row].sum())
            if not bool(attention_mask[row, :length].all()):
                raise ValueError("build_inputs needs right padding; the tokenizer padded left")
            ids = input_ids[row, :length].tolist()
            row_labels = transfer_labels(ids, text.ids, text.answer, self.image_token_id)
            labels[row, :length] = torch.tensor(row_labels, dtype=labels.dtype)
        return labels

    def truncate(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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

    def build_inputs(
        self, images: list[ImageInput], conversations: list[list[dict[str, str]]]
    ) -> dict[str, torch.Tensor]:
        """Chat-templated, right-padded batch with `labels` and `frame_sizes` (see
        `base.VLMAdapter.build_inputs`)."""
        if len(images) != len(conversations):
            raise ValueError(f"{len(images)} images for {len(conversations)} conversations")
        texts = [self.encode_text(conversation) for conversation in conversations]
        pil_images = [to_pil(image) for image in images]
        inputs = self.process(pil_images, texts)
        inputs["labels"] = self.labels(inputs, texts)
        inputs[FRAME_SIZES] = torch.tensor([[im.height, im.width] for im in pil_images])  # [b, 2]
        return self.truncate(inputs)
