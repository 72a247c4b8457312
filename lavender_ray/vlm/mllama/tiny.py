"""Tiny Mllama built offline: 56 px tiles of 14 px patches (4x4 patches + CLS per tile), up to 4
tiles, text 4 layers with cross-attention layers [1, 3]; `image_token_index` = text vocab size,
as in Llama-3.2-Vision. The cross-attention gates, zero at init in transformers, are set to
seeded non-zero values so the image reaches the logits. The chat template renders like
Llama-3.2-Vision-Instruct's."""

from __future__ import annotations

import torch
from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from lavender_ray.vlm.tiny import TEXT_HEADS, TEXT_HIDDEN, TEXT_KV_HEADS, seeded, tiny_tokenizer

MLLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)


def tiny_mllama(
    seed: int = 0, tile_size: int = 56, text_width: int = TEXT_HIDDEN, real_geometry: bool = False
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny Mllama; `real_geometry` (or `tile_size=560`) gives Llama-3.2-Vision's real tile
    geometry (560 px tiles, 40x40 patches, up to 4 tiles)."""
    if real_geometry:
        tile_size = 560
    specials = (
        "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|eot_id|>", "<|finetune_right_pad_id|>", "<|python_tag|>",
    )  # fmt: skip
    tokenizer = tiny_tokenizer(
        specials,
        late_special_tokens=("<|image|>",),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    text_vocab = len(tokenizer) - 1  # the image token id equals the text vocab size
    hidden = 16
    layer_indices = [0, 1]
    config = MllamaConfig(
        vision_config={
            "hidden_size": hidden, "num_hidden_layers": 2, "num_global_layers": 1,
            "attention_heads": 2, "intermediate_size": 32, "image_size": tile_size,
            "patch_size": 14, "max_num_tiles": 4, "intermediate_layers_indices": layer_indices,
            "vision_output_dim": hidden * (len(layer_indices) + 1),
        },
        text_config={
            "vocab_size": text_vocab, "hidden_size": text_width, "num_hidden_layers": 4,
            "num_attention_heads": TEXT_HEADS, "num_key_value_heads": TEXT_KV_HEADS,
            "intermediate_size": 2 * text_width, "cross_attention_layers": [1, 3],
            "max_position_embeddings": 1024,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_index=text_vocab,
    )  # fmt: skip
    model = seeded(seed, MllamaForConditionalGeneration, config)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        for layer_idx in config.text_config.cross_attention_layers:
            layer = model.model.language_model.layers[layer_idx]
            layer.cross_attn_attn_gate.uniform_(0.3, 0.9)
            layer.cross_attn_mlp_gate.uniform_(0.3, 0.9)
    image_processor = MllamaImageProcessorPil(
        size={"height": tile_size, "width": tile_size}, max_image_tiles=4
    )
    processor = MllamaProcessor(image_processor, tokenizer, chat_template=MLLAMA_TEMPLATE)
    return model, processor
