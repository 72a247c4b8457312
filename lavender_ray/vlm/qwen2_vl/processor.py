"""Qwen2-VL's processor for images only (the real checkpoint's files, no torchvision)."""

from __future__ import annotations

from transformers import ProcessorMixin, Qwen2VLProcessor


class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
    """Qwen2-VL's processor for images only.

    `Qwen2VLProcessor` also takes a video processor, whose class needs torchvision (not a
    dependency of this project); images, token expansion and `mm_token_type_ids` are unchanged.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
