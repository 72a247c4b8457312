"""Tiny Qwen2-VL built offline: 14 px patches, spatial merge 2, images resized to at most
112x112 px (an 84x112 image -> grid_thw (1, 6, 8) -> 3x4 merged tokens), Qwen2 text with 2
layers, Qwen2-VL's chat template (image-only processor: the video processor needs torchvision)."""

from __future__ import annotations

from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from lavender_ray.vlm.qwen2_vl.processor import Qwen2VLImageProcessorOnly
from lavender_ray.vlm.tiny import TEXT_HEADS, TEXT_HIDDEN, TEXT_KV_HEADS, seeded, tiny_tokenizer

QWEN2_VL_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def tiny_qwen2_vl(
    seed: int = 0, text_width: int = TEXT_HIDDEN, real_geometry: bool = False
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny Qwen2-VL; `real_geometry` gives Qwen2-VL's image sizes (up to 28*28*1280 pixels)."""
    specials = (
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
        "<|image_pad|>", "<|video_pad|>",
    )  # fmt: skip
    tokenizer = tiny_tokenizer(specials, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids
    head_dim = text_width // TEXT_HEADS
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": text_width,
            "intermediate_size": 2 * text_width,
            "num_hidden_layers": 2, "num_attention_heads": TEXT_HEADS,
            "num_key_value_heads": TEXT_KV_HEADS, "max_position_embeddings": 1024,
            "rope_parameters": {
                "rope_type": "default", "rope_theta": 10000.0,
                "mrope_section": [1, 1, head_dim // 2 - 2],
            },
            "bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2, "embed_dim": 16, "hidden_size": text_width, "mlp_ratio": 2,
            "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip
    model = seeded(seed, Qwen2VLForConditionalGeneration, config)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=(28 * 28 * 1280 if real_geometry else 112 * 112),
        patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2VLImageProcessorOnly(
        image_processor, tokenizer, chat_template=QWEN2_VL_TEMPLATE
    )
    return model, processor
