"""Tiny LLaVA built offline: CLIP vision at 56 px / 14 px patches (a 4x4 token grid), Llama text
with 2 layers, LLaVA-1.5's `USER: <image>\n... ASSISTANT:` chat template."""

from __future__ import annotations

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from lavender_ray.vlm.tiny import TEXT_HEADS, TEXT_HIDDEN, TEXT_KV_HEADS, seeded, tiny_tokenizer

LLAVA_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{{- (message['content'] if message['content'] is string else message['content'][0]['text'])"
    " + '\n' }}"
    "{%- else %}{{- message['role'].upper() + ': ' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<image>\n' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- eos_token if message['role'] == 'assistant' else ' ' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'ASSISTANT: ' }}{%- endif %}"
)


def tiny_llava(
    seed: int = 0, text_width: int = TEXT_HIDDEN, real_geometry: bool = False
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny LLaVA; `real_geometry` gives LLaVA-1.5's image geometry (336 px, a 24x24 grid)."""
    tokenizer = tiny_tokenizer(
        ("<unk>", "<s>", "</s>", "<pad>", "<image>"),
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    )  # fmt: skip
    image_size, patch_size = (336 if real_geometry else 56), 14
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size, projection_dim=16,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
            num_hidden_layers=2, num_attention_heads=TEXT_HEADS,
            num_key_value_heads=TEXT_KV_HEADS, max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    model = seeded(seed, LlavaForConditionalGeneration, config)
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor,
        tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return model, processor
