"""Benchmark metrics: each benchmark's per-row rule (`eval.answers`) and its summary over the
rows (map metrics: `eval.map_metrics`).

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

from lavender_ray.eval.answers import (
    OCRBENCH_HME,
    anls,
    choice_correct,
    exact_match,
    extract_yes_no,
    ocrbench_hit,
    relaxed_accuracy,
    vqa_accuracy,
    yes_no_correct,
    yes_no_reference,
)

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


# ------------------------------------------------------------------------------ POPE, OCRBench
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
