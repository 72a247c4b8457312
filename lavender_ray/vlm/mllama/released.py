"""The released Llama-3.2-11B-Vision(-Instruct) architecture, from its published config.json,
for work that needs its shapes but not its weights: the memory plan (`lavender_ray.plan`) when
the local Hub cache lacks the model's files, and the real-size benchmarks (random weights,
nothing downloaded)."""

from __future__ import annotations

from typing import Any

from transformers import MllamaConfig, MllamaImageProcessorPil, MllamaProcessor

from lavender_ray.vlm.mllama.tiny import MLLAMA_TEMPLATE, tiny_mllama

RELEASED_IDS = ("meta-llama/Llama-3.2-11B-Vision", "meta-llama/Llama-3.2-11B-Vision-Instruct")


def llama32_11b_vision_config(
    tokenizer: Any, cpu_dry_run: bool = False, shallow: bool = False
) -> MllamaConfig:
    """The published Llama-3.2-11B-Vision(-Instruct) architecture; special-token ids from
    `tokenizer`. `cpu_dry_run` keeps every count (layers, cross-attention layers, tiles, 560 px,
    patches, vocabulary) and shrinks the widths so the same code path runs on a CPU; `shallow`
    keeps every width (hidden sizes, heads, MLPs, vocabulary, 560 px tiles of 1601 tokens, up to
    4 tiles) and cuts the depth: vision 5 + 1 global layers, text 5 layers with one
    cross-attention layer (index 3, the first of the real model's)."""
    image_token = tokenizer.convert_tokens_to_ids("<|image|>")
    vision = {
        "hidden_size": 1280, "intermediate_size": 5120, "attention_heads": 16,
        "num_hidden_layers": 32, "num_global_layers": 8, "image_size": 560, "patch_size": 14,
        "max_num_tiles": 4, "intermediate_layers_indices": [3, 7, 15, 23, 30],
        "vision_output_dim": 7680,
    }  # fmt: skip
    text = {
        "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
        "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38], "max_position_embeddings": 131072,
        "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    if shallow:
        vision.update(num_hidden_layers=5, num_global_layers=1,
                      intermediate_layers_indices=[0, 1, 2, 3, 4])  # 6 x 1280 = 7680 out
        text.update(num_hidden_layers=5, cross_attention_layers=[3])
    if cpu_dry_run:
        vision.update(
            hidden_size=32, intermediate_size=64, attention_heads=2, vision_output_dim=32 * 6
        )
        text.update(
            hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2
        )
    return MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_token)


def real_size_processor() -> MllamaProcessor:
    """Llama-3.2-11B-Vision's image processor (560 px tiles, up to 4) with the tiny Mllama
    tokenizer (its ids are valid ids of the 128k vocabulary) and chat template."""
    image_processor = MllamaImageProcessorPil(size={"height": 560, "width": 560}, max_image_tiles=4)
    return MllamaProcessor(image_processor, tiny_mllama()[1].tokenizer,
                           chat_template=MLLAMA_TEMPLATE)


def released_architecture(model_id: str) -> tuple[MllamaConfig, MllamaProcessor] | None:
    """(config, processor with the released geometry) for a released model id, else None."""
    if model_id not in RELEASED_IDS:
        return None
    processor = real_size_processor()
    return llama32_11b_vision_config(processor.tokenizer), processor
