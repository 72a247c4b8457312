"""METHOD.md section 2, steps 4-5, on literal examples: maps, aggregation, tokens -> words."""

from __future__ import annotations

import pytest
import torch

from lavender_ray.sd.aggregate import mean_of_recorded, probs_to_token_maps, word_maps
from lavender_ray.sd.capture import AttentionStore
from lavender_ray.sd.prompt import NO_WORD, find_words, plan_words
from lavender_ray.sd.tiny import build_tiny_tokenizer
from lavender_ray.tensors import minmax_normalise


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def encode(tokenizer, text: str) -> tuple[list[tuple[int, int]], list[bool], list[str]]:
    enc = tokenizer(
        text,
        padding="max_length",
        truncation=True,
        max_length=77,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    return offsets, [bool(s) for s in enc["special_tokens_mask"]], tokens


# ------------------------------------------------------------------------------------- step 4
def test_probs_to_token_maps_means_heads_and_lays_queries_out_row_major() -> None:
    # b=1, h=2, q=4 (side 2), k=3: head 0 holds 0..11, head 1 holds 100..111
    probs = torch.stack([torch.arange(12.0), torch.arange(100.0, 112.0)]).reshape(1, 2, 4, 3)
    maps = probs_to_token_maps(probs, output_size=2)
    assert maps.shape == (1, 3, 2, 2)
    # mean over heads of query q, key k is 50 + 3q + k; query q sits at (y, x) = divmod(q, 2)
    expected = torch.tensor(
        [[[50.0, 53.0], [56.0, 59.0]], [[51.0, 54.0], [57.0, 60.0]], [[52.0, 55.0], [58.0, 61.0]]]
    )
    torch.testing.assert_close(maps[0], expected)


def test_probs_to_token_maps_resizes_bilinear_without_corner_alignment() -> None:
    probs = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(1, 1, 4, 1)  # map [[0, 1], [0, 1]]
    maps = probs_to_token_maps(probs, output_size=4)
    row = torch.tensor([0.0, 0.25, 0.75, 1.0])
    torch.testing.assert_close(maps[0, 0], row.expand(4, 4))


def test_probs_to_token_maps_rejects_non_square_queries() -> None:
    with pytest.raises(ValueError, match="not a square"):
        probs_to_token_maps(torch.zeros(1, 1, 6, 77), output_size=32)


def test_mean_of_recorded_resizes_each_sides_sum() -> None:
    sums = {1: torch.full((1, 2, 1, 1), 3.0), 2: torch.full((1, 2, 2, 2), 6.0)}
    mean = mean_of_recorded(sums, 3, output_size=4)
    torch.testing.assert_close(mean, torch.full((1, 2, 4, 4), 3.0))
    with pytest.raises(ValueError, match="no cross-attention"):
        mean_of_recorded({}, 0, output_size=4)


def test_store_equals_the_mean_of_per_call_maps_over_mixed_sides() -> None:
    """The contract literally: resize every recorded call, then the plain mean over calls."""
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, 3, side * side, 77, generator=gen) for side in (4, 8, 4, 2)]
    calls = [torch.softmax(s, dim=-1) for s in scores]
    store = AttentionStore(output_size=8)
    with store.recording():
        for i, probs in enumerate(calls):
            store.add(f"layer{i}", probs)
    expected = torch.stack([probs_to_token_maps(p, 8) for p in calls]).mean(dim=0)
    torch.testing.assert_close(store.token_maps(), expected)
    assert store.n_recorded == 4


# ------------------------------------------------------------------------------------- step 5
def test_find_words_uses_letter_digit_runs_lower_cased() -> None:
    words = find_words("Ünïcode_word, R2-D2's dog!")
    assert [(w.key, w.start, w.end) for w in words] == [
        ("ünïcode", 0, 7),
        ("word", 8, 12),
        ("r2", 14, 16),
        ("d2", 17, 19),
        ("s", 20, 21),
        ("dog", 22, 25),
    ]


def test_plan_words_on_literal_offsets() -> None:
    text = "Dog, dog house"
    # <bos> "dog" "," "dog" "ho" "use" <eos> <pad>
    offsets = [(0, 0), (0, 3), (3, 4), (5, 8), (9, 11), (11, 14), (0, 0), (0, 0)]
    special = [True, False, False, False, False, False, True, True]
    plan = plan_words(text, offsets, special)
    assert plan.words == ["dog", "house"]
    assert plan.spans == [(0, 3), (9, 14)]
    assert plan.token_word == [NO_WORD, 0, NO_WORD, 0, 1, 1, NO_WORD, NO_WORD]
    assert plan.words_cut == 0


def test_repeated_word_merges_all_occurrences(tokenizer) -> None:
    text = "The dog and THE dog."
    offsets, special, _ = encode(tokenizer, text)
    plan = plan_words(text, offsets, special)
    assert plan.words == ["the", "dog", "and"]
    assert plan.spans == [(0, 3), (4, 7), (8, 11)]
    positions = {
        word: [p for p, i in enumerate(plan.token_word) if i == index]
        for index, word in enumerate(plan.words)
    }
    assert positions == {"the": [1, 4], "dog": [2, 5], "and": [3]}


def test_word_split_into_bpe_pieces_gets_all_its_pieces(tokenizer) -> None:
    text = "a xylophonist"
    offsets, special, tokens = encode(tokenizer, text)
    plan = plan_words(text, offsets, special)
    pieces = [p for p, i in enumerate(plan.token_word) if i == plan.words.index("xylophonist")]
    assert len(pieces) >= 3, tokens
    assert "".join(tokens[p] for p in pieces).replace("</w>", "") == "xylophonist"


def test_words_past_the_window_are_dropped_and_counted(tokenizer) -> None:
    text = "red " * 74 + "blue green yellow purple"  # 74 + 4 one-token words; room for 75
    offsets, special, tokens = encode(tokenizer, text)
    assert tokens[75] == "blue</w>" and tokens[76] == "<|endoftext|>"
    plan = plan_words(text, offsets, special)
    assert plan.words == ["red", "blue"]
    assert plan.words_cut == 3
    assert plan.token_word[1:75] == [0] * 74 and plan.token_word[75] == 1


def test_word_cut_in_the_middle_is_dropped(tokenizer) -> None:
    text = "red " * 74 + "xylophonist blue"
    offsets, special, tokens = encode(tokenizer, text)
    assert tokens[75] != "xylophonist</w>"  # only its first piece fits
    plan = plan_words(text, offsets, special)
    assert plan.words == ["red"]
    assert plan.words_cut == 2
    assert plan.token_word[75] == NO_WORD


def test_punctuation_only_text_has_no_words(tokenizer) -> None:
    text = "?!... --- ;"
    offsets, special, _ = encode(tokenizer, text)
    plan = plan_words(text, offsets, special)
    assert plan.words == [] and plan.words_cut == 0
    assert set(plan.token_word) == {NO_WORD}


def test_word_maps_mean_over_tokens_then_min_max() -> None:
    token_maps = torch.tensor(
        [
            [[9.0, 9.0], [9.0, 9.0]],  # <bos>: belongs to no word
            [[0.0, 2.0], [4.0, 6.0]],  # word 0, occurrence 1
            [[2.0, 2.0], [4.0, 10.0]],  # word 0, occurrence 2
            [[5.0, 5.0], [5.0, 5.0]],  # word 1: constant map
        ]
    )
    maps = word_maps(token_maps, [NO_WORD, 0, 0, 1], n_words=2)
    # word 0: mean [[1, 2], [4, 8]] -> (m - 1) / 7
    torch.testing.assert_close(maps[0], torch.tensor([[0.0, 1 / 7], [3 / 7, 1.0]]))
    torch.testing.assert_close(maps[1], torch.zeros(2, 2))


def test_minmax_normalise_is_per_map() -> None:
    maps = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[-2.0, 0.0], [0.0, 2.0]]])
    out = minmax_normalise(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    torch.testing.assert_close(out[1], torch.tensor([[0.0, 0.5], [0.5, 1.0]]))
