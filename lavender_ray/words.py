"""Answer tokens -> words -> SD words they align with (METHOD.md section 5). Pure functions.

Shapes::

    T  text (sequence) length     V  vocabulary     n  matched words of one sample

Which token, which attention row: HF labels are unshifted, so the answer token at position `t`
(`labels[t] != -100`) is predicted by `logits[t - 1]`, and the attention row that produced it is
row `t - 1`; `argmax(logits[t - 1])` is the model's prediction there (teacher forcing).

Word boundaries always come from the label: each contiguous run of answer positions (one
assistant turn) is decoded to text; a word is a maximal run of Unicode letters or digits
(`[^\\W_]+`, the SD side's definition, METHOD.md section 2.5), its key the lower-cased run. A
token belongs to every word its character span overlaps. Token spans come from incremental
decoding (`decode(ids[:k+1])` against the decoded segment), which serves byte-level BPE ('Ġ'),
sentencepiece ('▁') and WordPiece ('##') tokenizers alike; a token that decodes to no complete
character (a partial UTF-8 byte) joins the word of the next character. Special tokens belong to
no word. Punctuation-only and empty words cannot arise: they contain no `[^\\W_]` character.
This gives one `Word` per occurrence (`word_occurrences`).

Which word an occurrence is (`word_source`):

- `label`: its label key.
- `predicted`: the predictions at the occurrence's rows, in order, decoded together
  (`spelled_word`); if they contain exactly one letter/digit run, that run (lower-cased) is the
  word there, else (none, several, or a special token predicted) the occurrence has no word.
  Each prediction continues the *label*, so predictions at different label words are never
  joined: predicting " dog" then "s" where the label says "dog is" gives "dog" and "s", never
  "dogs".

Occurrences with the same key are then merged (`merge_words`: rows concatenated, order of first
occurrence) and matched to the SD words (`match_words`).

The tokenizer is duck-typed (`decode(ids, skip_special_tokens=...,
clean_up_tokenization_spaces=...)` and `all_special_ids`) and the tensors are only read through
their methods: this module imports neither transformers nor torch, so the word rule (`WORD_RE`)
serves the SD side's pure-text prompt code and the Ray Data processes that count words.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import simplemma

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
WORD_RE = re.compile(r"[^\W_]+")
REPLACEMENT_CHAR = "\ufffd"  # what a decoder prints for an incomplete UTF-8 sequence
LEMMA_LANGUAGE = "en"

Matching = Literal["exact", "root"]
WordSource = Literal["predicted", "label"]

# English stop words (the NLTK list, lower-case, apostrophes removed as `WORD_RE` splits on them).
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own s same she should so some such t than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves d ll m o re ve y
    """.split()
)


@dataclass(frozen=True)
class AnswerTokens:
    """The answer tokens of one sample, in position order.

    `token_ids[k]` is the k-th answer token (predicted or label), `rows[k]` the attention row
    (query position) that produced it, `segments[k]` the index of its contiguous answer run.
    """

    token_ids: tuple[int, ...]
    rows: tuple[int, ...]
    segments: tuple[int, ...]


@dataclass(frozen=True)
class Word:
    """A word of the VLM's answer: its key and the attention rows of its sub-tokens, of one
    occurrence or, once merged, of all its occurrences (a row appears once per token occurrence)."""

    key: str
    rows: tuple[int, ...]


@dataclass(frozen=True)
class MatchedWord:
    """A VLM word (or several, merged) aligned with the SD word `sd_words[sd_index]`."""

    sd_key: str
    sd_index: int
    vlm_keys: tuple[str, ...]
    rows: tuple[int, ...]


def normalise(text: str) -> str:
    """Lower-case and strip everything that is not a letter or digit (`"Dog,"` -> `"dog"`)."""
    return "".join(WORD_RE.findall(text.lower()))


@lru_cache(maxsize=65536)
def lemma(word: str) -> str:
    """The simplemma lemma of a normalised word (`"dogs"` -> `"dog"`, `"riding"` -> `"ride"`)."""
    return simplemma.lemmatize(word, lang=LEMMA_LANGUAGE).lower()


def answer_tokens(
    labels: torch.Tensor, predicted: torch.Tensor | None, source: WordSource
) -> AnswerTokens:
    """Answer tokens of one sample.

    labels: [T] with -100 outside the answer; predicted: [T] argmax token ids of the logits
    (`predicted[i]` is the token predicted at position i), needed when `source="predicted"`.
    """
    _check_source(source)
    if source == "predicted" and predicted is None:
        raise ValueError("word source 'predicted' needs the predicted token ids")
    positions = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    positions = [t for t in positions if t >= 1]  # position 0 is predicted by nothing
    rows = [t - 1 for t in positions]
    ids = labels[positions].tolist() if source == "label" else predicted[rows].tolist()
    segments, segment = [], -1
    for k, t in enumerate(positions):
        if k == 0 or t != positions[k - 1] + 1:
            segment += 1
        segments.append(segment)
    return AnswerTokens(tuple(ids), tuple(rows), tuple(segments))


def token_spans(token_ids: Sequence[int], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """Decode `token_ids` (no special tokens) and give each token's [start, end) span in the text.

    A token whose bytes complete no character gets an empty span at the next character.
    Incremental decoding over a short window (linear in the length); if its pieces do not add
    up to the decoded text (a tokenizer that rewrites text across tokens), every prefix is
    decoded instead (quadratic, exact).
    """
    ids = list(token_ids)
    text = _decode(tokenizer, ids)
    spans = _windowed_spans(ids, tokenizer, text)
    return text, spans if spans is not None else _prefix_spans(ids, tokenizer, text)


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that belong to no word: the named special tokens and every added special token
    (chat headers, image placeholders) of a fast tokenizer."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, token in added.items() if getattr(token, "special", False))
    return frozenset(ids)


def word_occurrences(
    tokens: AnswerTokens, tokenizer: Any, special_ids: frozenset[int] | None = None
) -> list[Word]:
    """One `Word` per occurrence of a word in `tokens` (label ids), in text order, keyed by its
    lower-cased text; its rows are those of the tokens overlapping it, ascending.

    Each answer segment is decoded on its own; `special_ids` (default
    `special_token_ids(tokenizer)`) are left out before decoding."""
    special = special_token_ids(tokenizer) if special_ids is None else special_ids
    occurrences: list[Word] = []
    for segment in sorted(set(tokens.segments)):
        picked = [
            (tid, row)
            for tid, row, seg in zip(tokens.token_ids, tokens.rows, tokens.segments)
            if seg == segment and tid not in special
        ]
        if picked:
            occurrences.extend(_segment_occurrences(picked, tokenizer))
    return occurrences


def merge_words(occurrences: Sequence[Word]) -> list[Word]:
    """Occurrences with the same key merged into one `Word` (rows concatenated), in order of
    first occurrence."""
    rows_by_key: dict[str, list[int]] = {}
    for word in occurrences:
        rows_by_key.setdefault(word.key, []).extend(word.rows)
    return [Word(key, tuple(rows)) for key, rows in rows_by_key.items()]


def words_from_tokens(
    tokens: AnswerTokens, tokenizer: Any, special_ids: frozenset[int] | None = None
) -> list[Word]:
    """The label words of `tokens`: sub-tokens merged into words, repeated words into one `Word`
    (first-occurrence order)."""
    return merge_words(word_occurrences(tokens, tokenizer, special_ids))


def spelled_word(
    token_ids: Sequence[int], tokenizer: Any, special_ids: frozenset[int]
) -> str | None:
    """The word that `token_ids` (the predictions at one label word's rows, in order) spell:
    the lower-cased letter/digit run of their decoded text if there is exactly one, else None
    (no run, several runs, or a special token among them)."""
    if any(tid in special_ids for tid in token_ids):
        return None
    runs = WORD_RE.findall(_decode(tokenizer, list(token_ids)))
    return runs[0].lower() if len(runs) == 1 else None


def predicted_words(
    occurrences: Sequence[Word],
    predicted: torch.Tensor,
    tokenizer: Any,
    special_ids: frozenset[int] | None = None,
) -> list[Word]:
    """Each label-word occurrence renamed to the word the predictions at its rows spell
    (`spelled_word`), with the same rows; occurrences that spell no word are left out.

    predicted: [T] argmax token ids (`predicted[r]` is the prediction at row r). Predictions at
    different occurrences are never decoded together."""
    special = special_token_ids(tokenizer) if special_ids is None else special_ids
    words = []
    for occurrence in occurrences:
        ids = predicted[list(occurrence.rows)].tolist()
        key = spelled_word(ids, tokenizer, special)
        if key is not None:
            words.append(Word(key, occurrence.rows))
    return words


def match_words(
    words: Sequence[Word],
    sd_words: Sequence[str],
    matching: Matching,
    skip_stop_words: bool = False,
) -> list[MatchedWord]:
    """VLM words eligible for alignment, paired with the sample's SD words.

    `exact`: the VLM key equals a normalised SD key. `root`: exact first, else equal lemmas
    (the first SD word with that lemma). VLM words paired with the same SD word are merged
    (their rows concatenated), so each SD word is used at most once. Order: first VLM occurrence.
    """
    if matching not in ("exact", "root"):
        raise ValueError(f"word matching {matching!r} is not one of 'exact', 'root'")
    exact_index: dict[str, int] = {}
    lemma_index: dict[str, int] = {}
    for index, sd_word in enumerate(sd_words):
        key = normalise(sd_word)
        if key:
            exact_index.setdefault(key, index)
            lemma_index.setdefault(lemma(key), index)
    merged: dict[int, tuple[list[str], list[int]]] = {}
    for word in words:
        if skip_stop_words and word.key in STOP_WORDS:
            continue
        index = exact_index.get(word.key)
        if index is None and matching == "root":
            index = lemma_index.get(lemma(word.key))
        if index is None:
            continue
        keys, rows = merged.setdefault(index, ([], []))
        keys.append(word.key)
        rows.extend(word.rows)
    return [
        MatchedWord(normalise(sd_words[i]), i, tuple(keys), tuple(rows))
        for i, (keys, rows) in merged.items()
    ]


def select_words(
    labels: torch.Tensor,
    logits: torch.Tensor | None,
    sd_words: Sequence[Sequence[str]],
    tokenizer: Any,
    *,
    source: WordSource,
    matching: Matching,
    skip_stop_words: bool = False,
) -> list[list[MatchedWord]]:
    """Matched words of every sample of a batch.

    labels: [b, T]; logits: [b, T, V] (only read when `source="predicted"`); sd_words: the SD
    word keys of each sample. Returns one list of `MatchedWord` per sample.
    """
    if len(sd_words) != labels.shape[0]:
        raise ValueError(f"{len(sd_words)} SD word lists for a batch of {labels.shape[0]} samples")
    _check_source(source)
    predicted = None
    if source == "predicted":
        if logits is None:
            raise ValueError("word source 'predicted' needs the logits")
        predicted = logits.detach().argmax(dim=-1).cpu()  # [b, T, V] -> [b, T]
    labels = labels.cpu()
    special = special_token_ids(tokenizer)
    out = []
    for b in range(labels.shape[0]):
        occurrences = word_occurrences(answer_tokens(labels[b], None, "label"), tokenizer, special)
        if predicted is not None:
            occurrences = predicted_words(occurrences, predicted[b], tokenizer, special)
        words = merge_words(occurrences)
        out.append(match_words(words, sd_words[b], matching, skip_stop_words))
    return out


def _check_source(source: str) -> None:
    if source not in ("predicted", "label"):
        raise ValueError(f"word source {source!r} is not one of 'predicted', 'label'")


def _segment_occurrences(picked: list[tuple[int, int]], tokenizer: Any) -> list[Word]:
    """The word occurrences of one decoded segment; picked: its (token id, row) pairs."""
    text, spans = token_spans([tid for tid, _ in picked], tokenizer)
    found = list(WORD_RE.finditer(text))
    word_ends = [m.end() for m in found]  # increasing: words do not overlap
    rows: list[list[int]] = [[] for _ in found]
    for (_, row), (start, end) in zip(picked, spans):
        if start == end:  # partial character: it belongs with the next character
            end = start + 1
        i = bisect.bisect_right(word_ends, start)  # first word ending after `start`
        while i < len(found) and found[i].start() < end:
            rows[i].append(row)
            i += 1
    return [Word(m.group().lower(), tuple(r)) for m, r in zip(found, rows) if r]


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _windowed_spans(ids: list[int], tokenizer: Any, text: str) -> list[tuple[int, int]] | None:
    """Spans from decoding only the tokens since the last complete character, with the group
    before them as context (sentencepiece decoders strip a leading space only at the start of
    what they decode). None if the pieces do not add up to `text`."""
    spans: list[tuple[int, int]] = []
    context, pending, position, pieces = 0, 0, 0, []
    for k in range(len(ids)):
        before = _decode(tokenizer, ids[context:pending])
        after = _decode(tokenizer, ids[context : k + 1])
        if len(after) <= len(before) or after.endswith(REPLACEMENT_CHAR):
            continue  # an incomplete character: tokens pending..k are resolved together later
        if not after.startswith(before):
            return None
        piece = after[len(before) :]
        spans.extend([(position, position)] * (k - pending))  # pending tokens: empty spans
        spans.append((position, position + len(piece)))
        pieces.append(piece)
        position += len(piece)
        context, pending = pending, k + 1
    spans.extend([(position, position)] * (len(ids) - len(spans)))
    return spans if "".join(pieces) == text else None


def _prefix_spans(ids: list[int], tokenizer: Any, text: str) -> list[tuple[int, int]]:
    spans, end = [], 0
    for k in range(len(ids)):
        prefix = _decode(tokenizer, ids[: k + 1])
        new_end = max(end, _common_prefix_length(prefix, text, start=end))
        spans.append((end, new_end))
        end = new_end
    return spans


def _common_prefix_length(a: str, b: str, start: int = 0) -> int:
    """Length of the common prefix of `a` and `b`, given they agree on `[:start]`."""
    if b.startswith(a):
        return len(a)
    n = min(len(a), len(b))
    i = min(start, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i
