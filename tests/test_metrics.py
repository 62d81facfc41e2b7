"""Metric correctness (hand-computed cases, an independent Mann-Whitney AUC), pooling semantics and record checks."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fdcore.errors import FdcoreError
from fdcore.metrics import (
    ROC_AUC_MODULE_PATH,
    MetricError,
    RecordError,
    average_precision,
    bootstrap_roc_auc_ci,
    brier_score,
    compute_metrics,
    equal_error_rate,
    expected_calibration_error,
    normalize_records,
    read_records_csv,
    reliability_bins,
    roc_auc,
    roc_curve,
    threshold_at_fpr,
    threshold_metrics,
)
from fdcore.metrics.scores import fast_roc_auc


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their positions (written here, independent of fdcore)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    position = 0
    while position < values.size:
        end = position
        while end + 1 < values.size and values[order[end + 1]] == values[order[position]]:
            end += 1
        ranks[order[position:end + 1]] = (position + end) / 2 + 1
        position = end + 1
    return ranks


def mann_whitney_auc(labels, scores) -> float:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    n_fake, n_real = int(labels.sum()), int((labels == 0).sum())
    rank_sum = average_ranks(scores)[labels == 1].sum()
    return (rank_sum - n_fake * (n_fake + 1) / 2) / (n_fake * n_real)


# --- ROC AUC -----------------------------------------------------------------------------------------------------

def test_roc_auc_hand_computed():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.9, 0.2]) == 0.0


def test_roc_auc_ties_count_one_half():
    # fakes {0.5, 0.9} vs reals {0.5, 0.2}: pairs 0.5, 1, 1, 1 -> 3.5 / 4
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_roc_auc_matches_mann_whitney_with_ties(seed, decimals):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 0.7, 1.0), decimals)  # rounding creates many cross-class ties
    expected = mann_whitney_auc(labels, scores)
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert fast_roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_keeps_float64_precision():
    # 1e-12 apart: identical in float32, which would tie the pair and give 0.5 instead of 1.0
    assert roc_auc([0, 1], [0.123456789, 0.123456789 + 1e-12]) == 1.0


def test_roc_auc_weights_equal_repetition():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.5, 0.5, 0.8, 0.3, 0.2])
    weights = np.array([2, 0, 1, 3, 1, 1])
    repeated = np.repeat(np.arange(6), weights)
    assert fast_roc_auc(labels, scores, sample_weight=weights) == pytest.approx(
        mann_whitney_auc(labels[repeated], scores[repeated]))


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_roc_auc_one_class_is_a_clear_error(labels):
    with pytest.raises(MetricError, match="needs both real .0. and AI-generated .1."):
        roc_auc(labels, [0.5] * len(labels))
    assert issubclass(MetricError, FdcoreError)


def test_roc_auc_rejects_bad_input():
    with pytest.raises(MetricError, match="labels must be 0"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(MetricError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(MetricError, match="2 labels but 3 scores"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])


def test_metric_module_loads_with_network_disabled(tmp_path):
    """A fresh interpreter, empty module cache, HF offline variables and a socket that refuses to connect."""
    script = textwrap.dedent(f"""
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import evaluate
        metric = evaluate.load({str(ROC_AUC_MODULE_PATH)!r}, keep_in_memory=True)
        print(metric.compute(references=[0, 0, 1, 1], prediction_scores=[0.1, 0.4, 0.35, 0.8])["roc_auc"])
        from fdcore.metrics import roc_auc
        print(roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["0.75", "0.875"]


# --- other metrics, hand-computed --------------------------------------------------------------------------------

def test_roc_curve_vertices_merge_ties():
    fpr, tpr, thresholds = roc_curve([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])
    assert thresholds.tolist() == [np.inf, 0.9, 0.5, 0.2]
    assert fpr.tolist() == [0, 0, 0.5, 1]
    assert tpr.tolist() == [0, 0.5, 1, 1]


def test_average_precision_hand_computed():
    # ranked: 0.8 (fake) P=1 R=.5; 0.4 (real); 0.35 (fake) P=2/3 R=1 -> .5 * 1 + .5 * 2/3
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([0, 1, 1], [0.1, 0.8, 0.9]) == pytest.approx(1.0)


def test_equal_error_rate_hand_computed():
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["eer"] == pytest.approx(0.5)
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])["eer"] == pytest.approx(0.0)
    # vertices (fpr, fnr): (0, 1), (0, .5), (.5, .5) ... with one more real above: crossing interpolated
    result = equal_error_rate([0, 1, 0, 0, 1], [0.95, 0.9, 0.5, 0.3, 0.2])
    # vertices: (0,1) (1/3,1) (1/3,.5) (2/3,.5) (1,.5) (1,0): crossing on segment (1/3,.5)->(2/3,.5) at fpr=.5
    assert result["eer"] == pytest.approx(0.5)


def test_threshold_at_fpr_and_tpr_hand_computed():
    labels = [0] * 10 + [1] * 4
    scores = [0.01 * i for i in range(10)] + [0.085, 0.5, 0.6, 0.05]
    # reals 0.00..0.09; one real (0.09) above 0.085 -> FPR 0.1 at threshold 0.085
    assert threshold_at_fpr(labels, scores, 0.1) == {"threshold": 0.085, "fpr": pytest.approx(0.1),
                                                      "tpr": pytest.approx(0.75)}
    zero = threshold_at_fpr(labels, scores, 0.0)
    assert zero["fpr"] == 0 and zero["tpr"] == pytest.approx(0.5) and zero["threshold"] == pytest.approx(0.5)
    # a real holds the top score: at FPR 0 nothing can be called fake, the threshold lies above every score
    top_real = threshold_at_fpr([1, 0], [0.4, 0.9], 0.0)
    assert top_real["tpr"] == 0 and top_real["threshold"] > 0.9


def test_threshold_metrics_hand_computed():
    result = threshold_metrics([0, 0, 0, 1, 1], [0.1, 0.6, 0.5, 0.5, 0.2], 0.5)
    # called fake: 0.6 (real), 0.5 (real), 0.5 (fake) -> tp 1, fp 2, tn 1, fn 1
    assert result["confusion"] == {"tp": 1, "fp": 2, "tn": 1, "fn": 1}
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert threshold_metrics([1, 1], [0.9, 0.1], 0.5)["balanced_accuracy"] is None


def test_ece_and_brier_hand_computed():
    labels, probabilities = [0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]
    # bin of 0.1: mean .1, fraction fake .5; bin of 0.9: mean .9, fraction 1 -> .5 * .4 + .5 * .1
    assert expected_calibration_error(labels, probabilities, bins=10) == pytest.approx(0.25)
    assert brier_score(labels, probabilities) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    table = reliability_bins([1, 0], [1.0, 0.0], bins=4)
    assert table["count"] == [1, 0, 0, 1]  # 1.0 falls in the last (closed) bin
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    with pytest.raises(MetricError, match=r"probabilities in \[0, 1\]"):
        brier_score([0, 1], [0.2, 1.3])


def test_bootstrap_interval_is_seeded_stratified_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(200, int), np.ones(5, int)]  # 5 fakes: unstratified draws would often lose them all
    scores = rng.normal(labels * 1.0, 1.0)
    first = bootstrap_roc_auc_ci(labels, scores, replicates=300, seed=7)
    assert first == bootstrap_roc_auc_ci(labels, scores, replicates=300, seed=7)
    assert first != bootstrap_roc_auc_ci(labels, scores, replicates=300, seed=8)
    assert first[0] <= fast_roc_auc(labels, scores) <= first[1]
    assert bootstrap_roc_auc_ci(labels, scores, replicates=0) is None
    big_labels = np.r_[np.zeros(400, int), np.ones(400, int)]
    big_scores = rng.normal(big_labels * 1.0, 1.0)
    narrow = bootstrap_roc_auc_ci(big_labels, big_scores, replicates=300, seed=7)
    wide = bootstrap_roc_auc_ci(big_labels[360:440], big_scores[360:440], replicates=300, seed=7)
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0]) > 0


# --- pooled vs grouped -------------------------------------------------------------------------------------------

def shifted_records(n_per_cell=10):
    """Two degradations; 'brighten' shifts every score up by 0.5. Within each, fakes outscore reals."""
    records = []
    for degradation, offset in (("jpeg", 0.0), ("brighten", 0.5)):
        for i in range(n_per_cell):
            records.append({"image_id": f"{degradation}-real-{i}", "label": 0, "degradation": degradation,
                            "score": offset + 0.3 * i / n_per_cell, "severity": 2, "generator": ""})
            records.append({"image_id": f"{degradation}-fake-{i}", "label": 1, "degradation": degradation,
                            "score": offset + 0.31 + 0.19 * i / n_per_cell, "severity": 4, "generator": "sd"})
    for i in range(n_per_cell):
        records.append({"image_id": f"clean-real-{i}", "label": 0, "score": 0.2, "generator": ""})
        records.append({"image_id": f"clean-fake-{i}", "label": 1, "score": 0.7, "generator": "sd"})
    return records


def test_robust_auc_is_pooled_not_averaged():
    metrics = compute_metrics(shifted_records(), bootstrap=0)
    per_degradation = metrics["breakdown"]["per_degradation"]
    assert per_degradation["jpeg"]["roc_auc"] == 1.0
    assert per_degradation["brighten"]["roc_auc"] == 1.0
    # pooled pairs: jpeg-fakes lose to every brighten-real, win the rest -> 3 / 4
    assert metrics["robust_roc_auc"] == pytest.approx(0.75)
    assert metrics["clean_roc_auc"] == 1.0
    assert metrics["counts"]["degraded"] == {"n": 40, "n_real": 20, "n_fake": 20}
    assert "clean" not in metrics["breakdown"]["per_operator"]
    assert metrics["breakdown"]["per_degradation"]["clean"]["n"] == 20


def test_per_generator_pairs_fakes_with_all_reals_of_the_condition():
    records = [{"image_id": f"r{i}", "label": 0, "score": 0.4 + 0.01 * i, "source": "coco"} for i in range(10)]
    records += [{"image_id": f"good{i}", "label": 1, "score": 0.9, "generator": "flux", "source": "gen"}
                for i in range(3)]
    records += [{"image_id": f"bad{i}", "label": 1, "score": 0.1, "generator": "sd15", "source": "gen"}
                for i in range(4)]
    metrics = compute_metrics(records, bootstrap=0)
    per_generator = metrics["breakdown"]["per_generator"]["clean"]
    assert per_generator["flux"]["roc_auc"] == 1.0 and per_generator["flux"]["n_real"] == 10
    assert per_generator["sd15"]["roc_auc"] == 0.0 and per_generator["sd15"]["n_fake"] == 4
    assert metrics["breakdown"]["per_generator"]["degraded"] == {}
    per_source = metrics["breakdown"]["per_source"]["clean"]
    assert per_source["coco"]["roc_auc"] is None and "only real" in per_source["coco"]["note"]
    matrix = metrics["breakdown"]["generator_x_degradation"]
    assert matrix["rows"] == ["flux", "sd15"] and matrix["columns"] == ["clean"]
    assert matrix["roc_auc"] == [[1.0], [0.0]] and matrix["n_real"] == [10]
    assert metrics["robust_roc_auc"] is None and any("no degraded images" in note for note in metrics["notes"])


def test_matrix_operators_severity_levels_and_experts():
    records, rng = [], np.random.default_rng(0)
    chains = ["jpeg", "jpeg+gaussian_blur", "gaussian_blur"]
    for i in range(120):
        label = i % 2
        records.append({"image_id": str(i), "label": label, "score": float(rng.uniform(0.3 * label, 0.7 + 0.3 * label)),
                        "expert:clip": float(rng.uniform()), "expert:siglip": float(0.9 if label else 0.1),
                        "generator": ("a", "b")[i % 4 // 2] if label else "", "degradation": chains[i % 3],
                        "severity": (0.5, 2.3, 5)[i % 3 if i < 60 else (i + 1) % 3]})
    metrics = compute_metrics(records, bootstrap=20, seed=1)
    assert metrics["clean_roc_auc"] is None
    assert set(metrics["experts"]) == {"clip", "siglip"}
    assert metrics["experts"]["siglip"]["robust_roc_auc"] == 1.0
    assert metrics["experts"]["siglip"]["degraded"]["ece"] == pytest.approx(0.1)
    assert metrics["experts"]["clip"]["robust_roc_auc_ci"] is not None
    breakdown = metrics["breakdown"]
    assert set(breakdown["per_severity"]) == {"1", "3", "5"}  # 0.5 -> level 1, 2.3 -> level 3
    assert breakdown["per_operator"]["jpeg"]["n"] == 80  # 'jpeg' and 'jpeg+gaussian_blur'
    assert breakdown["generator_x_operator"]["columns"] == ["gaussian_blur", "jpeg"]
    assert breakdown["generator_x_degradation"]["columns"] == chains[2:] + chains[:2]
    assert set(breakdown["per_degradation_severity"]["jpeg"]) <= {"1", "3", "5"}
    assert metrics["settings"]["seed"] == 1 and metrics["settings"]["bootstrap"] == 20
    json.dumps(metrics, allow_nan=False)


def test_compute_metrics_rejects_bad_settings():
    records = shifted_records(2)
    with pytest.raises(MetricError, match="threshold must be a probability"):
        compute_metrics(records, threshold=50)
    with pytest.raises(MetricError, match="bootstrap must be"):
        compute_metrics(records, bootstrap=-1)
    with pytest.raises(MetricError, match="operating_point must be a dict"):
        compute_metrics(records, operating_point={"value": float("nan")})
    # a validation threshold just above 1 (nothing called AI-generated) is legitimate
    above = compute_metrics(records, bootstrap=0, operating_point={"value": float(np.nextafter(1.0, 2.0))})
    assert above["fused"]["degraded"]["tpr_at_threshold"] == 0.0


def test_compute_metrics_rejects_single_class_tables():
    with pytest.raises(MetricError, match="all 2 records are real"):
        compute_metrics([{"image_id": "a", "label": 0, "score": 0.1}, {"image_id": "b", "label": 0, "score": 0.3}])


# --- the record format -------------------------------------------------------------------------------------------

def test_columnar_and_row_records_are_equivalent():
    rows = shifted_records(3)
    columns = {key: [row.get(key) for row in rows] for key in ("image_id", "label", "score", "degradation")}
    from_rows = compute_metrics([{k: row.get(k) for k in columns} for row in rows], bootstrap=0)
    from_columns = compute_metrics(columns, bootstrap=0)
    assert from_rows["robust_roc_auc"] == from_columns["robust_roc_auc"]
    assert from_rows["breakdown"]["per_degradation"] == from_columns["breakdown"]["per_degradation"]


@pytest.mark.parametrize("record, message", [
    ({"label": 1, "score": 0.5}, r"record #0 \(counting from 0\) has no image_id"),
    ({"image_id": "x", "label": 2, "score": 0.5}, "'x': label must be 0"),
    ({"image_id": "x", "label": 1, "score": 1.5}, r"'x': score must be a probability"),
    ({"image_id": "x", "label": 1, "score": "high"}, "score must be a number"),
    ({"image_id": "x", "label": 1, "score": 0.5, "condition": "clean", "degradation": "jpeg"}, "condition is 'clean'"),
    ({"image_id": "x", "label": 1, "score": 0.5, "condition": "blurry"}, "condition must be"),
    ({"image_id": "x", "label": 1, "score": 0.5, "degradation": "jpeg", "severity": 7}, "level scale"),
    ({"image_id": "x", "label": 1, "score": 0.5, "severity": 3}, "clean image must have severity 0"),
    ({"image_id": "x", "label": 1, "score": 0.5, "experts": {"clip": 0.2}}, "flat 'expert:<name>'"),
    ({"image_id": "x", "label": 1, "score": 0.5, "expert:": 0.2}, "no expert name"),
])
def test_bad_records_name_the_record_and_field(record, message):
    with pytest.raises(RecordError, match=message):
        normalize_records([record, {"image_id": "ok", "label": 0, "score": 0.1}])


def test_duplicate_ids_and_missing_expert_scores_are_errors():
    with pytest.raises(RecordError, match="required field 'label'"):
        normalize_records([{"image_id": "a", "score": 0.1}])
    with pytest.raises(RecordError, match="'a' appears more than once"):
        normalize_records([{"image_id": "a", "label": 0, "score": 0.1}, {"image_id": "a", "label": 1, "score": 0.2}])
    with pytest.raises(RecordError, match="1 records lack a score for expert 'clip'"):
        normalize_records([{"image_id": "a", "label": 0, "score": 0.1, "expert:clip": 0.3},
                           {"image_id": "b", "label": 1, "score": 0.2}])


def test_condition_is_derived_and_unspecified_degradations_are_kept():
    table = normalize_records([
        {"image_id": "a", "label": 0, "score": 0.1},
        {"image_id": "b", "label": 1, "score": 0.2, "degradation": "jpeg", "severity": "2"},
        {"image_id": "c", "label": 1, "score": 0.2, "condition": "degraded"},
    ])
    assert table.condition.tolist() == ["clean", "degraded", "degraded"]
    assert table.degradation.tolist() == ["", "jpeg", "(unspecified)"]
    assert table.severity_levels().tolist() == [0, 2, 0]


def test_read_records_csv(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("image_id,label,score,expert:clip,generator,degradation,severity\n"
                    "a.jpg,0,0.2,0.1,,,\n"
                    "b.jpg,1,0.8,0.7,flux,jpeg,3\n"
                    "c.jpg,1,0.4,0.6,flux,,\n", encoding="utf-8")
    table = read_records_csv(path)
    assert table.experts["clip"].tolist() == [0.1, 0.7, 0.6]
    assert table.condition.tolist() == ["clean", "degraded", "clean"]
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,label,score\na,0,2.0\n", encoding="utf-8")
    with pytest.raises(RecordError, match="bad.csv.*'a'"):
        read_records_csv(bad)


def test_paired_bootstrap_difference_is_paired_clustered_and_seeded():
    import numpy as np

    from fdcore.metrics import paired_bootstrap_auc_difference, roc_auc

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    truth = labels + rng.normal(0, 0.8, labels.size)
    better = truth + rng.normal(0, 0.2, labels.size)
    worse = truth + rng.normal(0, 1.5, labels.size)
    result = paired_bootstrap_auc_difference(labels, better, worse, replicates=300, seed=3)
    assert result["difference"] == pytest.approx(roc_auc(labels, better) - roc_auc(labels, worse))
    assert 0 < result["ci"][0] < result["difference"] < result["ci"][1] and result["p_a_not_better"] < 0.05
    assert result == paired_bootstrap_auc_difference(labels, better, worse, replicates=300, seed=3)
    same = paired_bootstrap_auc_difference(labels, better, better, replicates=50)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0] and same["p_a_not_better"] == 1.0
    # two copies of each image: resampling whole images widens the interval compared with treating copies apart
    doubled = [np.repeat(values, 2) for values in (labels, better, worse)]
    grouped = paired_bootstrap_auc_difference(*doubled, groups=np.repeat(np.arange(labels.size), 2), replicates=300)
    loose = paired_bootstrap_auc_difference(*doubled, replicates=300)
    assert grouped["ci"][1] - grouped["ci"][0] > 1.2 * (loose["ci"][1] - loose["ci"][0])
    with pytest.raises(Exception, match="one id per score"):
        paired_bootstrap_auc_difference(labels, better, worse, groups=[1, 2])
