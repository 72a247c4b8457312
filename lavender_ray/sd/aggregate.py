"""Pure maths of METHOD.md section 2, steps 4-5: cross-attention probabilities -> per-token maps
-> per-word maps. No state, no model: tensors and lists in, tensors and lists out.

Shapes::

    b      batch (samples)            h   attention heads
    q      query length = side * side k   text tokens (77 for CLIP)
    S      output map size (32)       w   words of one sample

Step 4 (aggregation): each recorded call gives probs [b, h, q, k]; mean over heads; reshape to
[b, k, side, side]; bilinear resize (align_corners=False) to [b, k, S, S]; then the plain mean
over all recorded (layer, step) pairs. `capture.AttentionStore` keeps running sums per map side
and resizes each sum once at the end (`mean_of_recorded`): the same numbers, by linearity.

Step 5 (tokens -> words): a word is a maximal run of Unicode letters or digits (`[^\\W_]+`), its
key the lower-cased run. A token belongs to the word whose character span it overlaps (first such
word if a tokenizer ever produced a token spanning two). Special and padding tokens belong to no
word. A word's map is the mean of the maps of all its tokens over all its occurrences that fit
the token window; an occurrence cut by the window (partly or wholly) does not count, and a key
with no occurrence left is dropped and counted in `words_cut`. Each word map is then min-max
normalised: (m - min) / (max - min + 1e-8).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from lavender_ray.tensors import minmax_normalise, resize_maps

WORD_PATTERN = re.compile(r"[^\W_]+")
NO_WORD = -1


# ------------------------------------------------------------------------------ step 4: maps
def head_mean_maps(probs: torch.Tensor) -> torch.Tensor:
    """probs [b, h, q, k] -> mean over heads laid out as maps [b, k, side, side] (>= fp32).

    `q` must be a square number: the queries are the latent pixels in row-major order."""
    b, _, q, k = probs.shape
    side = math.isqrt(q)
    if side * side != q:
        raise ValueError(f"query length {q} is not a square; cannot lay it out as a map")
    maps = probs.to(torch.promote_types(probs.dtype, torch.float32)).mean(dim=1)  # [b, q, k]
    return maps.transpose(1, 2).reshape(b, k, side, side)  # [b, q, k] -> [b, k, side, side]



def probs_to_token_maps(probs: torch.Tensor, output_size: int) -> torch.Tensor:
    """One recorded call: probs [b, h, q, k] -> per-token maps [b, k, S, S]."""
    return resize_maps(head_mean_maps(probs), output_size)


def mean_of_recorded(
    sums_by_side: dict[int, torch.Tensor], n_recorded: int, output_size: int
) -> torch.Tensor:
    """The plain mean over recorded (layer, step) calls of `probs_to_token_maps`, from the sums
    of `head_mean_maps` per map side ({side: [b, k, side, side]}): resizing is linear, so
    resizing each side's sum once equals summing the resized maps of every call."""
    if n_recorded <= 0 or not sums_by_side:
        raise ValueError("no cross-attention call was recorded; the capture store is empty")
    total = sum(resize_maps(maps, output_size) for maps in sums_by_side.values())
    return total / n_recorded


# ---------------------------------------------------------------------------- step 5: words
@dataclass(frozen=True)
class WordOccurrence:
    """One occurrence of a word in the text: its key and [start, end) character span."""

    key: str
    start: int
    end: int


@dataclass(frozen=True)
class WordPlan:
    """How the tokens of one text map to its words (everything step 5 needs besides the maps).

    `token_word[p]` is the index into `words` of the word token position `p` belongs to, or
    `NO_WORD` (special tokens, padding, punctuation, occurrences cut by the window)."""

    words: list[str]
    spans: list[tuple[int, int]]
    token_word: list[int]
    words_cut: int


@dataclass(frozen=True)
class TextPlan:
    """One target text, tokenized: the input ids (padded/truncated to the window) and the
    token -> word plan."""

    input_ids: list[int]
    words: WordPlan


def find_words(text: str) -> list[WordOccurrence]:
    """Every maximal run of Unicode letters/digits, in order, with its lower-cased key."""
    matches = WORD_PATTERN.finditer(text)
    return [WordOccurrence(m.group().lower(), m.start(), m.end()) for m in matches]


def plan_words(
    text: str, offsets: list[tuple[int, int]], special: list[bool]
) -> WordPlan:
    """Assign the tokens of one encoded text (truncated to the window) to the words of `text`.

    `offsets[p]` is the [start, end) character span of token position `p` in `text` (the fast
    tokenizer's offset mapping) and `special[p]` is True for start/end/padding tokens."""
    if len(offsets) != len(special):
        raise ValueError(f"{len(offsets)} offsets but {len(special)} special-token flags")
    occurrences = find_words(text)
    content = [p for p, is_special in enumerate(special) if not is_special]
    window_end = max((offsets[p][1] for p in content), default=0)
    occurrence_of = [_overlapping(offsets[p], occurrences) for p in range(len(offsets))]

    tokens_per_occurrence = [0] * len(occurrences)
    for p in content:
        if occurrence_of[p] != NO_WORD:
            tokens_per_occurrence[occurrence_of[p]] += 1
    kept = [
        o.end <= window_end and tokens_per_occurrence[i] > 0 for i, o in enumerate(occurrences)
    ]

    word_index: dict[str, int] = {}
    spans: list[tuple[int, int]] = []
    for o, keep in zip(occurrences, kept):
        if keep and o.key not in word_index:
            word_index[o.key] = len(word_index)
            spans.append((o.start, o.end))
    token_word = [NO_WORD] * len(offsets)
    for p in content:
        i = occurrence_of[p]
        if i != NO_WORD and kept[i]:
            token_word[p] = word_index[occurrences[i].key]
    all_keys = {o.key for o in occurrences}
    return WordPlan(list(word_index), spans, token_word, len(all_keys) - len(word_index))


def plan_text(tokenizer: Any, text: str, max_tokens: int) -> TextPlan:
    """Tokenize `text` padded/truncated to `max_tokens` (77 for CLIP) and plan its words.

    `tokenizer` is duck-typed: a fast (offset-mapping) tokenizer call as in transformers."""
    enc = tokenizer(
        text,
        padding="max_length",
        truncation=True,
        max_length=max_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    special = [bool(s) for s in enc["special_tokens_mask"]]
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    return TextPlan(list(enc["input_ids"]), plan_words(text, offsets, special))


def _overlapping(span: tuple[int, int], occurrences: list[WordOccurrence]) -> int:
    """Index of the first occurrence whose span overlaps `span`, else NO_WORD."""
    start, end = span
    if end <= start:
        return NO_WORD
    for i, o in enumerate(occurrences):
        if start < o.end and o.start < end:
            return i
    return NO_WORD


def word_maps(token_maps: torch.Tensor, token_word: list[int], n_words: int) -> torch.Tensor:
    """Per-token maps [k, S, S] of one sample -> per-word maps [w, S, S], min-max normalised.

    A word's map is the mean over its token positions (all occurrences); see `plan_words`."""
    k, size, _ = token_maps.shape
    if len(token_word) != k:
        raise ValueError(f"token_word has {len(token_word)} entries for {k} token maps")
    index = torch.tensor(token_word, device=token_maps.device)
    member = (index.unsqueeze(0) == torch.arange(n_words, device=index.device).unsqueeze(1))
    flat = token_maps.reshape(k, size * size)  # [k, S, S] -> [k, S*S]
    weights = member.to(flat.dtype)  # [w, k]: 1 where token k belongs to word w
    counts = weights.sum(dim=1, keepdim=True)  # [w, 1]
    if n_words and bool((counts == 0).any()):
        raise ValueError("a word has no token; plan_words and the token maps disagree")
    means = (weights @ flat) / counts.clamp(min=1)  # [w, S*S]
    return minmax_normalise(means.reshape(n_words, size, size))
