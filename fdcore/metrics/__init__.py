"""Evaluation metrics on scored records: NTIRE 2026 Clean/Robust ROC AUC, breakdowns, calibration metrics.

Importing this package is cheap; ``evaluate`` (which imports transformers, several seconds) loads on the first ROC AUC.
See docs/evaluation.md for the definitions.
"""

from fdcore.metrics.breakdown import compute_breakdown, compute_metrics
from fdcore.metrics.records import RecordError, RecordTable, normalize_records, read_records_csv
from fdcore.metrics.scores import (
    ROC_AUC_MODULE_PATH,
    MetricError,
    average_precision,
    binary_metrics,
    bootstrap_roc_auc_ci,
    brier_score,
    equal_error_rate,
    expected_calibration_error,
    load_roc_auc_metric,
    paired_bootstrap_auc_difference,
    reliability_bins,
    roc_auc,
    roc_curve,
    threshold_at_fpr,
    threshold_metrics,
)

__all__ = [
    "ROC_AUC_MODULE_PATH",
    "MetricError",
    "RecordError",
    "RecordTable",
    "average_precision",
    "binary_metrics",
    "bootstrap_roc_auc_ci",
    "brier_score",
    "compute_breakdown",
    "compute_metrics",
    "equal_error_rate",
    "expected_calibration_error",
    "load_roc_auc_metric",
    "normalize_records",
    "paired_bootstrap_auc_difference",
    "read_records_csv",
    "reliability_bins",
    "roc_auc",
    "roc_curve",
    "threshold_at_fpr",
    "threshold_metrics",
]
