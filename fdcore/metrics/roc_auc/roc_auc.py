"""Binary ROC AUC as a local `evaluate` metric module, so it loads offline by path.

``evaluate.load("roc_auc")`` fetches its script from the Hugging Face Hub and fails without network; fdcore loads this
file instead (``fdcore.metrics.load_roc_auc_metric()`` or ``evaluate.load(<path of this folder>)``).

The area is computed exactly from the ROC step curve with the trapezoidal rule over *distinct* score values, so tied
scores of a real and a fake image count one half, the same as the Mann-Whitney U statistic with average ranks.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Area under the receiver operating characteristic curve for binary labels (1 = positive, here: AI-generated) and
real-valued scores (higher = more likely positive). Ties between a positive and a negative count one half.
Optional non-negative sample weights (used by fdcore's bootstrap, where a resample is a vector of counts).
"""

_KWARGS_DESCRIPTION = """
Args:
    references (`list` of `int`): labels, 0 or 1; both classes must be present.
    prediction_scores (`list` of `float`): finite scores, higher means more likely label 1.
    sample_weight (`list` of `float`, optional): non-negative weight per example.
Returns:
    roc_auc (`float`): the area under the ROC curve, in [0, 1].
Example:
    >>> metric = evaluate.load("path/to/fdcore/metrics/roc_auc")
    >>> metric.compute(references=[0, 0, 1, 1], prediction_scores=[0.1, 0.4, 0.35, 0.8])
    {'roc_auc': 0.75}
"""

_CITATION = """
@article{hanley1982meaning,
  title={The meaning and use of the area under a receiver operating characteristic (ROC) curve},
  author={Hanley, James A and McNeil, Barbara J},
  journal={Radiology}, volume={143}, number={1}, pages={29--36}, year={1982}
}
"""


def binary_roc_auc(references, prediction_scores, sample_weight=None) -> float:
    """Exact ROC AUC of binary labels against scores (ties count one half); raises ValueError if a class is absent."""
    labels = np.asarray(references).reshape(-1)
    scores = np.asarray(prediction_scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"references ({labels.size}) and prediction_scores ({scores.size}) differ in length")
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = labels[~np.isin(labels, (0, 1))][0]
        raise ValueError(f"references must be 0 or 1, found {bad!r}")
    if not np.isfinite(scores).all():
        raise ValueError("prediction_scores contain NaN or infinite values")
    weights = np.ones_like(scores) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if weights.shape != scores.shape:
        raise ValueError(f"sample_weight ({weights.size}) and prediction_scores ({scores.size}) differ in length")
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("sample_weight must be finite and non-negative")
    positive = labels == 1
    total_positive = float(weights[positive].sum())
    total_negative = float(weights[~positive].sum())
    if total_positive <= 0 or total_negative <= 0:
        present = "only label 1" if total_negative <= 0 and total_positive > 0 else (
            "only label 0" if total_positive <= 0 and total_negative > 0 else "no examples")
        raise ValueError(f"ROC AUC is undefined with one class: the input has {present}; it needs both labels 0 and 1")

    # Walk thresholds from the highest score down; each distinct score is one ROC vertex.
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    positive_weight = np.where(positive[order], weights[order], 0.0)
    negative_weight = np.where(positive[order], 0.0, weights[order])
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tpr = np.r_[0.0, np.cumsum(positive_weight)[last_of_run]] / total_positive
    fpr = np.r_[0.0, np.cumsum(negative_weight)[last_of_run]] / total_negative
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RocAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"prediction_scores": datasets.Value("float64"), "references": datasets.Value("int32")}
            ),
            # No format="numpy": datasets' numpy formatter hands floats over as float32, and rounding scores to
            # float32 creates ties that change the AUC. The default hands over Python floats (float64).
            reference_urls=["https://en.wikipedia.org/wiki/Receiver_operating_characteristic"],
        )

    def _compute(self, references, prediction_scores, sample_weight=None):
        return {"roc_auc": binary_roc_auc(references, prediction_scores, sample_weight)}
