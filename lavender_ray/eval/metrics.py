"""Benchmark metrics with each benchmark's own answer rules (map metrics: `eval.map_metrics`).

Pure module (standard library): every function here is deterministic and unit-tested on
hand-computed cases. Scoring follows VLMEvalKit's rule-based evaluation (no LLM judge):

- ``vqa_accuracy`` (TextVQA, VQAv2): official VQA answer normalisation; the mean over the
  leave-one-out subsets of min(#matching answers / 3, 1); accuracy %.
- ``anls`` (DocVQA, InfoVQA): 1 - normalised Levenshtein distance, 0 below 0.5; ANLS %.
- ``relaxed_accuracy`` (ChartQA): numbers within 5% of the answer ("45%" = 0.45), else
  case-insensitive equality; accuracy %.
- ``exact_match`` (OCR-VQA): stripped, case-insensitive equality; accuracy %.
- ``multiple_choice`` (ScienceQA, AI2D, MMStar, MMMU, ...): the option letter extracted from the
  free-text answer; accuracy %, per category.
- ``multiple_choice_circular`` (MMBench, CCBench): as above with CircularEval (a question counts
  only if all its rotated copies are right); accuracy %, per category.
- ``multiple_choice_language`` (WorldMedQA-V): as ``multiple_choice``, per language.
- ``pope``: yes/no extracted, "yes" is the positive class; F1 %, with accuracy, precision,
  recall, yes-ratio and per-split accuracy and F1.
- ``mme``: yes/no; per subtask acc + acc+ (all questions of an image right); the perception
  score (0-2000), with the cognition score (0-800) and every subtask.
- ``ocrbench``: an answer is a substring of the prediction (handwritten maths: case- and
  space-sensitive); hits (of 1000 for the full set).

A benchmark name maps to its metric through `BENCHMARK_METRICS` (longest matching prefix of the
normalised name, e.g. "MMBench_DEV_CN_V11" -> "mmbench"), or explicitly through the config field
`eval.metrics`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

PromptStyle = Literal["short", "yes_no"]


@dataclass(frozen=True)
class Prediction:
    """One benchmark row's model output and what it is scored against.

    `answers` are the accepted answers (for multiple choice: the correct option letter);
    `options` maps letters to option texts (empty for open questions); `image_key` identifies
    the row's image (MME pairs the questions of one image); `extras` holds every other column.
    """

    id: str
    prediction: str
    answers: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    category: str = ""
    image_key: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricResult:
    """A benchmark's score for one model: the headline `score` (in `unit`, between 0 and
    `max_score`), the number of rows scored and named sub-scores (`details`)."""

    metric: str
    score: float
    unit: str
    max_score: float
    n: int
    details: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------- VQA answer normalisation
# The official VQA evaluation's tables (visualqa.org `vqaEval.py`), kept verbatim, quirks included.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")  # fmt: skip
COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a look-ahead (not a
# look-behind), so it removes every period that is not followed by a digit.
PERIOD = re.compile(r"\.(?!\d)")


def strip_vqa_punctuation(text: str) -> str:
    """The official `processPunctuation`: a punctuation mark next to a space (or any mark, when
    the text has a digit-comma-digit) is deleted, otherwise replaced by a space; periods not
    followed by a digit are deleted ("3.5" keeps its period)."""
    out = text
    delete_all = COMMA_IN_NUMBER.search(text) is not None
    for mark in PUNCTUATION:
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD.sub("", out)


def normalize_vqa_answer(text: str) -> str:
    """The official VQA answer normalisation (as VLMEvalKit applies it to predictions and
    references): newlines/tabs to spaces, punctuation rules, lower case, number words to digits
    ("two" -> "2"), articles dropped, missing apostrophes restored ("dont" -> "don't")."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    words = [NUMBER_WORDS.get(w, w) for w in strip_vqa_punctuation(text).lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of one prediction against the human answers.

    With n >= 2 answers: the mean over the n leave-one-out subsets of min(#answers in the subset
    equal to the prediction / 3, 1), all strings normalised by `normalize_vqa_answer` - the
    official VQA averaging over the 10-choose-9 subsets for n = 10 (so 1, 2, 3 matching humans
    give 0.3, 0.6, 0.9). With a single answer: 1 if the normalised strings are equal, else 0.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer, got none")
    pred = normalize_vqa_answer(prediction)
    refs = [normalize_vqa_answer(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    matches = sum(ref == pred for ref in refs)
    per_subset = [min(1.0, (matches - (ref == pred)) / 3.0) for ref in refs]
    return sum(per_subset) / len(per_subset)


# ---------------------------------------------------------------------------------- ANLS
def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character, each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one prediction (DocVQA, InfoVQA), in [0, 1].

    Both strings are lower-cased with whitespace collapsed; the similarity to an answer is
    1 - levenshtein / max(len); the best answer counts, and a similarity below `threshold` scores
    0 (as the official evaluation: exactly 0.5 is kept). Two empty strings are identical (1).
    """
    if not answers:
        raise ValueError("anls needs at least one reference answer, got none")
    pred = " ".join(prediction.strip().lower().split())
    best = 0.0
    for answer in answers:
        ref = " ".join(str(answer).strip().lower().split())
        length = max(len(ref), len(pred))
        best = max(best, 1.0 - (levenshtein(ref, pred) / length if length else 0.0))
    return best if best >= threshold else 0.0


# ---------------------------------------------------------------------- relaxed accuracy
def _relaxed_float(text: str) -> float | None:
    """ChartQA's number parsing: "45%" -> 0.45, "12.5" -> 12.5, anything else -> None."""
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, tolerance: float = 0.05) -> bool:
    """ChartQA relaxed correctness (pix2struct's rule, as VLMEvalKit): if both parse as numbers
    and the target is non-zero, right iff |pred - target| / |target| <= `tolerance`; otherwise
    right iff the strings are equal ignoring case. Percentages are fractions ("45%" = 0.45)."""
    pred, ref = prediction.strip(), str(target).strip()
    pred_value, ref_value = _relaxed_float(pred), _relaxed_float(ref)
    if pred_value is not None and ref_value:
        return abs(pred_value - ref_value) / abs(ref_value) <= tolerance
    return pred.lower() == ref.lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str], tolerance: float = 0.05) -> float:
    """1.0 if the prediction is relaxed-correct for any answer, else 0.0."""
    return float(any(relaxed_correct(prediction, a, tolerance) for a in answers))


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the stripped, lower-cased prediction equals an answer (OCR-VQA), else 0.0."""
    pred = prediction.strip().lower()
    return float(any(pred == str(a).strip().lower() for a in answers))


# ------------------------------------------------------------------------ multiple choice
OPTION_PUNCTUATION = ".()[],:;!*#{}"
EXPLICIT_ANSWER = re.compile(r"(?i:\banswer\s*(?:is\s*:?|:)\s*)\(?([A-Z])\)?(?![A-Za-z0-9])")


def extract_choice(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a free-text answer picks, or None when it cannot be told.

    In order: (1) an explicit "answer is X" / "Answer: (X)" naming an option letter;
    (2) VLMEvalKit's `can_infer_option`: the text split on spaces and ``.()[],:;!*#{}``; exactly
    one option letter among the tokens wins, except that an "A" token in a text of more than
    three tokens may be the article, which makes the letter rule undecided; (3) VLMEvalKit's
    `can_infer_text`: the one option whose text occurs in the answer (case-insensitive), where an
    option whose text lies inside another matching option's text is dropped first ("red" inside
    "dark red"). Letters are upper case; "b" alone is not option B.
    """
    explicit = EXPLICIT_ANSWER.search(text)
    if explicit and explicit.group(1) in options:
        return explicit.group(1)
    tokens = text
    for mark in OPTION_PUNCTUATION:
        tokens = tokens.replace(mark, " ")
    splits = tokens.split()
    letters = [letter for letter in options if letter in splits]
    if len(letters) == 1 and not ("A" in splits and len(splits) > 3):
        return letters[0]
    lowered = text.lower()
    texts = {k: str(v).lower() for k, v in options.items() if str(v).strip()}
    found = {k: v for k, v in texts.items() if v in lowered}
    kept = [k for k, v in found.items() if not any(v != w and v in w for w in found.values())]
    return kept[0] if len(kept) == 1 else None


def choice_correct(prediction: str, answers: Sequence[str], options: Mapping[str, str]) -> float:
    """1.0 if the extracted option letter is the answer, else 0.0.

    The answer is an option letter, or an option's text (then its letter counts). A row without
    options (MMMU's open questions) is right iff its normalised text equals an answer's
    (`normalize_vqa_answer`).
    """
    if not answers:
        raise ValueError("a multiple-choice row needs its answer, got none")
    if not options:
        pred = normalize_vqa_answer(prediction)
        return float(any(pred == normalize_vqa_answer(a) for a in answers))
    gold = answer_letter(answers[0], options)
    return float(extract_choice(prediction, options) == gold)


def answer_letter(answer: str, options: Mapping[str, str]) -> str:
    """The option letter of a reference answer given as a letter or as an option's text."""
    answer = str(answer).strip()
    if answer in options:
        return answer
    by_text = [k for k, v in options.items() if str(v).strip().lower() == answer.lower()]
    if len(by_text) == 1:
        return by_text[0]
    raise ValueError(
        f"answer {answer!r} is neither an option letter nor one option's text; "
        f"options: {dict(options)}"
    )


# --------------------------------------------------------------------------------- yes / no
YesNo = Literal["yes", "no", "unknown"]


def extract_yes_no(text: str) -> YesNo:
    """VLMEvalKit's `YOrN_Extraction`: lower case, VQA punctuation rules, split into words;
    "yes" without "no" is yes, "no" without "yes" is no, anything else unknown."""
    words = strip_vqa_punctuation(text.lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "yes"
    if has_no and not has_yes:
        return "no"
    return "unknown"


def yes_no_reference(answers: Sequence[str]) -> YesNo:
    """A yes/no benchmark's reference answer, normalised; anything but yes/no is an error."""
    value = str(answers[0]).strip().lower() if answers else ""
    if value not in ("yes", "no"):
        raise ValueError(f"a yes/no row needs the answer 'yes' or 'no', got {list(answers)!r}")
    return value  # type: ignore[return-value]


def yes_no_correct(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the extracted yes/no equals the reference; "unknown" is always wrong."""
    return float(extract_yes_no(prediction) == yes_no_reference(answers))


def binary_scores(truth: Sequence[bool], predicted: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of the positive class and the ratio of positive predictions,
    each in [0, 1]; precision (recall) is 0 when nothing is predicted (labelled) positive."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} labels for {len(predicted)} predictions")
    tp = sum(t and p for t, p in zip(truth, predicted))
    fp = sum(p and not t for t, p in zip(truth, predicted))
    fn = sum(t and not p for t, p in zip(truth, predicted))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    yes_ratio = sum(predicted) / len(predicted) if predicted else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "yes_ratio": yes_ratio}


# ----------------------------------------------------------------------------------- OCRBench
OCRBENCH_HME = "Handwritten Mathematical Expression Recognition"
OCRBENCH_GROUPS = {
    "Text Recognition": (
        "Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
        "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
    ),
    "Scene Text-centric VQA": ("Scene Text-centric VQA",),
    "Doc-oriented VQA": ("Doc-oriented VQA",),
    "Key Information Extraction": ("Key Information Extraction",),
    OCRBENCH_HME: (OCRBENCH_HME,),
}  # fmt: skip


def ocrbench_hit(prediction: str, answers: Sequence[str], category: str) -> float:
    """OCRBench: 1.0 if an answer is a substring of the prediction. Handwritten mathematical
    expressions compare case-sensitively with all spaces removed; every other category
    compares lower-cased, stripped, newlines as spaces."""
    if category == OCRBENCH_HME:
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        return float(any(a.strip().replace("\n", " ").replace(" ", "") in pred for a in answers))
    pred = prediction.lower().strip().replace("\n", " ")
    return float(any(a.lower().strip().replace("\n", " ") in pred for a in answers))


# ------------------------------------------------------------------------------- summaries
def _by(keys: Iterable[str], scores: Iterable[float]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for key, score in zip(keys, scores):
        groups[key].append(score)
    return dict(groups)


def _percent(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def mean_summary(metric: str, rows: Sequence[Prediction], scores: Sequence[float],
                 group_by: Callable[[Prediction], str] = lambda r: r.category) -> MetricResult:
    """Mean per-row score in %, with the mean of each group (default: category) as details."""
    groups = _by((group_by(r) for r in rows), scores)
    details = {k: _percent(v) for k, v in sorted(groups.items()) if k}
    return MetricResult(metric, _percent(scores), "%", 100.0, len(rows), details)


def circular_group(row: Prediction) -> str:
    """MMBench CircularEval: VLMEvalKit stores the k-th rotation of question i with index
    i + k * 1e6, so copies share `index % 1_000_000`; a non-numeric id is its own group."""
    return str(int(row.id) % 1_000_000) if row.id.lstrip("-").isdigit() else row.id


def circular_summary(
    metric: str, rows: Sequence[Prediction], scores: Sequence[float]
) -> MetricResult:
    """Accuracy % over circular groups: a question is right only if all its copies are."""
    groups = _by((circular_group(r) for r in rows), scores)
    category = {circular_group(r): r.category for r in rows}
    passed = {g: float(all(s == 1.0 for s in v)) for g, v in groups.items()}
    per_category = _by((category[g] for g in passed), passed.values())
    details = {k: _percent(v) for k, v in sorted(per_category.items()) if k}
    details["questions"] = float(len(passed))
    return MetricResult(metric, _percent(list(passed.values())), "%", 100.0, len(rows), details)


def language_of(row: Prediction) -> str:
    """WorldMedQA-V's language: the `language` column (in extras), else the category."""
    return str(row.extras.get("language") or row.category or "")


def pope_summary(metric: str, rows: Sequence[Prediction], scores: Sequence[float]) -> MetricResult:
    """POPE: F1 % with "yes" as the positive class over all rows (an unknown answer counts as "not
    yes"), plus accuracy (the per-row scores: unknown is wrong), precision, recall and yes-ratio
    in %, and accuracy and F1 per category (the POPE split)."""

    def scores_of(subset: Sequence[tuple[Prediction, float]]) -> dict[str, float]:
        truth = [yes_no_reference(r.answers) == "yes" for r, _ in subset]
        predicted = [extract_yes_no(r.prediction) == "yes" for r, _ in subset]
        out = {k: 100.0 * v for k, v in binary_scores(truth, predicted).items()}
        out["accuracy"] = _percent([s for _, s in subset])
        return out

    pairs = list(zip(rows, scores))
    overall = scores_of(pairs)
    details = {k: v for k, v in overall.items() if k != "f1"}
    splits: dict[str, list[tuple[Prediction, float]]] = defaultdict(list)
    for pair in pairs:
        splits[pair[0].category].append(pair)
    for name, subset in sorted(splits.items()):
        if name:
            split = scores_of(subset)
            details[f"{name}/accuracy"], details[f"{name}/f1"] = split["accuracy"], split["f1"]
    return MetricResult(metric, overall["f1"], "%", 100.0, len(rows), details)


MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR")  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
                 "code_reasoning")  # fmt: skip


def mme_pair_key(row: Prediction) -> str:
    """The image a question belongs to: the `image_path` column (in extras), else the image."""
    return str(row.extras.get("image_path") or row.image_key or row.id)


def mme_subtask_score(rows: Sequence[Prediction], scores: Sequence[float]) -> float:
    """One MME subtask: acc (% of questions right) + acc+ (% of images whose questions are all
    right), at most 200."""
    images = _by((mme_pair_key(r) for r in rows), scores)
    plus = [float(all(s == 1.0 for s in v)) for v in images.values()]
    return _percent(scores) + _percent(plus)


def mme_summary(metric: str, rows: Sequence[Prediction], scores: Sequence[float]) -> MetricResult:
    """MME: the perception score (sum of the perception subtasks present, at most 2000) with the
    cognition score and every subtask's score as details."""
    subtasks = defaultdict(list)
    for row, score in zip(rows, scores):
        subtasks[row.category].append((row, score))
    per_task = {
        name: mme_subtask_score([r for r, _ in pairs], [s for _, s in pairs])
        for name, pairs in sorted(subtasks.items())
    }
    perception = sum(v for k, v in per_task.items() if k in MME_PERCEPTION)
    details = {"cognition": sum(v for k, v in per_task.items() if k in MME_COGNITION)}
    details["perception_subtasks"] = float(sum(k in MME_PERCEPTION for k in per_task))
    details.update(per_task)
    maximum = 200.0 * len(MME_PERCEPTION)
    return MetricResult(metric, perception, "points", maximum, len(rows), details)


def ocrbench_summary(
    metric: str, rows: Sequence[Prediction], scores: Sequence[float]
) -> MetricResult:
    """OCRBench: the number of hits (the official score, out of 1000 for the full set), hits per
    official group, and the hit rate in %."""
    hits = _by((r.category for r in rows), scores)
    details = {group: float(sum(sum(hits.get(c, [])) for c in members))
               for group, members in OCRBENCH_GROUPS.items()}
    details["accuracy"] = _percent(scores)
    return MetricResult(metric, float(sum(scores)), "hits", float(len(rows)), len(rows), details)


# -------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    """A benchmark metric: how the prompt asks (`prompt`: rows with options always get the
    multiple-choice prompt), the per-row score in [0, 1] and the summary over all rows."""

    name: str
    prompt: PromptStyle
    score_row: Callable[[Prediction], float]
    summarize: Callable[[str, Sequence[Prediction], Sequence[float]], MetricResult]

    def evaluate(self, rows: Sequence[Prediction]) -> tuple[list[float], MetricResult]:
        """Per-row scores and the summary. Raises `ValueError` naming the first row that
        cannot be scored (use `score_rows` to skip such rows instead)."""
        scores = [self.score_row(r) for r in rows]
        return scores, self.summarize(self.name, rows, scores)


def _choice(row: Prediction) -> float:
    return choice_correct(row.prediction, row.answers, row.options)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("vqa_accuracy", "short", lambda r: vqa_accuracy(r.prediction, r.answers),
               mean_summary),
        Metric("anls", "short", lambda r: anls(r.prediction, r.answers), mean_summary),
        Metric("relaxed_accuracy", "short", lambda r: relaxed_accuracy(r.prediction, r.answers),
               mean_summary),
        Metric("exact_match", "short", lambda r: exact_match(r.prediction, r.answers),
               mean_summary),
        Metric("multiple_choice", "short", _choice, mean_summary),
        Metric("multiple_choice_circular", "short", _choice, circular_summary),
        Metric("multiple_choice_language", "short", _choice,
               lambda name, rows, scores: mean_summary(name, rows, scores, language_of)),
        Metric("pope", "yes_no", lambda r: yes_no_correct(r.prediction, r.answers), pope_summary),
        Metric("mme", "yes_no", lambda r: yes_no_correct(r.prediction, r.answers), mme_summary),
        Metric("ocrbench", "short", lambda r: ocrbench_hit(r.prediction, r.answers, r.category),
               ocrbench_summary),
    )
}

# normalised benchmark-name prefix -> metric (VLMEvalKit's default metric of each benchmark)
BENCHMARK_METRICS: dict[str, str] = {
    "textvqa": "vqa_accuracy",
    "vqav2": "vqa_accuracy",
    "docvqa": "anls",
    "infovqa": "anls",
    "chartqa": "relaxed_accuracy",
    "ocrvqa": "exact_match",
    "mmbench": "multiple_choice_circular",
    "ccbench": "multiple_choice_circular",
    "scienceqa": "multiple_choice",
    "ai2d": "multiple_choice",
    "mmstar": "multiple_choice",
    "mmmu": "multiple_choice",
    "realworldqa": "multiple_choice",
    "seedbench": "multiple_choice",
    "worldmedqa": "multiple_choice_language",
    "pope": "pope",
    "mme": "mme",
    "ocrbench": "ocrbench",
    "synthetic": "multiple_choice",
}


def normalize_benchmark_name(name: str) -> str:
    """Lower case, letters and digits only: "MMBench_DEV_CN_V11" -> "mmbenchdevcnv11"."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def metric_for(benchmark: str, overrides: Mapping[str, str] | None = None) -> Metric:
    """The metric of a benchmark: `overrides[benchmark]` (config `eval.metrics`) if given, else
    the longest `BENCHMARK_METRICS` prefix of the normalised name. Raises `ValueError` listing
    the known benchmark names and metrics."""
    overrides = overrides or {}
    if benchmark in overrides:
        name = overrides[benchmark]
        if name not in METRICS:
            raise ValueError(
                f"eval.metrics.{benchmark}={name!r} is not a metric; allowed: {', '.join(METRICS)}"
            )
        return METRICS[name]
    normalized = normalize_benchmark_name(benchmark)
    prefixes = [p for p in BENCHMARK_METRICS if normalized.startswith(p)]
    if not prefixes:
        raise ValueError(
            f"benchmark {benchmark!r} has no known metric: its name starts with none of "
            f"{', '.join(sorted(BENCHMARK_METRICS))}; name its metric in eval.metrics "
            f"(one of {', '.join(METRICS)})"
        )
    return METRICS[BENCHMARK_METRICS[max(prefixes, key=len)]]


def score_rows(
    metric: Metric, rows: Sequence[Prediction]
) -> tuple[list[Prediction], list[float], dict[str, str]]:
    """Score each row on its own: (rows scored, their scores, {id: why} of rows that could not be
    scored, e.g. a yes/no row whose answer is "maybe")."""
    kept, scores, failed = [], [], {}
    for row in rows:
        try:
            scores.append(metric.score_row(row))
        except ValueError as err:
            failed[row.id] = str(err)
            continue
        kept.append(row)
    return kept, scores, failed
