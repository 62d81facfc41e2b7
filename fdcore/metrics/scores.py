"""Metric functions on binary labels (1 = AI-generated) and scores (P(fake), higher = more likely generated).

Everything here is numpy on 1-D arrays; ROC AUC itself comes from the packaged ``evaluate`` metric module
(:func:`fdcore.metrics.load_roc_auc_metric`). Decision rule everywhere: an image is called AI-generated when
``score >= threshold``. ROC vertices are taken at the *distinct* score values, so tied scores move together.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fdcore.errors import FdcoreError

ROC_AUC_MODULE_PATH = Path(__file__).parent / "roc_auc"
DEFAULT_ECE_BINS = 15
DEFAULT_CONFIDENCE = 0.95


class MetricError(FdcoreError):
    """Labels or scores that a metric cannot be computed on."""


@functools.lru_cache(maxsize=1)
def load_roc_auc_metric():
    """The ROC AUC ``evaluate`` metric, loaded by path from the package (no network; loaded once per process).

    ``keep_in_memory`` keeps evaluate from writing Arrow cache files for every computation.
    """
    import evaluate

    try:
        return evaluate.load(str(ROC_AUC_MODULE_PATH), keep_in_memory=True)
    except OSError as error:
        raise MetricError(
            f"could not load the ROC AUC metric module from {ROC_AUC_MODULE_PATH}: {error}. evaluate copies it into "
            "HF_MODULES_CACHE (default ~/.cache/huggingface/modules); point HF_MODULES_CACHE at a writable folder"
        ) from error


def _module_auc_function() -> Callable[..., float]:
    """``binary_roc_auc`` of the module evaluate loaded: the same code as ``compute``, without Arrow round trips."""
    metric = load_roc_auc_metric()
    return sys.modules[type(metric).__module__].binary_roc_auc


def as_binary(labels, scores, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (int8 labels in {0,1}, float64 finite scores) of equal length."""
    labels_array = np.asarray(labels).reshape(-1)
    scores_array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels_array.shape != scores_array.shape:
        raise MetricError(f"{what}: {labels_array.size} labels but {scores_array.size} scores")
    if labels_array.dtype == bool:
        labels_array = labels_array.astype(np.int8)
    if labels_array.size and not np.isin(labels_array, (0, 1)).all():
        bad = labels_array[~np.isin(labels_array, (0, 1))][0]
        raise MetricError(f"{what}: labels must be 0 (real) or 1 (AI-generated), found {bad!r}")
    if not np.isfinite(scores_array).all():
        raise MetricError(f"{what}: scores contain NaN or infinite values at positions "
                          f"{np.flatnonzero(~np.isfinite(scores_array))[:5].tolist()}")
    return labels_array.astype(np.int8), scores_array


def require_both_classes(labels: np.ndarray, what: str = "scores") -> None:
    n_fake = int(labels.sum())
    n_real = int(labels.size - n_fake)
    if n_fake == 0 or n_real == 0:
        raise MetricError(
            f"{what}: ROC AUC needs both real (0) and AI-generated (1) images, but there are {n_real} real and "
            f"{n_fake} AI-generated; evaluate on data with both classes"
        )


def roc_auc(labels, scores, what: str = "scores") -> float:
    """ROC AUC through the packaged ``evaluate`` metric (``compute``). Raises :class:`MetricError` on one class.

    Example:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    labels_array, scores_array = as_binary(labels, scores, what)
    require_both_classes(labels_array, what)
    result = load_roc_auc_metric().compute(references=labels_array.astype(np.int32), prediction_scores=scores_array)
    return float(result["roc_auc"])


def fast_roc_auc(labels, scores, what: str = "scores", sample_weight=None) -> float:
    """The same computation as :func:`roc_auc` (the metric module's function) without evaluate's per-call overhead;
    used for the many small groups of a breakdown and for bootstrap replicates."""
    labels_array, scores_array = as_binary(labels, scores, what)
    require_both_classes(labels_array, what)
    return float(_module_auc_function()(labels_array, scores_array, sample_weight))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC vertices ``(fpr, tpr, thresholds)`` from the strictest threshold down, one vertex per distinct score.

    ``thresholds[0]`` is ``+inf`` (nothing called AI-generated); vertex ``i`` calls ``score >= thresholds[i]`` fake.
    """
    labels_array, scores_array = as_binary(labels, scores)
    require_both_classes(labels_array)
    true_positives, false_positives, thresholds = _cumulative_counts(labels_array, scores_array)
    return false_positives / false_positives[-1], true_positives / true_positives[-1], thresholds


def _cumulative_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order].astype(np.float64)
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_positives = np.r_[0.0, np.cumsum(sorted_labels)[last_of_run]]
    false_positives = np.r_[0.0, np.cumsum(1.0 - sorted_labels)[last_of_run]]
    thresholds = np.r_[np.inf, sorted_scores[last_of_run]]
    return true_positives, false_positives, thresholds


def average_precision(labels, scores) -> float:
    """Step-wise average precision: sum over ROC vertices of (recall increase) x precision; no interpolation."""
    labels_array, scores_array = as_binary(labels, scores)
    require_both_classes(labels_array)
    true_positives, false_positives, _ = _cumulative_counts(labels_array, scores_array)
    recall = true_positives / true_positives[-1]
    called = true_positives[1:] + false_positives[1:]
    precision = true_positives[1:] / called
    return float(np.sum(np.diff(recall) * precision))


def threshold_at_fpr(labels, scores, target_fpr: float) -> dict[str, float]:
    """The lowest threshold whose false-positive rate is at most ``target_fpr`` (so the highest TPR under it).

    Returns ``{"threshold", "fpr", "tpr"}``; the threshold is one of the scores (or just above the highest score when
    even that one gives too many false positives). ``score >= threshold`` is called AI-generated.
    """
    if not 0.0 <= float(target_fpr) <= 1.0:
        raise MetricError(f"target FPR must be in [0, 1], got {target_fpr!r}")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    # fpr is non-decreasing along the vertices, so the allowed vertices are a prefix.
    index = int(np.searchsorted(fpr, float(target_fpr) * (1 + 1e-12), side="right")) - 1
    threshold = thresholds[index]
    if math.isinf(threshold):
        threshold = float(np.nextafter(thresholds[1], np.inf))
    return {"threshold": float(threshold), "fpr": float(fpr[index]), "tpr": float(tpr[index])}


def equal_error_rate(labels, scores) -> dict[str, float]:
    """EER: where the ROC polyline crosses FPR = FNR (linear interpolation between adjacent vertices).

    ``threshold`` is the score of the first vertex at or past the crossing.
    """
    fpr, tpr, thresholds = roc_curve(labels, scores)
    gap = fpr - (1.0 - tpr)  # -1 at the first vertex, +1 at the last, non-decreasing in between
    index = int(np.argmax(gap >= 0))
    if gap[index] == 0 or index == 0:
        rate = float(fpr[index])
    else:
        fraction = -gap[index - 1] / (gap[index] - gap[index - 1])
        rate = float(fpr[index - 1] + fraction * (fpr[index] - fpr[index - 1]))
    return {"eer": rate, "threshold": float(thresholds[index])}


def threshold_metrics(labels, scores, threshold: float) -> dict[str, Any]:
    """Accuracy, balanced accuracy, TPR, FPR and confusion counts for ``score >= threshold`` = AI-generated.

    Balanced accuracy and the rates of a class that is absent are ``None``.
    """
    labels_array, scores_array = as_binary(labels, scores)
    called_fake = scores_array >= float(threshold)
    fake = labels_array == 1
    tp = int(np.sum(called_fake & fake))
    fp = int(np.sum(called_fake & ~fake))
    tn = int(np.sum(~called_fake & ~fake))
    fn = int(np.sum(~called_fake & fake))
    tpr = tp / (tp + fn) if tp + fn else None
    fpr = fp / (fp + tn) if fp + tn else None
    return {
        "threshold": float(threshold),
        "accuracy": (tp + tn) / labels_array.size if labels_array.size else None,
        "balanced_accuracy": (tpr + 1.0 - fpr) / 2.0 if tpr is not None and fpr is not None else None,
        "tpr": tpr,
        "fpr": fpr,
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def _as_probabilities(labels, probabilities, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels_array, probability_array = as_binary(labels, probabilities, what)
    if probability_array.size and (probability_array.min() < 0.0 or probability_array.max() > 1.0):
        raise MetricError(f"{what}: calibration metrics need probabilities in [0, 1], found values in "
                          f"[{probability_array.min():g}, {probability_array.max():g}]")
    return labels_array, probability_array


def reliability_bins(labels, probabilities, bins: int = DEFAULT_ECE_BINS) -> dict[str, list]:
    """Equal-width bins of P(fake) over [0, 1] (the last bin includes 1.0): per bin the count, the mean predicted
    probability and the observed fraction of AI-generated images (``None`` for empty bins)."""
    if int(bins) < 1:
        raise MetricError(f"the number of calibration bins must be at least 1, got {bins!r}")
    labels_array, probability_array = _as_probabilities(labels, probabilities, "reliability bins")
    bins = int(bins)
    index = np.minimum((probability_array * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    probability_sums = np.bincount(index, weights=probability_array, minlength=bins)
    fake_sums = np.bincount(index, weights=labels_array.astype(np.float64), minlength=bins)
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "count": counts.tolist(),
        "mean_probability": [float(s / c) if c else None for s, c in zip(probability_sums, counts)],
        "fraction_fake": [float(s / c) if c else None for s, c in zip(fake_sums, counts)],
    }


def expected_calibration_error(labels, probabilities, bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE of P(fake): sum over equal-width bins of (bin share) x |observed fraction fake - mean P(fake)|."""
    table = reliability_bins(labels, probabilities, bins)
    total = sum(table["count"])
    if total == 0:
        raise MetricError("expected calibration error of an empty set")
    return float(sum(count / total * abs(fraction - mean)
                     for count, fraction, mean in zip(table["count"], table["fraction_fake"], table["mean_probability"])
                     if count))


def brier_score(labels, probabilities) -> float:
    """Mean squared difference between P(fake) and the 0/1 label."""
    labels_array, probability_array = _as_probabilities(labels, probabilities, "Brier score")
    if probability_array.size == 0:
        raise MetricError("Brier score of an empty set")
    return float(np.mean((probability_array - labels_array) ** 2))


def bootstrap_roc_auc_ci(labels, scores, replicates: int = 1000, seed: int = 0,
                         confidence: float = DEFAULT_CONFIDENCE) -> list[float] | None:
    """Percentile bootstrap interval for ROC AUC, stratified by class.

    Each replicate draws ``n_real`` real and ``n_fake`` AI-generated images with replacement from their own class,
    so every replicate keeps both classes and the class ratio. The generator is ``numpy.random.default_rng(seed)``
    started afresh for every call, so an interval depends only on (data, replicates, seed). Returns ``[low, high]``
    or ``None`` when ``replicates`` is 0.
    """
    if replicates < 0:
        raise MetricError(f"bootstrap replicates must be >= 0, got {replicates!r}")
    if not 0.0 < confidence < 1.0:
        raise MetricError(f"confidence must be in (0, 1), got {confidence!r}")
    if replicates == 0:
        return None
    labels_array, scores_array = as_binary(labels, scores)
    require_both_classes(labels_array)
    real_scores = scores_array[labels_array == 0]
    fake_scores = scores_array[labels_array == 1]
    replicate_labels = np.r_[np.zeros(real_scores.size, np.int8), np.ones(fake_scores.size, np.int8)]
    rng = np.random.default_rng(seed)
    auc = _module_auc_function()
    values = np.empty(replicates)
    for replicate in range(replicates):  # one draw at a time keeps memory at O(n), whatever the replicate count
        real_draw = real_scores[rng.integers(0, real_scores.size, real_scores.size)]
        fake_draw = fake_scores[rng.integers(0, fake_scores.size, fake_scores.size)]
        values[replicate] = auc(replicate_labels, np.r_[real_draw, fake_draw])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return [float(low), float(high)]


def paired_bootstrap_auc_difference(labels, scores_a, scores_b, groups=None, replicates: int = 1000, seed: int = 0,
                                    confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """ROC AUC of ``scores_a`` minus that of ``scores_b`` on the same images, with a paired bootstrap interval.

    Both detectors are scored on every replicate's resampled images (the pairing: their errors on the same images
    cancel out of the difference, so the interval is much narrower than two separate intervals suggest). Resampling
    is stratified by class and, with ``groups`` (one id per score, e.g. the image a degraded copy came from), draws
    whole groups, so the several copies of one image are never treated as independent evidence.

    Returns ``{"difference", "ci": [low, high], "p_a_not_better"}``: the last is the share of replicates in which
    ``a`` does not beat ``b`` (a one-sided bootstrap p-value for "a is better").
    """
    if replicates < 1:
        raise MetricError(f"bootstrap replicates must be >= 1, got {replicates!r}")
    labels_array, first = as_binary(labels, scores_a)
    _, second = as_binary(labels, scores_b)
    require_both_classes(labels_array)
    group_ids = np.arange(labels_array.size) if groups is None else np.asarray(groups)
    if group_ids.shape != labels_array.shape:
        raise MetricError(f"groups must give one id per score, got {group_ids.shape} for {labels_array.shape}")
    auc = _module_auc_function()
    rows_of = {}
    for label in (0, 1):
        members = {}
        for row in np.flatnonzero(labels_array == label):
            members.setdefault(group_ids[row], []).append(row)
        rows_of[label] = [np.asarray(rows) for rows in members.values()]
    rng = np.random.default_rng(seed)
    differences = np.empty(replicates)
    for replicate in range(replicates):
        chosen = np.concatenate([rows_of[label][index] for label in (0, 1)
                                 for index in rng.integers(0, len(rows_of[label]), len(rows_of[label]))])
        differences[replicate] = auc(labels_array[chosen], first[chosen]) - auc(labels_array[chosen], second[chosen])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    return {"difference": float(auc(labels_array, first) - auc(labels_array, second)),
            "ci": [float(low), float(high)], "p_a_not_better": float(np.mean(differences <= 0)),
            "replicates": replicates, "seed": seed}


def binary_metrics(labels, scores, threshold: float = 0.5, ece_bins: int = DEFAULT_ECE_BINS,
                   what: str = "scores") -> dict[str, Any]:
    """All per-slice metrics in one JSON-ready dict.

    Ranking metrics (ROC AUC, AP, TPR at FPR 1%/5%, EER) need both classes; on a one-class slice they are ``None``
    and ``note`` says why. Accuracy, ECE and Brier are defined for any non-empty slice.
    """
    labels_array, scores_array = as_binary(labels, scores, what)
    n_fake = int(labels_array.sum())
    n_real = int(labels_array.size - n_fake)
    result: dict[str, Any] = {"n": int(labels_array.size), "n_real": n_real, "n_fake": n_fake}
    if labels_array.size == 0:
        return {**result, "note": "no images"}
    result["mean_score_real"] = float(scores_array[labels_array == 0].mean()) if n_real else None
    result["mean_score_fake"] = float(scores_array[labels_array == 1].mean()) if n_fake else None
    if n_real and n_fake:
        result["roc_auc"] = fast_roc_auc(labels_array, scores_array, what)
        result["average_precision"] = average_precision(labels_array, scores_array)
        for target, key in ((0.01, "tpr_at_fpr_1pct"), (0.05, "tpr_at_fpr_5pct")):
            result[key] = threshold_at_fpr(labels_array, scores_array, target)["tpr"]
        result["eer"] = equal_error_rate(labels_array, scores_array)["eer"]
    else:
        result.update(roc_auc=None, average_precision=None, tpr_at_fpr_1pct=None, tpr_at_fpr_5pct=None, eer=None,
                      note=f"only {'AI-generated' if n_fake else 'real'} images: ranking metrics are undefined")
    at_threshold = threshold_metrics(labels_array, scores_array, threshold)
    result.update(accuracy=at_threshold["accuracy"], balanced_accuracy=at_threshold["balanced_accuracy"],
                  tpr_at_threshold=at_threshold["tpr"], fpr_at_threshold=at_threshold["fpr"])
    if scores_array.min() >= 0.0 and scores_array.max() <= 1.0:
        result["ece"] = expected_calibration_error(labels_array, scores_array, ece_bins)
        result["brier"] = brier_score(labels_array, scores_array)
    else:
        result.update(ece=None, brier=None)
    return result
