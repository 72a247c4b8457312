"""Per-answer scoring rules of the benchmarks: one prediction against its accepted answers.

Pure module (standard library), following VLMEvalKit's rule-based evaluation (no LLM judge); the
per-benchmark summaries and the benchmark -> metric registry are in `eval.metrics`.

- ``vqa_accuracy`` (TextVQA, VQAv2): official VQA answer normalisation; the mean over the
  leave-one-out subsets of min(#matching answers / 3, 1).
- ``anls`` (DocVQA, InfoVQA): 1 - normalised Levenshtein distance, 0 below 0.5.
- ``relaxed_accuracy`` (ChartQA): numbers within 5% of the answer ("45%" = 0.45), else
  case-insensitive equality.
- ``exact_match`` (OCR-VQA): stripped, case-insensitive equality.
- ``choice_correct``: the option letter extracted from a free-text answer.
- ``yes_no_correct`` (POPE, MME): yes/no extracted the way VLMEvalKit does.
- ``ocrbench_hit``: an answer is a substring of the prediction (handwritten maths: case- and
  space-sensitive).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

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


# ----------------------------------------------------------------------------------- OCRBench
OCRBENCH_HME = "Handwritten Mathematical Expression Recognition"


def ocrbench_hit(prediction: str, answers: Sequence[str], category: str) -> float:
    """OCRBench: 1.0 if an answer is a substring of the prediction. Handwritten mathematical
    expressions compare case-sensitively with all spaces removed; every other category
    compares lower-cased, stripped, newlines as spaces."""
    if category == OCRBENCH_HME:
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        return float(any(a.strip().replace("\n", " ").replace(" ", "") in pred for a in answers))
    pred = prediction.lower().strip().replace("\n", " ")
    return float(any(a.lower().strip().replace("\n", " ") in pred for a in answers))
