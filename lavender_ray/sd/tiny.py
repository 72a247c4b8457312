"""Offline Stable Diffusion stacks built from configs: `tiny/sd` and `random/sd14`.

- `tiny/sd`: the tiny SD stack the demo and the tests use (UNet2DConditionModel with
  `block_out_channels=(32, 64)`, AutoencoderKL at the same channels, a 2-layer CLIPTextModel of
  width 32, the SD DDIM scheduler) with a real CLIP *fast* tokenizer whose BPE vocabulary is
  trained here, offline and deterministically, on a generated English corpus (colours, shapes,
  positions, common caption words). Seeded: the same seed gives the same weights.
- `random/sd14`: the SD-1.4 UNet / VAE / CLIP ViT-L text encoder architectures from their
  configs with random weights (FLOPs equal the real model's; for benchmarks), with the tiny
  tokenizer (its ids are valid inputs of the larger vocabulary).

`build_offline_sd(id).save_pretrained(folder)` writes either as a diffusers repository folder, so
`sd.model_id=<folder>` exercises the real `from_pretrained` loading path offline.

Real model ids never come here: `lavender_ray.sd.components` loads them with `from_pretrained`.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_SD_ID = "tiny/sd"
RANDOM_SD14_ID = "random/sd14"
OFFLINE_SD_IDS = (TINY_SD_ID, RANDOM_SD14_ID)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 77
TOKENIZER_VOCAB_SIZE = 1200

# CLIP's own normaliser and pre-tokeniser (openai/clip-vit-large-patch14 tokenizer.json).
CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)

SCHEDULER_KWARGS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

TINY_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "norm_num_groups": 32,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}

# CompVis/stable-diffusion-v1-4: unet/config.json, vae/config.json, text_encoder/config.json.
SD14_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD14_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD14_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}

COLOR_WORDS = (
    "red green blue yellow purple orange pink brown black white gray grey cyan magenta "
    "violet gold silver beige teal navy maroon olive turquoise lavender dark light bright pale"
).split()
SHAPE_WORDS = (
    "circle square triangle rectangle star heart diamond oval hexagon pentagon cross ring "
    "line dot shape shapes circles squares triangles box ball cube"
).split()
POSITION_WORDS = (
    "left right above below top bottom center centre middle next beside behind front near "
    "under over inside outside between corner side upper lower"
).split()
COMMON_WORDS = (
    "a an the of to in on at is are was were and or with without this that these those it "
    "its there here what which where who how many much color colour size image picture photo "
    "describe single sentence caption show shows showing one two three four five six seven "
    "eight nine ten small large big tiny little round flat man woman person people dog cat "
    "car tree house street water sky grass table chair sitting standing riding holding "
    "walking looking wearing playing background foreground object objects drawn drawing yes "
    "no answer question first second other each both than more most some all any as by for "
    "from has have had be been being not only also very so then when while"
).split()


@dataclass
class SDComponents:
    """The pieces of an SD 1.x stack the extractor needs (no safety checker, no pipeline)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler

    def save_pretrained(self, folder: str) -> None:
        """The diffusers repository layout (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
        `scheduler/`) that `sd.model_id=<folder>` loads through `from_pretrained`, as a Hub
        repository or a downloaded one loads."""
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            getattr(self, part).save_pretrained(f"{folder}/{part}")


def tokenizer_corpus(seed: int = 0, n_sentences: int = 4000) -> list[str]:
    """A generated English corpus: every word list above, plus templated caption sentences."""
    rng = random.Random(seed)
    words = COLOR_WORDS + SHAPE_WORDS + POSITION_WORDS + COMMON_WORDS
    lines = [" ".join(words), " ".join(str(i) for i in range(100))]
    relations = ["to the left of", "to the right of", "above", "below", "next to", "behind"]
    for _ in range(n_sentences):
        c1, c2 = rng.sample(COLOR_WORDS, 2)
        s1, s2 = rng.choice(SHAPE_WORDS), rng.choice(SHAPE_WORDS)
        filler = " ".join(rng.sample(COMMON_WORDS, 3))
        lines.append(f"A {c1} {s1} {rng.choice(relations)} a {c2} {s2}, {filler}.")
        lines.append(f"What color is the {s1}? The {s1} is {c1}!")
    return lines


def clip_bpe_tokenizer() -> Tokenizer:
    """An untrained `tokenizers` BPE with CLIP's normaliser, pre-tokeniser and `</w>` suffix."""
    model = models.BPE(unk_token=EOS, continuing_subword_prefix="", end_of_word_suffix="</w>")
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tok


def train_vocab(corpus: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE vocabulary and merges in CLIP's layout: specials, the 256 byte symbols, the 256 byte
    symbols with `</w>`, then one token per merge. Every byte has a token in both positions, so
    no input ever maps to the unknown token."""
    tok = clip_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    raw_merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in raw_merges]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = [BOS, EOS] + alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
    return vocab, merges


@functools.lru_cache(maxsize=1)
def _cached_vocab() -> tuple[str, str]:
    vocab, merges = train_vocab(tokenizer_corpus(), TOKENIZER_VOCAB_SIZE)
    return json.dumps(vocab), json.dumps(merges)


def build_tiny_tokenizer() -> CLIPTokenizer:
    """transformers' (fast) `CLIPTokenizer` over the generated vocabulary: bos/eos/pad set,
    `model_max_length` 77, offset mapping available. Deterministic."""
    vocab_json, merges_json = _cached_vocab()
    merges = [tuple(m) for m in json.loads(merges_json)]
    return CLIPTokenizer(
        vocab=json.loads(vocab_json),
        merges=merges,
        model_max_length=MAX_TOKENS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )


def build_scheduler() -> DDIMScheduler:
    """The SD 1.x DDIM scheduler (scaled-linear betas, no clipping, alpha_0 not forced to 1)."""
    return DDIMScheduler(**SCHEDULER_KWARGS)


def text_config(tokenizer: CLIPTokenizer, sizes: dict[str, Any]) -> CLIPTextConfig:
    kwargs = {"vocab_size": len(tokenizer), **sizes}
    return CLIPTextConfig(
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )


def offline_configs(model_id: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(UNet config, VAE config, text encoder sizes) of `tiny/sd` or `random/sd14`."""
    if model_id not in OFFLINE_SD_IDS:
        raise ValueError(f"offline SD model id {model_id!r} unknown; allowed: {OFFLINE_SD_IDS}")
    if model_id == TINY_SD_ID:
        return TINY_UNET, TINY_VAE, TINY_TEXT
    return SD14_UNET, SD14_VAE, SD14_TEXT


def build_offline_sd(model_id: str, seed: int = 0) -> SDComponents:
    """`tiny/sd` or `random/sd14` with seeded random weights, on CPU in fp32 (eval mode).

    Always built on CPU: CUDA draws from another generator, so the same seed would give other
    weights on a GPU actor, and cached targets (keyed by model id + seed) would not match."""
    unet_cfg, vae_cfg, text_sizes = offline_configs(model_id)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg)
    text_encoder = CLIPTextModel(text_config(tokenizer, text_sizes))
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return SDComponents(unet, vae, text_encoder, tokenizer, build_scheduler())

