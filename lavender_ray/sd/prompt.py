"""METHOD.md section 2, step 5, its text half: which tokens of SD's prompt belong to which word.
Pure text (no torch, no model), so the Ray Data processes that only schedule the SD stage never
import the SD stack; the maps half (`word_maps`) is in `aggregate`.

A word is a maximal run of Unicode letters or digits (`[^\\W_]+`: `words.WORD_RE`, the one word
rule of both sides), its key the lower-cased run. A token belongs to the word whose character
span it overlaps (first such word if a tokenizer ever produced a token spanning two). Special and
padding tokens belong to no word. An occurrence cut by the token window (partly or wholly) does
not count, and a key with no occurrence left is dropped and counted in `words_cut`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lavender_ray.words import WORD_RE

NO_WORD = -1


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
    matches = WORD_RE.finditer(text)
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
