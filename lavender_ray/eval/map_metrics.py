"""Agreement of attention maps with SD maps: per-word MSE, Pearson correlation, top-10% IoU.

Pure (numpy): maps are float arrays of the same shape, one per word.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def map_mse(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean squared difference of two maps of the same shape."""
    _same_shape(predicted, target)
    return float(np.mean((predicted.astype(np.float64) - target.astype(np.float64)) ** 2))


def map_pearson(predicted: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation of two maps over their pixels; NaN when either map is constant."""
    _same_shape(predicted, target)
    a = predicted.astype(np.float64).ravel() - predicted.mean()
    b = target.astype(np.float64).ravel() - target.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else math.nan


def top_fraction_mask(values: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ceil(fraction * pixels) largest values (ties: the earlier pixel in
    row-major order wins), same shape as `values`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = values.ravel()
    k = max(1, math.ceil(fraction * flat.size - 1e-9))
    order = np.argsort(-flat, kind="stable")[:k]
    mask = np.zeros(flat.size, dtype=bool)
    mask[order] = True
    return mask.reshape(values.shape)


def top_fraction_iou(predicted: np.ndarray, target: np.ndarray, fraction: float = 0.1) -> float:
    """Intersection over union of the two maps' top-`fraction` pixel sets (default top 10%)."""
    _same_shape(predicted, target)
    a, b = top_fraction_mask(predicted, fraction), top_fraction_mask(target, fraction)
    return float((a & b).sum() / (a | b).sum())


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {a.shape} vs {b.shape}")


MAP_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "mse": map_mse,
    "pearson": map_pearson,
    "iou_top10": top_fraction_iou,
}


def map_agreement(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Per-word agreement of maps [n, s, s] with targets [n, s, s]: the mean over words of each
    `MAP_METRICS` entry (NaN correlations of constant maps left out; NaN if none is left)."""
    _same_shape(predicted, target)
    out = {}
    for name, fn in MAP_METRICS.items():
        values = [fn(p, t) for p, t in zip(predicted, target)]
        finite = [v for v in values if not math.isnan(v)]
        out[name] = float(np.mean(finite)) if finite else math.nan
    return out
