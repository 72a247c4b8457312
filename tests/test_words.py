"""Words: answer tokens -> words -> matched SD words, on tiny real tokenizers built here."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lavender_ray.words import (
    AnswerTokens,
    Word,
    _prefix_spans,
    _windowed_spans,
    answer_tokens,
    lemma,
    match_words,
    merge_words,
    normalise,
    predicted_words,
    select_words,
    token_spans,
    word_occurrences,
    words_from_tokens,
)

CORPUS = [
    "A red circle to the left of a blue square.",
    "The dogs are riding bikes, and the dog is red!",
    "Two dogs chase a ball near the river bank.",
] * 4


def _train(pre_tokenizer, decoder, vocab_size: int, **trainer_kwargs) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<eos>", "<pad>", "<|start_header_id|>"],
        **trainer_kwargs,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def byte_bpe() -> PreTrainedTokenizerFast:
    """Byte-level BPE ('Ġ' word-start marker), like Llama-3 / Qwen2 tokenizers."""
    return _train(
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )


@pytest.fixture(scope="module")
def metaspace_bpe() -> PreTrainedTokenizerFast:
    """Sentencepiece-style BPE ('▁' word-start marker), like Llama-2 / LLaVA-1.5 tokenizers."""
    return _train(pre_tokenizers.Metaspace(), decoders.Metaspace(), vocab_size=120)


def _answer(tokenizer, text: str, prompt_len: int = 3) -> tuple[list[int], torch.Tensor]:
    """Token ids of `text` and labels [T] with `prompt_len` masked prompt positions in front."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    labels = torch.tensor([-100] * prompt_len + ids, dtype=torch.long)
    return ids, labels


def _words(tokenizer, text: str) -> dict[str, tuple[int, ...]]:
    ids, labels = _answer(tokenizer, text)
    words = words_from_tokens(answer_tokens(labels, None, "label"), tokenizer)
    return {w.key: w.rows for w in words}


def test_bpe_split_word_gets_all_its_subtoken_rows(byte_bpe):
    text = "A red circle riding"
    ids = byte_bpe(text, add_special_tokens=False)["input_ids"]
    pieces = byte_bpe.convert_ids_to_tokens(ids)
    words = _words(byte_bpe, text)
    assert list(words) == ["a", "red", "circle", "riding"]
    # rows are positions - 1, positions start after the 3 prompt tokens
    rows = list(range(2, 2 + len(ids)))
    start = 0
    for key in words:
        n_pieces = 1
        joined = pieces[start].lstrip("Ġ")
        while joined.lower() != key:
            joined += pieces[start + n_pieces]
            n_pieces += 1
        assert words[key] == tuple(rows[start : start + n_pieces])
        start += n_pieces
    assert any(len(r) > 1 for r in words.values()), f"no word was split by BPE: {pieces}"


def test_repeats_punctuation_and_capitals(byte_bpe):
    words = _words(byte_bpe, "The dog, the DOG! ... dog")
    assert list(words) == ["the", "dog"]  # punctuation-only pieces form no word
    dog_ids = byte_bpe(" dog", add_special_tokens=False)["input_ids"]
    assert len(words["dog"]) >= 3 * len(dog_ids) - 1  # all three occurrences, all sub-tokens
    assert len(set(words["dog"])) == len(words["dog"])
    assert _words(byte_bpe, " , ! .") == {}


def test_partial_utf8_byte_token_joins_its_word(byte_bpe):
    ids = byte_bpe("riding éa", add_special_tokens=False)["input_ids"]
    text, spans = token_spans(ids, byte_bpe)
    assert text == "riding éa"
    assert any(a == b for a, b in spans), "expected a token that completes no character"
    assert byte_bpe.convert_ids_to_tokens(ids)[-3:] == ["Ã", "©", "a"]  # "é" is two byte tokens
    words = _words(byte_bpe, "riding éa")
    assert list(words) == ["riding", "éa"]
    assert words["éa"] == tuple(range(2 + len(ids) - 3, 2 + len(ids)))


@pytest.mark.parametrize("text", ["A red circle, dogs! Dogs riding éa", "  two  spaces ü.", "é"])
def test_windowed_spans_equal_the_exact_prefix_spans(byte_bpe, metaspace_bpe, text):
    for tokenizer in (byte_bpe, metaspace_bpe):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(ids)
        windowed = _windowed_spans(ids, tokenizer, decoded)
        assert windowed is not None and windowed == _prefix_spans(ids, tokenizer, decoded)
        assert token_spans(ids, tokenizer) == (decoded, windowed)


def test_sentencepiece_markers_give_the_same_words(byte_bpe, metaspace_bpe):
    text = "The dogs chase a red ball, the dog!"
    assert list(_words(metaspace_bpe, text)) == list(_words(byte_bpe, text))
    assert list(_words(metaspace_bpe, text)) == ["the", "dogs", "chase", "a", "red", "ball", "dog"]


def test_special_tokens_belong_to_no_word(byte_bpe):
    header = byte_bpe.convert_tokens_to_ids("<|start_header_id|>")
    assert header not in byte_bpe.all_special_ids  # an added special token, not a named one
    ids, labels = _answer(byte_bpe, "red square")
    labels = torch.cat([labels, torch.tensor([header, byte_bpe.eos_token_id])])
    words = words_from_tokens(answer_tokens(labels, None, "label"), byte_bpe)
    assert [w.key for w in words] == ["red", "square"]  # no "start", "header", "id"
    assert max(r for w in words for r in w.rows) == len(labels) - 4  # header and eos rows out


def test_predicted_source_reads_argmax_at_the_row_before(byte_bpe):
    ids, labels = _answer(byte_bpe, "red square")
    other = byte_bpe(" blue", add_special_tokens=False)["input_ids"]
    vocab = len(byte_bpe)
    logits = torch.zeros(len(labels), vocab)
    for t in range(3, len(labels)):  # logits[t - 1] predicts the token at t
        logits[t - 1, ids[t - 3]] = 1.0
    logits[2, :] = 0.0
    logits[2, other[0]] = 1.0  # the model predicts " blue" in place of the first answer token
    tokens = answer_tokens(labels, logits.argmax(-1), "predicted")
    assert tokens.rows == tuple(range(2, len(labels) - 1))
    assert tokens.token_ids[0] == other[0] and tokens.token_ids[1:] == tuple(ids[1:])
    label_tokens = answer_tokens(labels, None, "label")
    assert label_tokens.token_ids == tuple(ids) and label_tokens.rows == tokens.rows


def test_separate_answer_turns_are_decoded_separately(byte_bpe):
    first = byte_bpe(" red", add_special_tokens=False)["input_ids"]
    second = byte_bpe("dog", add_special_tokens=False)["input_ids"]
    labels = torch.tensor([-100, *first, -100, -100, *second])
    tokens = answer_tokens(labels, None, "label")
    assert tokens.segments == (0,) * len(first) + (1,) * len(second)
    words = words_from_tokens(tokens, byte_bpe)
    assert [w.key for w in words] == ["red", "dog"]  # not "reddog"


def test_exact_and_root_matching():
    words = [Word("dogs", (4, 5)), Word("red", (6,)), Word("riding", (7,)), Word("dog", (9,))]
    sd = ["Red", "dog", "ride"]
    exact = match_words(words, sd, "exact")
    assert [(m.sd_key, m.sd_index, m.rows) for m in exact] == [("red", 0, (6,)), ("dog", 1, (9,))]
    root = match_words(words, sd, "root")
    # "dogs" and "dog" share SD word "dog": merged, first occurrence order
    assert [(m.sd_key, m.vlm_keys, m.rows) for m in root] == [
        ("dog", ("dogs", "dog"), (4, 5, 9)),
        ("red", ("red",), (6,)),
        ("ride", ("riding",), (7,)),
    ]
    assert match_words([Word("dogs", (1,))], ["dog"], "exact") == []
    assert lemma("dogs") == "dog" and normalise("Dog,") == "dog"


def test_stop_words_are_skipped_on_request():
    words = [Word("the", (1,)), Word("dog", (2,))]
    assert [m.sd_key for m in match_words(words, ["the", "dog"], "exact")] == ["the", "dog"]
    assert [m.sd_key for m in match_words(words, ["the", "dog"], "exact", True)] == ["dog"]


def test_select_words_batch_and_bad_arguments(byte_bpe):
    _, labels_a = _answer(byte_bpe, "The red dogs", prompt_len=2)
    _, labels_b = _answer(byte_bpe, "A bank", prompt_len=2)
    width = max(len(labels_a), len(labels_b))
    labels = torch.full((2, width), -100)
    labels[0, : len(labels_a)] = labels_a
    labels[1, : len(labels_b)] = labels_b
    matched = select_words(
        labels, None, [["dog", "red"], ["river"]], byte_bpe, source="label", matching="root"
    )
    assert [[m.sd_key for m in sample] for sample in matched] == [["red", "dog"], []]
    with pytest.raises(ValueError, match="needs the logits"):
        select_words(labels, None, [[], []], byte_bpe, source="predicted", matching="exact")
    with pytest.raises(ValueError, match="'stem' is not one of"):
        match_words([], [], "stem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not one of 'predicted', 'label'"):
        answer_tokens(labels[0], None, "both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1 SD word lists for a batch of 2"):
        select_words(labels, None, [[]], byte_bpe, source="label", matching="exact")


def test_answer_tokens_dataclass_contract():
    tokens = answer_tokens(torch.tensor([5, -100, 7, 8]), None, "label")
    assert tokens == AnswerTokens((7, 8), (1, 2), (0, 0))  # position 0 is never an answer row
    nothing = answer_tokens(torch.full((4,), -100), torch.zeros(4, dtype=torch.long), "predicted")
    assert nothing == AnswerTokens((), (), ())


# ------------------------------------------------ predicted words: label boundaries (METHOD.md 5)
def _ids(tokenizer, *pieces: str) -> list[int]:
    return [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]


def _predicted(
    tokenizer, label: str, predicted_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [T] of `label` after 3 prompt positions, and predicted ids [T] where the row of
    the k-th answer token (row t - 1 for position t) holds `predicted_ids[k]`."""
    ids, labels = _answer(tokenizer, label)
    assert len(predicted_ids) == len(ids), (tokenizer.convert_ids_to_tokens(ids), predicted_ids)
    predicted = torch.zeros(len(labels), dtype=torch.long)
    predicted[2 : 2 + len(ids)] = torch.tensor(predicted_ids)
    return labels, predicted


def _vlm_words(tokenizer, label: str, predicted_ids: list[int]) -> dict[str, tuple[int, ...]]:
    labels, predicted = _predicted(tokenizer, label, predicted_ids)
    occurrences = word_occurrences(answer_tokens(labels, None, "label"), tokenizer)
    return {w.key: w.rows for w in merge_words(predicted_words(occurrences, predicted, tokenizer))}


def test_predictions_at_different_words_are_never_joined(byte_bpe, metaspace_bpe):
    # byte_bpe: " dog is" -> [" dog", " ", "is"]; the model predicts " dog", " ", "s"
    assert _vlm_words(byte_bpe, " dog is", _ids(byte_bpe, " dog", " ", "s")) == {
        "dog": (2,),
        "s": (4,),
    }
    # metaspace: "dog is" -> ["▁dog", "▁is"]
    assert _vlm_words(metaspace_bpe, "dog is", _ids(metaspace_bpe, "dog") + [24]) == {
        "dog": (2,),
        "s": (3,),
    }
    labels, predicted = _predicted(byte_bpe, " dog is", _ids(byte_bpe, " dog", " ", "s"))
    logits = torch.nn.functional.one_hot(predicted, len(byte_bpe)).float()  # [T] -> [T, V]
    for matching in ("exact", "root"):
        matched = select_words(
            labels[None], logits[None], [["dogs", "dog"]], byte_bpe,
            source="predicted", matching=matching,
        )[0]
        assert [(m.sd_key, m.vlm_keys, m.rows) for m in matched] == [("dog", ("dog",), (2,))]


def test_a_word_of_three_tokens_counts_when_its_predictions_spell_one_word(byte_bpe):
    riding = _ids(byte_bpe, " riding")
    assert byte_bpe.convert_ids_to_tokens(riding) == ["Ġri", "di", "ng"]
    assert _vlm_words(byte_bpe, " riding", riding) == {"riding": (2, 3, 4)}
    # another middle piece spells another word ("rivng"); punctuation or a space splits it
    assert _vlm_words(byte_bpe, " riding", _ids(byte_bpe, " ri", "v", "ng")) == {
        "rivng": (2, 3, 4)
    }
    assert _vlm_words(byte_bpe, " riding", _ids(byte_bpe, " ri", ",", "ng")) == {}
    assert _vlm_words(byte_bpe, " riding", _ids(byte_bpe, " ri", "di", " red")) == {}


def test_a_repeated_word_keeps_only_its_predicted_occurrences(byte_bpe):
    label = _ids(byte_bpe, " dog", ",", " the", " dog")
    predicted = _ids(byte_bpe, " dog", ",", " the", " red")
    assert _vlm_words(byte_bpe, " dog, the dog", predicted) == {
        "dog": (2,),
        "the": (4,),
        "red": (5,),
    }
    assert _vlm_words(byte_bpe, " dog, the dog", label)["dog"] == (2, 5)


def test_predicted_capitals_and_punctuation(byte_bpe, metaspace_bpe):
    # byte_bpe: "Dog" -> ["D", "o", "g"]: label and predictions differ in case only
    assert _vlm_words(byte_bpe, "Dog", _ids(byte_bpe, "d", "o", "g")) == {"dog": (2, 3, 4)}
    assert _vlm_words(byte_bpe, " dog", _ids(byte_bpe, "D")) == {"d": (2,)}
    # punctuation: the label's "." is in no word; a predicted "," at the word's row spells none
    assert _vlm_words(byte_bpe, " dog.", _ids(byte_bpe, " dog", ",")) == {"dog": (2,)}
    assert _vlm_words(byte_bpe, " dog,", _ids(byte_bpe, ",", ",")) == {}
    assert _vlm_words(metaspace_bpe, "dog.", _ids(metaspace_bpe, "dog") + [6]) == {"dog": (2,)}
    # "e-mail" is two words; "-" predicted at "e" spells nothing there
    e_mail = _ids(byte_bpe, " e-mail")
    assert byte_bpe.convert_ids_to_tokens(e_mail) == ["Ġ", "e", "-", "m", "a", "i", "l"]
    assert _vlm_words(byte_bpe, " e-mail", e_mail) == {"e": (3,), "mail": (5, 6, 7, 8)}
    dash = list(e_mail)
    dash[1] = e_mail[2]  # "-" predicted where the label has "e"
    assert _vlm_words(byte_bpe, " e-mail", dash) == {"mail": (5, 6, 7, 8)}


def test_a_predicted_special_token_spells_no_word(byte_bpe):
    header = byte_bpe.convert_tokens_to_ids("<|start_header_id|>")
    for special in (header, byte_bpe.eos_token_id):
        assert _vlm_words(byte_bpe, " dog red", [special] + _ids(byte_bpe, " red")) == {
            "red": (3,)
        }
    riding = _ids(byte_bpe, " riding")
    assert _vlm_words(byte_bpe, " riding", riding[:2] + [byte_bpe.eos_token_id]) == {}
