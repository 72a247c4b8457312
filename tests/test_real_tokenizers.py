"""Words on the real tokenizers: SD-1.4's CLIP (METHOD.md section 2.5) and the VLMs' Llama-3 and
Qwen2 (section 5). The tokenizers are built from PyPI test data (`real_tokenizers.py`)."""

from __future__ import annotations

import pytest
import real_tokenizers
import torch
from real_tokenizers import clip_tokenizer, llama3_tokenizer, qwen2_tokenizer

from lavender_ray.sd.prompt import NO_WORD, plan_text
from lavender_ray.words import (
    answer_tokens,
    merge_words,
    predicted_words,
    select_words,
    word_occurrences,
)

PROMPT = 3  # masked prompt positions in front of every answer
CLIP_WINDOW = 77


@pytest.fixture(scope="session")
def clip():
    return clip_tokenizer()


@pytest.fixture(scope="session", params=["llama3", "qwen2"])
def vlm_tokenizer(request):
    return {"llama3": llama3_tokenizer, "qwen2": qwen2_tokenizer}[request.param]()


def test_a_missing_data_package_is_an_error_that_names_the_install_command():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps clip-anytorch==2.6.0"):
        real_tokenizers._package_file("no-such-package", "data/file")


# ------------------------------------------------------------------------- SD: CLIP word plan
def test_clip_offsets_give_the_words_of_the_rule(clip):
    text = "A dog's e-mail, naïve 3.5 cats!!"
    plan = plan_text(clip, text, CLIP_WINDOW)
    words = plan.words
    assert words.words == ["a", "dog", "s", "e", "mail", "naïve", "3", "5", "cats"]
    assert [text[a:b].lower() for a, b in words.spans] == words.words
    assert words.spans[2] == (6, 7) and words.spans[5] == (16, 21)  # "s" of "'s"; "naïve"
    tokens = clip.convert_ids_to_tokens(plan.input_ids[:17])
    assert tokens[4:11] == ["e</w>", "-</w>", "mail</w>", ",</w>", "na", "Ã¯", "ve</w>"]
    word_of_token = [None if i == NO_WORD else words.words[i] for i in words.token_word]
    assert word_of_token[:17] == [
        None,  # <|startoftext|>
        "a", "dog", "s", "e", None, "mail", None,  # A dog 's e - mail ,
        "naïve", "naïve", "naïve",  # na ï ve: three tokens, one word
        "3", None, "5", "cats", None,  # 3 . 5 cats !!
        None,  # <|endoftext|>, then padding
    ]
    assert set(word_of_token[17:]) == {None} and len(plan.input_ids) == CLIP_WINDOW
    assert words.words_cut == 0


def test_clip_repeated_words_are_one_word(clip):
    plan = plan_text(clip, "A dog and a DOG.", CLIP_WINDOW)
    assert plan.words.words == ["a", "dog", "and"]
    assert plan.words.spans == [(0, 1), (2, 5), (6, 9)]  # the first occurrence's span
    assert plan.words.token_word[:8] == [NO_WORD, 0, 1, 2, 0, 1, NO_WORD, NO_WORD]


def test_clip_window_keeps_the_words_whose_tokens_all_fit(clip):
    words = [f"cat{i}" for i in range(100)]  # "cat", then one token per digit: 2 or 3 tokens
    sizes = [len(clip(word, add_special_tokens=False)["input_ids"]) for word in words]
    assert sizes[:10] == [2] * 10 and sizes[10:] == [3] * 90
    plan = plan_text(clip, " ".join(words), CLIP_WINDOW)
    content = CLIP_WINDOW - 2  # bos and eos
    ends = torch.tensor(sizes).cumsum(0)
    n_fit = int((ends <= content).sum())  # 28: cat27 ends at 74, cat28 would end at 77
    assert n_fit == 28
    assert plan.words.words == words[:n_fit] and plan.words.words_cut == 100 - n_fit
    assert plan.input_ids[-1] == clip.eos_token_id
    # the cut word's first token (position 75) is in the window but belongs to no word
    assert plan.words.token_word[int(ends[n_fit - 1]) + 1] == NO_WORD
    assert plan.words.token_word[int(ends[n_fit - 1])] == n_fit - 1


# ---------------------------------------------------------------- VLM: Llama-3 and Qwen2 words
def _one_id(tokenizer, piece: str | int) -> int:
    if isinstance(piece, int):
        return piece
    ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{piece!r} is {tokenizer.convert_ids_to_tokens(ids)}, not one token"
    return ids[0]


def _labels_and_predictions(
    tokenizer, answer: str, predictions: list[str | int]
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """labels [T]: `PROMPT` masked positions, the answer encoded with its leading space (as after
    a chat template's header) and the end-of-turn token; predicted [T]: the row of the k-th
    label token (row t - 1 for position t) holds `predictions[k]` (one token each), the last
    row predicts the end of turn."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert len(predictions) == len(ids), f"label tokens of {answer!r}: {pieces}"
    eos = tokenizer.eos_token_id
    labels = torch.tensor([-100] * PROMPT + ids + [eos])
    predicted = torch.zeros(len(labels), dtype=torch.long)
    ids_per_row = [_one_id(tokenizer, p) for p in predictions] + [eos]
    predicted[PROMPT - 1 : PROMPT + len(ids)] = torch.tensor(ids_per_row)
    return pieces, labels, predicted


def _vlm_words(tokenizer, answer: str, predictions: list[str | int]) -> dict[str, tuple[int, ...]]:
    """The VLM's words {key: rows} in `predicted` mode; rows count from the first answer row."""
    _, labels, predicted = _labels_and_predictions(tokenizer, answer, predictions)
    occurrences = word_occurrences(answer_tokens(labels, None, "label"), tokenizer)
    words = merge_words(predicted_words(occurrences, predicted, tokenizer))
    return {w.key: tuple(r - (PROMPT - 1) for r in w.rows) for w in words}


def test_dog_then_s_gives_dog_and_s_never_dogs(vlm_tokenizer):
    tok = vlm_tokenizer
    assert _vlm_words(tok, " dog is", [" dog", "s"]) == {"dog": (0,), "s": (1,)}
    pieces, labels, predicted = _labels_and_predictions(tok, " dog is", [" dog", "s"])
    assert pieces == [" dog", " is"]
    logits = torch.nn.functional.one_hot(predicted, len(tok)).float()  # [T] -> [T, V]
    for matching in ("exact", "root"):
        matched = select_words(
            labels[None], logits[None], [["dogs", "dog"]], tok, source="predicted",
            matching=matching,
        )[0]
        assert [(m.sd_key, m.vlm_keys) for m in matched] == [("dog", ("dog",))]
    # " dogs" predicted at the label word "dog" is the word "dogs": a lemma match only
    assert _vlm_words(tok, " dog is", [" dogs", " is"]) == {"dogs": (0,), "is": (1,)}
    assert _vlm_words(tok, " dog is", [" dogs", "s"]) == {"dogs": (0,), "s": (1,)}
    _, labels, predicted = _labels_and_predictions(tok, " dog is", [" dogs", " is"])
    logits = torch.nn.functional.one_hot(predicted, len(tok)).float()
    exact, root = (
        select_words(labels[None], logits[None], [["dog"]], tok, source="predicted", matching=m)
        for m in ("exact", "root")
    )
    assert exact == [[]] and [(m.sd_key, m.vlm_keys) for m in root[0]] == [("dog", ("dogs",))]


def test_a_word_of_three_tokens(vlm_tokenizer):
    tok = vlm_tokenizer
    pieces, _, _ = _labels_and_predictions(tok, " giraffes", [" gir", "aff", "es"])
    assert pieces == [" gir", "aff", "es"]
    assert _vlm_words(tok, " giraffes", [" gir", "aff", "es"]) == {"giraffes": (0, 1, 2)}
    # a different middle piece spells a different word; a comma or a space splits it: no word
    assert _vlm_words(tok, " giraffes", [" gir", "affe", "es"]) == {"giraffees": (0, 1, 2)}
    assert _vlm_words(tok, " giraffes", [" gir", ",", "es"]) == {}
    assert _vlm_words(tok, " frisbee", [" fr", " is", "bee"]) == {}
    assert _vlm_words(tok, " frisbee on grass", [" fr", "is", "bee", " in", " grass"]) == {
        "frisbee": (0, 1, 2),
        "in": (3,),
        "grass": (4,),
    }


def test_a_repeated_word_keeps_only_its_predicted_occurrence(vlm_tokenizer):
    tok = vlm_tokenizer
    label = " a dog and a dog"
    assert _vlm_words(tok, label, [" a", " dog", " and", " a", " cat"]) == {
        "a": (0, 3),
        "dog": (1,),
        "and": (2,),
        "cat": (4,),
    }
    assert _vlm_words(tok, label, [" the", " cat", " and", " a", " dog"])["dog"] == (4,)


def test_capitals_and_punctuation(vlm_tokenizer):
    tok = vlm_tokenizer
    assert _vlm_words(tok, " dog", [" Dog"]) == {"dog": (0,)}
    assert _vlm_words(tok, " Dog", [" dog"]) == {"dog": (0,)}
    assert _vlm_words(tok, " DOG", [" DO", "G"]) == {"dog": (0, 1)}  # two tokens, one word
    assert _vlm_words(tok, " Naïve", [" Na", "ï", "ve"]) == {"naïve": (0, 1, 2)}
    assert _vlm_words(tok, " naïve", [" naï", "ve"]) == {"naïve": (0, 1)}
    # the label's "." and "," are in no word; punctuation predicted at a word spells none
    assert _vlm_words(tok, " dog.", [" dog", ","]) == {"dog": (0,)}
    assert _vlm_words(tok, " dog,", [",", "."]) == {}
    assert _vlm_words(tok, " dog, cat", [" dog", " and", " cat"]) == {"dog": (0,), "cat": (2,)}
    # "e-mail" is two words: " e" and "-mail"
    assert _vlm_words(tok, " e-mail", [" e", "-mail"]) == {"e": (0,), "mail": (1,)}
    assert _vlm_words(tok, " e-mail", [" email", "-mail"]) == {"email": (0,), "mail": (1,)}
    assert _vlm_words(tok, " e-mail", [" -", "-mail"]) == {"mail": (1,)}


def test_a_predicted_special_token_spells_no_word(vlm_tokenizer):
    tok = vlm_tokenizer
    eos = tok.eos_token_id
    added = tok.added_tokens_encoder
    image = next(added[name] for name in ("<|image|>", "<|image_pad|>") if name in added)
    assert _vlm_words(tok, " dog is", [eos, " is"]) == {"is": (1,)}
    assert _vlm_words(tok, " dog is", [image, " is"]) == {"is": (1,)}
    assert _vlm_words(tok, " giraffes", [" gir", eos, "es"]) == {}
