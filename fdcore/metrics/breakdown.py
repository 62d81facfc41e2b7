"""Pooled headline metrics (NTIRE 2026 Clean / Robust ROC AUC) and the grouped breakdowns that explain them.

Pooling is the point: the Robust ROC AUC is ONE ROC AUC over every degraded image (all degradations, generators and
both classes together), never an average of per-group AUCs. A detector whose score scale shifts with the degradation
loses pooled AUC even when every per-degradation AUC is high; the breakdowns show where that happens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fdcore.metrics.records import CLEAN, DEGRADED, RecordTable, normalize_records
from fdcore.metrics.scores import (
    DEFAULT_CONFIDENCE,
    DEFAULT_ECE_BINS,
    MetricError,
    binary_metrics,
    bootstrap_roc_auc_ci,
    fast_roc_auc,
    roc_auc,
)
from fdcore.provenance import package_versions

METRICS_FORMAT = "fdcore.metrics"
METRICS_VERSION = 1


def _slice(table: RecordTable, mask: np.ndarray, scorer: str | None, threshold: float, ece_bins: int,
           what: str) -> dict[str, Any]:
    return binary_metrics(table.label[mask], table.scores_of(scorer)[mask], threshold, ece_bins, what)


def _headline(table: RecordTable, mask: np.ndarray, scorer: str | None, settings: dict, what: str) -> dict[str, Any]:
    """Full metrics of one pooled set plus its ROC AUC through ``evaluate`` and a bootstrap interval."""
    labels = table.label[mask]
    scores = table.scores_of(scorer)[mask]
    result = binary_metrics(labels, scores, settings["threshold"], settings["ece_bins"], what)
    if result.get("roc_auc") is not None:
        # The headline numbers go through the evaluate metric's public compute(); the value is the same function.
        result["roc_auc"] = roc_auc(labels, scores, what)
        result["roc_auc_ci"] = bootstrap_roc_auc_ci(labels, scores, settings["bootstrap"], settings["seed"],
                                                    settings["confidence"])
    else:
        result["roc_auc_ci"] = None
    return result


def _groups(keys: np.ndarray, mask: np.ndarray) -> list[str]:
    return sorted({str(key) for key in keys[mask]})


def _per_generator(table: RecordTable, condition_mask: np.ndarray, scorer, threshold, ece_bins) -> dict[str, Any]:
    """Each generator's AI-generated images against ALL real images of the same condition."""
    reals = condition_mask & (table.label == 0)
    fakes = condition_mask & (table.label == 1)
    return {generator: _slice(table, reals | (fakes & (table.generator == generator)), scorer, threshold, ece_bins,
                              f"generator {generator!r}")
            for generator in _groups(table.generator, fakes)}


def _matrix(table: RecordTable, columns: list[tuple[str, np.ndarray]], scorer) -> dict[str, Any]:
    """Generator x column ROC AUC: a cell pairs the generator's fakes in that column with all reals in it."""
    generators = _groups(table.generator, table.label == 1)
    auc_rows, fake_rows = [], []
    for generator in generators:
        auc_row, fake_row = [], []
        for _, column_mask in columns:
            fakes = column_mask & (table.label == 1) & (table.generator == generator)
            reals = column_mask & (table.label == 0)
            fake_row.append(int(fakes.sum()))
            if fakes.any() and reals.any():
                cell = fakes | reals
                auc_row.append(fast_roc_auc(table.label[cell], table.scores_of(scorer)[cell], "matrix cell"))
            else:
                auc_row.append(None)
        auc_rows.append(auc_row)
        fake_rows.append(fake_row)
    return {
        "rows": generators,
        "columns": [name for name, _ in columns],
        "roc_auc": auc_rows,
        "n_fake": fake_rows,
        "n_real": [int((mask & (table.label == 0)).sum()) for _, mask in columns],
    }


def compute_breakdown(table: RecordTable, scorer: str | None = None, threshold: float = 0.5,
                      ece_bins: int = DEFAULT_ECE_BINS) -> dict[str, Any]:
    """Grouped metrics of one scorer (the fused score when ``scorer`` is None). No bootstrap: groups are many."""
    clean, degraded = table.clean, table.degraded
    operators = table.operators()
    levels = table.severity_levels()

    def group(mask: np.ndarray, what: str) -> dict[str, Any]:
        return _slice(table, mask, scorer, threshold, ece_bins, what)

    per_degradation: dict[str, Any] = {}
    if clean.any():
        per_degradation[CLEAN] = group(clean, "clean images")
    for chain in _groups(table.degradation, degraded):
        per_degradation[chain] = group(degraded & (table.degradation == chain), f"degradation {chain!r}")

    operator_names = sorted({name for chain, is_degraded in zip(operators, degraded) if is_degraded
                             for name in chain})
    operator_masks = {name: degraded & np.array([name in chain for chain in operators], dtype=bool)
                      for name in operator_names}
    per_operator = {name: group(mask, f"operator {name!r}") for name, mask in operator_masks.items()}
    sweep = table.sweep
    per_sweep = {
        operator: {str(level): group(sweep & (table.degradation == operator) & (levels == level),
                                     f"sweep {operator!r} at level {level}")
                   for level in sorted({int(value) for value in levels[sweep & (table.degradation == operator)]})}
        for operator in _groups(table.degradation, sweep)}

    level_keys = sorted({int(level) for level in levels[degraded] if level > 0})
    per_severity = {str(level): group(degraded & (levels == level), f"severity level {level}") for level in level_keys}
    unknown_level = degraded & (levels == 0)
    if unknown_level.any():
        per_severity["unknown"] = group(unknown_level, "degraded images without a severity")

    per_degradation_severity: dict[str, Any] = {}
    for chain in _groups(table.degradation, degraded):
        chain_mask = degraded & (table.degradation == chain)
        per_degradation_severity[chain] = {
            str(level) if level else "unknown": group(chain_mask & (levels == level), f"{chain!r} at level {level}")
            for level in sorted({int(value) for value in levels[chain_mask]})
        }

    per_generator = {CLEAN: _per_generator(table, clean, scorer, threshold, ece_bins),
                     DEGRADED: _per_generator(table, degraded, scorer, threshold, ece_bins)}
    per_source = {
        condition: {source: group(mask & (table.source == source), f"source {source!r}")
                    for source in _groups(table.source, mask)}
        for condition, mask in ((CLEAN, clean), (DEGRADED, degraded))
    }

    chain_columns = ([(CLEAN, clean)] if clean.any() else []) + [
        (chain, degraded & (table.degradation == chain)) for chain in _groups(table.degradation, degraded)]
    operator_columns = ([(CLEAN, clean)] if clean.any() else []) + [
        (name, degraded & mask) for name, mask in operator_masks.items()]
    return {
        "per_degradation": per_degradation,
        "per_operator": per_operator,
        "sweep": per_sweep,
        "per_severity": per_severity,
        "per_degradation_severity": per_degradation_severity,
        "per_generator": per_generator,
        "per_source": per_source,
        "generator_x_degradation": _matrix(table, chain_columns, scorer),
        "generator_x_operator": _matrix(table, operator_columns, scorer),
    }


def compute_metrics(records, threshold: float = 0.5, bootstrap: int = 1000, seed: int = 0,
                    ece_bins: int = DEFAULT_ECE_BINS, confidence: float = DEFAULT_CONFIDENCE,
                    operating_point: dict[str, Any] | None = None) -> dict[str, Any]:
    """Headline, per-expert and breakdown metrics of scored records, as a JSON-ready dict.

    Args:
        records: a list of record dicts, a dict of columns, or a :class:`RecordTable` (format in
            :mod:`fdcore.metrics.records`).
        threshold: decision threshold on P(AI-generated) for accuracy-type metrics (``score >= threshold``).
        bootstrap: number of stratified bootstrap replicates for the AUC intervals (0 = none).
        seed: seed of the bootstrap generator (recorded in the output).
        ece_bins: equal-width bins of the expected calibration error.
        confidence: coverage of the bootstrap intervals.
        operating_point: a threshold chosen on validation data (the ``threshold`` entry of a
            :class:`fdcore.calibration.Calibration`, from :func:`fdcore.calibration.select_threshold`). Its ``value``
            replaces ``threshold``, and ``operating_point`` in the result sets its validation FPR/TPR next to the
            held-out FPR/TPR measured here. The records' scores must be on the same (calibrated) scale.

    Returns:
        ``clean_roc_auc`` / ``robust_roc_auc`` (``None`` when that condition has no images or one class) and their
        ``*_ci``; ``fused`` (all metrics of the fused score, clean and degraded); ``experts`` (the same per expert);
        ``breakdown`` (of the fused score); ``counts``, ``settings``, ``produced_by`` and ``notes``.

    Example:
        >>> metrics = compute_metrics(records, bootstrap=200, seed=1)
        >>> metrics["robust_roc_auc"], metrics["robust_roc_auc_ci"]
    """
    table = records if isinstance(records, RecordTable) else normalize_records(records)
    if not 0.0 <= float(threshold) <= 1.0:
        raise MetricError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    if operating_point is not None:
        value = operating_point.get("value") if isinstance(operating_point, dict) else None
        # select_threshold may return a value just above 1 (nothing called AI-generated), so only finiteness counts.
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MetricError(f"operating_point must be a dict with a finite 'value' (from select_threshold), "
                              f"got {operating_point!r}")
        threshold = float(value)
    if int(ece_bins) < 1:
        raise MetricError(f"ece_bins must be at least 1, got {ece_bins!r}")
    if int(bootstrap) < 0:
        raise MetricError(f"bootstrap must be a number of replicates >= 0, got {bootstrap!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise MetricError(f"confidence must be in (0, 1), got {confidence!r}")
    if table.label.min() == table.label.max():
        only = "AI-generated" if table.label[0] else "real"
        raise MetricError(f"all {len(table)} records are {only}; evaluation needs both real and AI-generated images")
    settings = {
        "threshold": float(threshold),
        "bootstrap": int(bootstrap),
        "seed": int(seed),
        "confidence": float(confidence),
        "ece_bins": int(ece_bins),
    }
    notes: list[str] = []
    conditions = {CLEAN: table.clean, DEGRADED: table.degraded}

    def scorer_metrics(scorer: str | None, label: str) -> dict[str, Any]:
        result = {}
        for condition, mask in conditions.items():
            if mask.any():
                result[condition] = _headline(table, mask, scorer, settings, f"{condition} images, {label}")
        return result

    fused = scorer_metrics(None, "fused score")
    experts = {name: scorer_metrics(name, f"expert {name!r}") for name in sorted(table.experts)}

    def headline_values(section: dict[str, Any]) -> dict[str, Any]:
        clean, degraded = section.get(CLEAN, {}), section.get(DEGRADED, {})
        return {"clean_roc_auc": clean.get("roc_auc"), "clean_roc_auc_ci": clean.get("roc_auc_ci"),
                "robust_roc_auc": degraded.get("roc_auc"), "robust_roc_auc_ci": degraded.get("roc_auc_ci")}

    for condition, mask in conditions.items():
        if not mask.any():
            notes.append(f"no {condition} images: {'clean' if condition == CLEAN else 'robust'}_roc_auc is null")
        elif fused[condition]["roc_auc"] is None:
            notes.append(f"{condition} images hold one class only: "
                         f"{'clean' if condition == CLEAN else 'robust'}_roc_auc is null")

    held_out = None
    if operating_point is not None:
        held_out = {"validation": dict(operating_point),
                    "held_out": {condition: {"fpr": fused[condition]["fpr_at_threshold"],
                                             "tpr": fused[condition]["tpr_at_threshold"]}
                                 for condition in fused}}
        target = operating_point.get("target_fpr")
        for condition, rates in held_out["held_out"].items():
            if isinstance(target, (int, float)) and rates["fpr"] is not None and rates["fpr"] > target:
                notes.append(f"held-out FPR on {condition} images ({rates['fpr']:.4f}) exceeds the validation "
                             f"target {target:g}: the validation set does not represent this data")

    return {
        "format": METRICS_FORMAT,
        "version": METRICS_VERSION,
        **headline_values(fused),
        "counts": {condition: {"n": int(mask.sum()), "n_real": int((mask & (table.label == 0)).sum()),
                               "n_fake": int((mask & (table.label == 1)).sum())}
                   for condition, mask in conditions.items()},
        "fused": fused,
        "experts": {name: {**headline_values(section), **section} for name, section in experts.items()},
        "operating_point": held_out,
        "breakdown": compute_breakdown(table, None, threshold, ece_bins),
        "settings": {
            **settings,
            "decision_rule": "score >= threshold is called AI-generated",
            "robust_roc_auc": "one ROC AUC pooled over all degraded images (no per-group averaging)",
            "bootstrap_method": "percentile interval; replicates resample real and AI-generated images separately "
                                "with replacement (stratified by class); numpy.random.default_rng(seed) per interval",
            "ece": "equal-width bins of P(AI-generated) over [0, 1]; |fraction fake - mean P| weighted by bin share",
            "severity_levels": "level k collects degraded images with severity in (k-1, k]",
            "per_generator": "a generator's AI-generated images against all real images of the same condition",
        },
        "produced_by": package_versions(("fdcore", "numpy", "evaluate")),
        "notes": notes,
    }
