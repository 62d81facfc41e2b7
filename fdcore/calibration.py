"""Post-hoc calibration of P(AI-generated) and operating-threshold selection, fitted on labelled validation data.

Workflow (docs/evaluation.md): score a validation set (never the test set) -> :func:`fit_calibration` fits temperature
scaling (default) or isotonic regression and then picks the threshold at a target false-positive rate on the
*calibrated* validation scores -> ``Calibration.save(ensemble_dir / "calibration.json")`` -> at prediction time
``Calibration.load(...).apply(scores)`` and compare with ``calibration.threshold["value"]``.

Both maps are monotone non-decreasing, so calibration never lowers ROC AUC and a threshold keeps its meaning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fdcore.errors import FdcoreError
from fdcore.fileio import write_text_atomic
from fdcore.metrics.scores import (
    DEFAULT_ECE_BINS,
    MetricError,
    as_binary,
    brier_score,
    expected_calibration_error,
    fast_roc_auc,
    require_both_classes,
    threshold_at_fpr,
)

CALIBRATION_FORMAT = "fdcore.calibration"
CALIBRATION_VERSION = 1
CALIBRATION_FILENAME = "calibration.json"
METHODS = ("identity", "temperature", "isotonic")
# Probabilities are clipped this far from 0 and 1 before taking logits for fitting: saturated detectors emit exact 0/1.
PROBABILITY_EPSILON = 1e-7
TEMPERATURE_RANGE = (1e-3, 1e3)


class CalibrationError(FdcoreError):
    """Calibration data, parameters or files that cannot be used."""


def _logit(probabilities: np.ndarray, clip: bool = True) -> np.ndarray:
    """logit(p); ``clip`` bounds it for fitting. Unclipped, exact 0 and 1 become -inf and +inf and the map stays
    strictly monotone, so applying a temperature never creates ties (which would change ROC AUC)."""
    if clip:
        probabilities = np.clip(probabilities, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    with np.errstate(divide="ignore"):
        return np.log(probabilities) - np.log1p(-probabilities)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow and with full relative precision in both tails (distinct inputs stay
    distinct, so ranking is preserved)."""
    logits = np.asarray(logits, dtype=np.float64)
    exp_of_negative_magnitude = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + exp_of_negative_magnitude),
                    exp_of_negative_magnitude / (1.0 + exp_of_negative_magnitude))


def _binary_nll(labels: np.ndarray, logits: np.ndarray) -> float:
    # log(1 + exp(-x)) for fakes and log(1 + exp(x)) for reals, computed stably.
    signed = np.where(labels == 1, logits, -logits)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def _validation_inputs(scores, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        labels_array, scores_array = as_binary(labels, scores, what)
        require_both_classes(labels_array, what)
    except MetricError as error:
        raise CalibrationError(str(error)) from error
    return labels_array, scores_array


def _fit_summary(labels: np.ndarray, before: np.ndarray, after: np.ndarray, ece_bins: int) -> dict[str, Any]:
    n_fake = int(labels.sum())
    return {
        "n": int(labels.size),
        "n_real": int(labels.size - n_fake),
        "n_fake": n_fake,
        "roc_auc": fast_roc_auc(labels, after),
        "ece_bins": int(ece_bins),
        "ece_before": expected_calibration_error(labels, before, ece_bins),
        "ece_after": expected_calibration_error(labels, after, ece_bins),
        "brier_before": brier_score(labels, before),
        "brier_after": brier_score(labels, after),
        "nll_before": _binary_nll(labels, _logit(before)),
        "nll_after": _binary_nll(labels, _logit(after)),
    }


@dataclass
class Calibration:
    """A fitted monotone map of P(AI-generated), with an optional operating threshold on its output.

    JSON form (``calibration.json``)::

        {"format": "fdcore.calibration", "version": 1, "method": "temperature" | "isotonic" | "identity",
         "parameters": {...}, "fitted_on": {"n", "n_real", "n_fake", "roc_auc", "ece_before", "ece_after", ...},
         "threshold": null | {"value", "target_fpr", "validation_fpr", "validation_tpr", "n_real", "n_fake", ...}}

    ``parameters``: temperature -> ``{"temperature": T}`` (p' = sigmoid(logit(p) / T)); isotonic -> ``{"x": [...],
    "y": [...]}`` knots of a non-decreasing piecewise-linear map, constant beyond the ends; identity -> ``{}``.
    """

    method: str
    parameters: dict[str, Any] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] | None = None

    def __post_init__(self):
        self._validate(source="calibration")

    def _validate(self, source: str) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"{source}: unknown calibration method {self.method!r}; expected one of {METHODS}")
        if self.method == "temperature":
            temperature = self.parameters.get("temperature")
            if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
                raise CalibrationError(f"{source}: temperature must be a positive number, got {temperature!r}")
        elif self.method == "isotonic":
            x, y = self.parameters.get("x"), self.parameters.get("y")
            if not isinstance(x, list) or not isinstance(y, list) or not x or len(x) != len(y):
                raise CalibrationError(f"{source}: isotonic parameters need equal-length, non-empty lists x and y")
            x_array, y_array = np.asarray(x, np.float64), np.asarray(y, np.float64)
            if (not np.isfinite(x_array).all() or not np.isfinite(y_array).all() or np.any(np.diff(x_array) < 0)
                    or np.any(np.diff(y_array) < 0) or y_array.min() < 0 or y_array.max() > 1):
                raise CalibrationError(f"{source}: isotonic knots must be finite and non-decreasing, y in [0, 1]")
        if self.threshold is not None:
            value = self.threshold.get("value") if isinstance(self.threshold, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CalibrationError(f"{source}: threshold must be a dict with a finite 'value', got "
                                       f"{self.threshold!r}")
            band = self.threshold.get("inconclusive")
            if band is not None and not (isinstance(band, list) and len(band) == 2
                                         and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                 and math.isfinite(b) for b in band)
                                         and 0 <= band[0] < band[1] <= 1):
                raise CalibrationError(f"{source}: threshold.inconclusive must be [low, high] with 0 <= low < high "
                                       f"<= 1, got {band!r}")

    def apply(self, scores) -> np.ndarray:
        """Calibrated P(AI-generated) for raw fused scores (array in, float64 array out)."""
        scores_array = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(scores_array).all() or (scores_array.size and (scores_array.min() < 0
                                                                          or scores_array.max() > 1)):
            raise CalibrationError("calibration applies to probabilities in [0, 1]; got values outside or non-finite")
        if self.method == "identity":
            return scores_array.copy()
        if self.method == "temperature":
            return _sigmoid(_logit(scores_array, clip=False) / float(self.parameters["temperature"]))
        return np.interp(scores_array, self.parameters["x"], self.parameters["y"])

    def predict(self, scores) -> np.ndarray:
        """0/1 decisions at the stored threshold (``calibrated score >= threshold``)."""
        if self.threshold is None:
            raise CalibrationError("this calibration has no threshold; select one with select_threshold() on "
                                   "validation data (fdcore calibrate --target-fpr)")
        return (self.apply(scores) >= float(self.threshold["value"])).astype(np.int8)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "method": self.method,
                "parameters": self.parameters, "fitted_on": self.fitted_on, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration") -> "Calibration":
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"{source} is not an fdcore calibration (expected \"format\": "
                                   f"\"{CALIBRATION_FORMAT}\")")
        if data.get("version") != CALIBRATION_VERSION:
            raise CalibrationError(f"{source} has calibration format version {data.get('version')!r}; this fdcore "
                                   f"reads version {CALIBRATION_VERSION}; refit it with fdcore calibrate")
        calibration = cls.__new__(cls)
        calibration.method = data.get("method")
        calibration.parameters = data.get("parameters") or {}
        calibration.fitted_on = data.get("fitted_on") or {}
        calibration.threshold = data.get("threshold")
        calibration._validate(source)
        return calibration

    def save(self, path) -> Path:
        """Write the JSON atomically, so a crash leaves the previous file intact (a folder means its
        ``calibration.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_FILENAME
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        write_text_atomic(path, text)
        return path

    @classmethod
    def load(cls, path) -> "Calibration":
        """Read ``calibration.json`` (a folder holding it may be given)."""
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_FILENAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CalibrationError(f"no calibration file at {path}; fit one with fdcore calibrate") from None
        except OSError as error:
            raise CalibrationError(f"cannot read calibration {path}: {error}; refit it with fdcore calibrate") \
                from error
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "calibration") -> "Calibration":
        """Parse a calibration file's bytes (already read, e.g. to hash exactly what is used)."""
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CalibrationError(f"cannot read calibration {source}: {error}; refit it with fdcore calibrate") \
                from error
        return cls.from_dict(document, source=source)


def _temperature_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Minimise the mean NLL of sigmoid(z / T) over T by bisection on the derivative in a = 1 / T.

    The NLL is convex in a, so its derivative sum((sigmoid(a z) - y) z) is non-decreasing and bisection on
    log(a) over the allowed range finds the minimiser (or the range end it lies beyond).
    """
    def slope(log_a: float) -> float:
        return float(np.mean((_sigmoid(math.exp(log_a) * logits) - labels) * logits))

    low, high = -math.log(TEMPERATURE_RANGE[1]), -math.log(TEMPERATURE_RANGE[0])
    if slope(low) >= 0:
        return TEMPERATURE_RANGE[1]
    if slope(high) <= 0:
        return TEMPERATURE_RANGE[0]
    for _ in range(100):
        middle = 0.5 * (low + high)
        if slope(middle) > 0:
            high = middle
        else:
            low = middle
    return float(1.0 / math.exp(0.5 * (low + high)))


def fit_temperature(scores, labels, inputs: str = "probabilities", ece_bins: int = DEFAULT_ECE_BINS) -> Calibration:
    """Temperature scaling: T minimising the validation NLL of sigmoid(logit(p) / T).

    Args:
        scores: P(AI-generated) in [0, 1] (``inputs="probabilities"``) or logits (``inputs="logits"``).
        labels: 0 = real, 1 = AI-generated; both classes are required.
        inputs: what ``scores`` are. The saved map always takes probabilities (logits are recovered from them).
        ece_bins: bins of the ECE recorded in ``fitted_on``.

    Raises:
        CalibrationError: if the scores rank fakes *below* reals (T would be negative) or the data is unusable.
    """
    labels_array, values = _validation_inputs(scores, labels, "temperature scaling")
    if inputs == "logits":
        logits = values
        probabilities = _sigmoid(values)
    elif inputs == "probabilities":
        if values.min() < 0 or values.max() > 1:
            raise CalibrationError("temperature scaling: scores must be probabilities in [0, 1]; pass "
                                   "inputs='logits' for raw logits")
        probabilities = values
        logits = _logit(values)
    else:
        raise CalibrationError(f"inputs must be 'probabilities' or 'logits', got {inputs!r}")
    # The NLL slope in a = 1 / T at a = 0 is mean((0.5 - y) z); unless it is negative the optimum has T <= 0.
    if float(np.mean((0.5 - labels_array) * logits)) >= 0:
        raise CalibrationError("temperature scaling: the scores are not higher for AI-generated images than for "
                               "real ones on this validation set, so no positive temperature fits; check the labels")
    temperature = _temperature_from_logits(labels_array.astype(np.float64), logits)
    calibration = Calibration("temperature", {"temperature": temperature})
    calibration.fitted_on = _fit_summary(labels_array, probabilities, calibration.apply(probabilities), ece_bins)
    return calibration


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares non-decreasing fit; returns per-block (mean, index of the block's last element)."""
    means: list[float] = []
    block_weights: list[float] = []
    ends: list[int] = []
    for index, (value, weight) in enumerate(zip(values, weights)):
        means.append(float(value))
        block_weights.append(float(weight))
        ends.append(index)
        while len(means) > 1 and means[-2] > means[-1]:
            merged_weight = block_weights[-2] + block_weights[-1]
            merged_mean = (means[-2] * block_weights[-2] + means[-1] * block_weights[-1]) / merged_weight
            means[-2:] = [merged_mean]
            block_weights[-2:] = [merged_weight]
            ends[-2:] = [ends[-1]]
    return np.asarray(means), np.asarray(ends)


def fit_isotonic(scores, labels, ece_bins: int = DEFAULT_ECE_BINS) -> Calibration:
    """Isotonic regression (pool-adjacent-violators) of the label on the score.

    Tied scores are merged first so they map to one value. The stored map has two knots per block (its lowest and
    highest score) and interpolates linearly between blocks; below the lowest and above the highest validation score
    it is constant. Needs more validation data than temperature scaling (it fits a free monotone function).
    """
    labels_array, scores_array = _validation_inputs(scores, labels, "isotonic calibration")
    if scores_array.min() < 0 or scores_array.max() > 1:
        raise CalibrationError("isotonic calibration: scores must be probabilities in [0, 1]")
    unique_scores, inverse, counts = np.unique(scores_array, return_inverse=True, return_counts=True)
    fake_fraction = np.bincount(inverse, weights=labels_array.astype(np.float64)) / counts
    block_means, block_ends = _pool_adjacent_violators(fake_fraction, counts.astype(np.float64))
    block_starts = np.r_[0, block_ends[:-1] + 1]
    knots_x: list[float] = []
    knots_y: list[float] = []
    for start, end, mean in zip(block_starts, block_ends, block_means):
        for index in dict.fromkeys((int(start), int(end))):
            knots_x.append(float(unique_scores[index]))
            knots_y.append(float(mean))
    calibration = Calibration("isotonic", {"x": knots_x, "y": knots_y})
    calibration.fitted_on = _fit_summary(labels_array, scores_array, calibration.apply(scores_array), ece_bins)
    return calibration


def select_threshold(scores, labels, target_fpr: float = 0.01) -> dict[str, Any]:
    """The operating threshold with validation FPR <= ``target_fpr`` and the highest validation TPR under that.

    ``scores`` must be on the scale the threshold will be used on (calibrated scores when a calibration is applied).
    Returns the JSON-ready ``threshold`` entry of a :class:`Calibration`: ``value``, ``target_fpr``,
    ``validation_fpr``, ``validation_tpr``, ``n_real``, ``n_fake`` and ``fpr_resolution`` (1 / n_real: the smallest
    non-zero FPR the validation set can measure; a target below it forces FPR 0).
    """
    labels_array, scores_array = _validation_inputs(scores, labels, "threshold selection")
    try:
        point = threshold_at_fpr(labels_array, scores_array, target_fpr)
    except MetricError as error:
        raise CalibrationError(str(error)) from error
    n_fake = int(labels_array.sum())
    n_real = int(labels_array.size - n_fake)
    return {
        "value": point["threshold"],
        "rule": "calibrated score >= value is called AI-generated",
        "target_fpr": float(target_fpr),
        "validation_fpr": point["fpr"],
        "validation_tpr": point["tpr"],
        "n_real": n_real,
        "n_fake": n_fake,
        "fpr_resolution": 1.0 / n_real,
    }


def fit_calibration(scores, labels, method: str = "temperature", target_fpr: float | None = 0.01,
                    ece_bins: int = DEFAULT_ECE_BINS, description: str | None = None) -> Calibration:
    """Fit a calibration on validation scores and, unless ``target_fpr`` is None, select its threshold on the
    calibrated validation scores. ``description`` (e.g. the validation data spec) is recorded in ``fitted_on``."""
    if method == "temperature":
        calibration = fit_temperature(scores, labels, ece_bins=ece_bins)
    elif method == "isotonic":
        calibration = fit_isotonic(scores, labels, ece_bins=ece_bins)
    elif method == "identity":
        labels_array, scores_array = _validation_inputs(scores, labels, "identity calibration")
        calibration = Calibration("identity", {})
        calibration.fitted_on = _fit_summary(labels_array, scores_array, scores_array, ece_bins)
    else:
        raise CalibrationError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    if description is not None:
        calibration.fitted_on["data"] = str(description)
    if target_fpr is not None:
        calibration.threshold = select_threshold(calibration.apply(np.asarray(scores, np.float64)), labels, target_fpr)
    return calibration
