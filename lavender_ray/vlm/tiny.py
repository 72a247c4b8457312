"""Tiny VLMs built offline from configs: real transformers classes, random seeded weights.

`build_tiny("tiny/mllama", seed)` returns `(model, processor)`; also `tiny/llava`, `tiny/qwen2_vl`.
Each processor is the family's real processor class (for Qwen2-VL its image-only subclass, as the
video processor needs torchvision) with its real (PIL) image processor, a fast
byte-level BPE tokenizer trained here on a small generated English corpus (shapes, colours,
positions, captioning and VQA phrases) plus the family's special tokens, and a chat template that
renders like the family's released one. Same seed, same weights; all three build in about a second.

Sizes (chosen so geometry tests have non-trivial grids):
- Mllama: 56 px tiles of 14 px patches (4x4 patches + CLS per tile), up to 4 tiles, text 4 layers
  with cross-attention layers [1, 3]; `image_token_index` = text vocab size, as in Llama-3.2-Vision.
  The cross-attention gates, zero at init in transformers, are set to seeded non-zero values so the
  image reaches the logits.
- LLaVA: CLIP vision at 56 px / 14 px patches -> a 4x4 token grid; Llama text, 2 layers.
- Qwen2-VL: 14 px patches, spatial merge 2, images resized to at most 112x112 px (e.g. an 84x112
  image -> grid_thw (1, 6, 8) -> 3x4 merged tokens); Qwen2 text, 2 layers.
"""

from __future__ import annotations

import functools
import itertools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from lavender_ray.vlm.qwen2_vl import Qwen2VLImageProcessorOnly

TINY_PREFIX = "tiny/"
BPE_VOCAB_SIZE = 384
TEXT_HIDDEN = 32
TEXT_HEADS = 4
TEXT_KV_HEADS = 2

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
SHAPES = ("circle", "square", "triangle", "star")
RELATIONS = ("to the left of", "to the right of", "above", "below", "next to")
PROMPTS = (
    "Describe the image in a single sentence as a caption.",
    "Describe the image.",
    "What is in the image?",
    "Write a short caption for this image.",
)


def corpus() -> list[str]:
    """The generated English corpus the tiny tokenizers are trained on (deterministic)."""
    lines = list(PROMPTS)
    pairs = itertools.product(COLORS, SHAPES)
    for (c1, s1), relation, (c2, s2) in itertools.product(pairs, RELATIONS, [("blue", "square")]):
        lines.append(f"A {c1} {s1} {relation} a {c2} {s2}.")
        lines.append(f"Where is the {c1} {s1}? The {c1} {s1} is {relation} the {c2} {s2}.")
        lines.append(f"What color is the {s1}? The {s1} is {c1}. Is it {c2}? No, it is not.")
    lines += [f"The caption of the image is: {c} {s}s, yes." for c in COLORS for s in SHAPES]
    lines += ["system user assistant USER ASSISTANT You are a helpful assistant."] * 8
    return lines


@functools.lru_cache(maxsize=8)
def _trained_bpe(special_tokens: tuple[str, ...]) -> str:
    """Byte-level BPE trained on `corpus()`, special tokens first; serialised (cache-safe)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    return tokenizer.to_str()


def tiny_tokenizer(
    special_tokens: tuple[str, ...], late_special_tokens: tuple[str, ...] = (), **named: str
) -> PreTrainedTokenizerFast:
    """Fast tokenizer: BPE with `special_tokens` at ids 0.., then `late_special_tokens` appended
    after the trained vocabulary (Mllama's image token sits at the text vocab size).
    `named` sets bos_token/eos_token/pad_token/... by string."""
    tokenizer = Tokenizer.from_str(_trained_bpe(special_tokens))
    tokenizer.add_special_tokens(list(late_special_tokens))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="right", **named)
    fast.model_max_length = 4096
    return fast


def _seeded(seed: int, build: type[PreTrainedModel], config) -> PreTrainedModel:
    """Instantiate `build(config)` with weights drawn from `seed` without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(config)
    return model.eval()


# ------------------------------------------------------------------------------------ mllama
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
    seed: int = 0, tile_size: int = 56, text_width: int = TEXT_HIDDEN
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny Mllama; `tile_size=560` gives Llama-3.2-Vision's real tile geometry (40x40 patches)."""
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
    model = _seeded(seed, MllamaForConditionalGeneration, config)
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


# ------------------------------------------------------------------------------------- llava
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
    seed: int = 0, text_width: int = TEXT_HIDDEN
) -> tuple[PreTrainedModel, ProcessorMixin]:
    tokenizer = tiny_tokenizer(
        ("<unk>", "<s>", "</s>", "<pad>", "<image>"),
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    )  # fmt: skip
    image_size, patch_size = 56, 14
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
    model = _seeded(seed, LlavaForConditionalGeneration, config)
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


# ---------------------------------------------------------------------------------- qwen2_vl
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
    seed: int = 0, text_width: int = TEXT_HIDDEN
) -> tuple[PreTrainedModel, ProcessorMixin]:
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
    model = _seeded(seed, Qwen2VLForConditionalGeneration, config)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2VLImageProcessorOnly(
        image_processor, tokenizer, chat_template=QWEN2_VL_TEMPLATE
    )
    return model, processor


TINY_BUILDERS = {"mllama": tiny_mllama, "llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl}


def tiny_names() -> list[str]:
    return [TINY_PREFIX + name for name in TINY_BUILDERS]


def build_tiny(
    model_id: str, seed: int = 0, text_width: int = TEXT_HIDDEN
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """`tiny/<family>` -> (model in eval mode, processor). Raises listing the tiny ids.

    `text_width`: hidden size of the language model (MLP 2x wider, still 4 heads, same layers),
    for benchmarks that grow the model around fixed attention maps."""
    name = model_id.removeprefix(TINY_PREFIX)
    if not model_id.startswith(TINY_PREFIX) or name not in TINY_BUILDERS:
        raise ValueError(f"unknown tiny model {model_id!r}; tiny models: {', '.join(tiny_names())}")
    model, processor = TINY_BUILDERS[name](seed, text_width=text_width)
    model.config.name_or_path = model_id  # what PEFT writes as base_model_name_or_path
    model.name_or_path = model_id
    return model, processor
