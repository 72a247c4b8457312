"""What the tiny VLMs of every family share: the `tiny/<family>` ids, the generated English
corpus and the byte-level BPE tokenizer trained on it, and seeded construction.

Each family builds its tiny model in its own folder (`vlm/<family>/tiny.py`, reached through
`registry.build_tiny("tiny/<family>", seed)`): real transformers classes at tiny sizes with
random seeded weights, the family's real processor class with its real (PIL) image processor,
this tokenizer plus the family's special tokens, and a chat template that renders like the
family's released one. Same seed, same weights; each builds in about a second.
"""

from __future__ import annotations

import functools
import itertools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

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


def seeded(seed: int, build: type[PreTrainedModel], config) -> PreTrainedModel:
    """Instantiate `build(config)` with weights drawn from `seed` without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(config)
    return model.eval()
