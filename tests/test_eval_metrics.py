"""Every benchmark metric on literal, hand-computed cases, including each benchmark's edge rules."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest

from lavender_ray.config import MetricName
from lavender_ray.eval import answers as a
from lavender_ray.eval import map_metrics as mm
from lavender_ray.eval import metrics as m
from lavender_ray.eval.metrics import Prediction

ABCD = {"A": "red", "B": "blue", "C": "green", "D": "dark green"}


def row(prediction: str, *answers: str, **kwargs) -> Prediction:
    return Prediction(id=kwargs.pop("id", "q"), prediction=prediction, answers=answers, **kwargs)


# ------------------------------------------------------------------------------------- VQA
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Two  dogs!", "2 dogs"),  # article dropped, number word, "!" -> space
        ("yes.", "yes"),  # period not followed by a digit
        ("3.5", "3.5"),  # decimal point kept
        ("1,000", "1000"),  # digit-comma-digit: every mark deleted
        ("left-hand", "left hand"),  # mark without a space beside it -> space
        ("a - b", "b"),  # mark beside a space -> deleted; "a" is an article
        ("Dont know", "don't know"),  # contraction restored after lower-casing
        ("none\tof\nthem", "0 of them"),
    ],
)
def test_vqa_normalisation(text: str, expected: str) -> None:
    assert a.normalize_vqa_answer(text) == expected


def test_vqa_accuracy_leave_one_out_averaging() -> None:
    # 10 humans; k humans said "red" -> official 10-choose-9 average: 0.3 k for k < 4, else 1
    for k, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["red"] * k + ["blue"] * (10 - k)
        assert a.vqa_accuracy("Red.", answers) == pytest.approx(expected)
    assert a.vqa_accuracy("two", ["2"] * 10) == 1.0  # number words normalised on both sides


def test_vqa_accuracy_single_answer_is_normalised_exact_match() -> None:
    assert a.vqa_accuracy("The dog", ["dog"]) == 1.0
    assert a.vqa_accuracy("dogs", ["dog"]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        a.vqa_accuracy("dog", [])


# ------------------------------------------------------------------------------------ ANLS
def test_levenshtein() -> None:
    assert a.levenshtein("kitten", "sitting") == 3
    assert a.levenshtein("", "abc") == 3
    assert a.levenshtein("abc", "abc") == 0


def test_anls_threshold_and_best_answer() -> None:
    assert a.anls(" ABCD ", ["abcd"]) == 1.0  # case and surrounding spaces ignored
    assert a.anls("abxy", ["abcd"]) == 0.5  # NL = 2/4: exactly the threshold is kept
    assert a.anls("axyz", ["abcd"]) == 0.0  # NL = 3/4 > 0.5 -> 0
    assert a.anls("abcx", ["zzzz", "abcd"]) == 0.75  # best answer counts
    assert a.anls("new   york", ["New York"]) == 1.0  # whitespace runs collapsed
    assert a.anls("", [""]) == 1.0
    assert a.anls("", ["abc"]) == 0.0


# --------------------------------------------------------------------------- relaxed (ChartQA)
@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("12.5", "12", True),  # 0.5 / 12 = 4.2% <= 5%
        ("12.7", "12", False),  # 5.8%
        ("0.45", "45%", True),  # percentages are fractions
        ("46%", "45%", True),  # |0.46 - 0.45| / 0.45 = 2.2%
        ("45", "45%", False),  # 45 vs 0.45
        ("0.0", "0", False),  # zero target: string comparison
        ("0", "0", True),
        ("Yes", "yes", True),  # text: case-insensitive equality
        ("12 apples", "12", False),  # not a number -> string comparison
    ],
)
def test_relaxed_correct(prediction: str, target: str, expected: bool) -> None:
    assert a.relaxed_correct(prediction, target) is expected


def test_relaxed_accuracy_any_answer_and_exact_match() -> None:
    assert a.relaxed_accuracy("20", ["10", "19.5"]) == 1.0
    assert a.exact_match(" Harry Potter ", ["harry potter"]) == 1.0
    assert a.exact_match("Harry Potter.", ["harry potter"]) == 0.0


# ------------------------------------------------------------------------- multiple choice
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("B. blue", "B"),
        ("The answer is D.", "D"),
        ("I think the answer is (B), not A or C.", "B"),  # explicit answer phrase first
        ("Answer: C", "C"),
        ("A", "A"),
        ("A or B", None),  # two letters, no option text
        ("E", None),  # not an option
        ("b", None),  # letters are upper case
        ("It is blue.", "B"),  # option text
        ("A square that is blue", "B"),  # "A" may be the article -> option text decides
        ("dark green", "D"),  # "green" lies inside "dark green"
        ("red or blue", None),  # two option texts
        ("", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert a.extract_choice(text, ABCD) == expected


def test_choice_correct_letter_text_and_open_rows() -> None:
    assert a.choice_correct("The answer is B", ["B"], ABCD) == 1.0
    assert a.choice_correct("B", ["blue"], ABCD) == 1.0  # answer given as the option's text
    assert a.choice_correct("C", ["B"], ABCD) == 0.0
    assert a.choice_correct("Two", ["2"], {}) == 1.0  # open MMMU row: normalised match
    with pytest.raises(ValueError, match="neither an option letter"):
        a.choice_correct("B", ["purple"], ABCD)


def test_multiple_choice_per_category() -> None:
    rows = [row("A", "A", category="x", options=ABCD), row("B", "A", category="x", options=ABCD),
            row("C", "C", category="y", options=ABCD)]
    _, result = m.METRICS["multiple_choice"].evaluate(rows)
    assert result.score == pytest.approx(200 / 3)
    assert result.details == {"x": 50.0, "y": 100.0}


def test_mmbench_circular_eval() -> None:
    # question 5 asked three times (rotations 5, 1000005, 2000005), one wrong -> question wrong
    rows = [row("A", "A", id="5", options=ABCD, category="ocr"),
            row("B", "B", id="1000005", options=ABCD, category="ocr"),
            row("A", "C", id="2000005", options=ABCD, category="ocr"),
            row("D", "D", id="7", options=ABCD, category="scene")]
    _, result = m.METRICS["multiple_choice_circular"].evaluate(rows)
    assert result.score == 50.0
    assert result.details == {"ocr": 0.0, "scene": 100.0, "questions": 2.0}


def test_worldmedqa_per_language() -> None:
    rows = [row("A", "A", options=ABCD, extras={"language": "pt"}),
            row("B", "A", options=ABCD, extras={"language": "pt"}),
            row("C", "C", options=ABCD, extras={"language": "en"}),
            row("D", "C", options=ABCD, extras={"language": "ja"})]
    _, result = m.METRICS["multiple_choice_language"].evaluate(rows)
    assert result.score == 50.0
    assert result.details == {"en": 100.0, "ja": 0.0, "pt": 50.0}


# -------------------------------------------------------------------------------- yes / no
@pytest.mark.parametrize(
    ("text", "expected"),
    [("Yes, there is.", "yes"), ("No.", "no"), ("There is no dog", "no"),
     ("yes and no", "unknown"), ("Not at all", "unknown"), ("YES!", "yes"), ("", "unknown")],
)
def test_extract_yes_no(text: str, expected: str) -> None:
    assert a.extract_yes_no(text) == expected


def test_pope_scores() -> None:
    # (prediction, truth): TP, TP, FP, FN, TN, and an unknown answer on a "no" question
    cases = [("Yes", "yes"), ("yes.", "yes"), ("Yes", "no"), ("No", "yes"), ("no", "no"),
             ("maybe", "no")]
    rows = [row(p, t, category="random" if i < 3 else "adversarial")
            for i, (p, t) in enumerate(cases)]
    scores, result = m.METRICS["pope"].evaluate(rows)
    assert scores == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # unknown is wrong for accuracy
    assert result.score == pytest.approx(100 * 2 / 3)  # P = 2/3, R = 2/3 -> F1 = 2/3
    assert result.details["accuracy"] == pytest.approx(50.0)
    assert result.details["precision"] == pytest.approx(100 * 2 / 3)
    assert result.details["recall"] == pytest.approx(100 * 2 / 3)
    assert result.details["yes_ratio"] == pytest.approx(50.0)
    assert result.details["random/f1"] == pytest.approx(80.0)  # TP 2, FP 1, FN 0: P 2/3, R 1
    assert result.details["adversarial/f1"] == 0.0  # no TP: F1 0, not a division by zero
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        a.yes_no_correct("yes", ["maybe"])


def test_binary_scores_nothing_positive() -> None:
    expected = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    assert m.binary_scores([False, False], [False, False]) == expected


def test_mme_scores() -> None:
    rows = [
        # existence: img1 both right; img2 one of two right -> acc 75 + acc+ 50 = 125
        row("Yes", "Yes", category="existence", image_key="img1"),
        row("No", "No", category="existence", image_key="img1"),
        row("Yes", "Yes", category="existence", image_key="img2"),
        row("Yes", "No", category="existence", image_key="img2"),
        # count: pairs keyed by the image_path column, none right -> 0
        row("No", "Yes", category="count", extras={"image_path": "c/1.jpg"}, image_key="x"),
        row("Yes", "No", category="count", extras={"image_path": "c/1.jpg"}, image_key="y"),
        # cognition: all right -> 200, not part of the perception score
        row("yes", "yes", category="code_reasoning", image_key="img3"),
        row("no", "no", category="code_reasoning", image_key="img3"),
    ]
    _, result = m.METRICS["mme"].evaluate(rows)
    assert result.score == pytest.approx(125.0)
    assert result.max_score == 2000.0
    assert result.details["existence"] == pytest.approx(125.0)
    assert result.details["count"] == 0.0
    assert result.details["cognition"] == 200.0
    assert result.details["perception_subtasks"] == 2.0


# ------------------------------------------------------------------------------- OCRBench
def test_ocrbench_hits() -> None:
    assert a.ocrbench_hit("The text says HELLO world", ["hello"], "Regular Text Recognition") == 1
    assert a.ocrbench_hit("hel lo", ["hello"], "Regular Text Recognition") == 0
    assert a.ocrbench_hit("$x^2 + 1$", ["x^2+1"], a.OCRBENCH_HME) == 1  # spaces removed
    assert a.ocrbench_hit("X^2+1", ["x^2+1"], a.OCRBENCH_HME) == 0  # case-sensitive
    rows = [row("hello", "hello", category="Regular Text Recognition"),
            row("Total: 42", "42", category="Key Information Extraction"),
            row("no idea", "7", category="Doc-oriented VQA")]
    _, result = m.METRICS["ocrbench"].evaluate(rows)
    assert (result.score, result.unit, result.max_score) == (2.0, "hits", 3.0)
    assert result.details["Text Recognition"] == 1.0
    assert result.details["Key Information Extraction"] == 1.0
    assert result.details["Doc-oriented VQA"] == 0.0
    assert result.details["accuracy"] == pytest.approx(200 / 3)


# ------------------------------------------------------------------------------- registry
@pytest.mark.parametrize(
    ("benchmark", "metric"),
    [("TextVQA_VAL", "vqa_accuracy"), ("DocVQA_VAL", "anls"), ("InfoVQA_VAL", "anls"),
     ("ChartQA_TEST", "relaxed_accuracy"), ("MMBench_DEV_CN_V11", "multiple_choice_circular"),
     ("ScienceQA_TEST", "multiple_choice"), ("AI2D_TEST", "multiple_choice"),
     ("MMStar", "multiple_choice"), ("MMMU_DEV_VAL", "multiple_choice"),
     ("WorldMedQA-V", "multiple_choice_language"), ("POPE", "pope"), ("MME", "mme"),
     ("OCRBench", "ocrbench"), ("OCRVQA_TEST", "exact_match"), ("synthetic", "multiple_choice")],
)
def test_benchmark_names_resolve(benchmark: str, metric: str) -> None:
    assert m.metric_for(benchmark).name == metric


def test_metric_overrides_and_unknown_names() -> None:
    assert m.metric_for("my_charts", {"my_charts": "relaxed_accuracy"}).name == "relaxed_accuracy"
    with pytest.raises(ValueError, match="eval.metrics"):
        m.metric_for("my_charts")
    with pytest.raises(ValueError, match="allowed: vqa_accuracy"):
        m.metric_for("x", {"x": "bleu"})


def test_config_metric_names_match_the_registry() -> None:
    assert set(typing.get_args(MetricName)) == set(m.METRICS)


def test_score_rows_skips_unscorable_rows_with_their_id() -> None:
    rows = [row("yes", "yes", id="ok"), row("yes", "perhaps", id="bad")]
    kept, scores, failed = m.score_rows(m.METRICS["pope"], rows)
    assert [r.id for r in kept] == ["ok"] and scores == [1.0]
    assert list(failed) == ["bad"] and "'yes' or 'no'" in failed["bad"]


# ------------------------------------------------------------------------ attention maps
def test_map_mse_and_pearson() -> None:
    a = np.array([[0.0, 1.0], [0.0, 1.0]])
    b = np.array([[0.0, 0.5], [0.5, 1.0]])
    assert mm.map_mse(a, b) == pytest.approx((0.25 + 0.25) / 4)
    assert mm.map_pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert mm.map_pearson(a, 1 - a) == pytest.approx(-1.0)
    # a - mean = [-.5, .5, -.5, .5]; b - mean = [-.5, 0, 0, .5] -> 0.5 / sqrt(1 * 0.5)
    assert mm.map_pearson(a, b) == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(mm.map_pearson(a, np.ones((2, 2))))
    with pytest.raises(ValueError, match="different shapes"):
        mm.map_mse(a, np.zeros((3, 3)))


def test_top10_iou() -> None:
    a = np.zeros((10, 10))
    a[0] = 1.0  # top 10 pixels: row 0
    b = np.zeros((10, 10))
    b[0, :5] = 1.0
    b[1, :5] = 1.0  # top 10: half of row 0, half of row 1 -> intersection 5, union 15
    assert mm.top_fraction_iou(a, b) == pytest.approx(1 / 3)
    assert mm.top_fraction_iou(a, a) == 1.0
    # 32 x 32: ceil(102.4) = 103 pixels; ties go to the earlier pixels
    assert mm.top_fraction_mask(np.zeros((32, 32)), 0.1).sum() == 103
    assert mm.top_fraction_mask(np.zeros((2, 2)), 0.1).tolist() == [[True, False], [False, False]]


def test_map_agreement_means_over_words() -> None:
    target = np.stack([np.eye(10), np.eye(10)])
    predicted = np.stack([np.eye(10), np.zeros((10, 10))])  # a perfect word and a constant one
    scores = mm.map_agreement(predicted, target)
    assert scores["mse"] == pytest.approx((0 + 0.1) / 2)
    assert scores["pearson"] == pytest.approx(1.0)  # the constant map's NaN is left out
    assert scores["iou_top10"] == pytest.approx((1.0 + 1 / 19) / 2)
