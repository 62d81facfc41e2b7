"""Calibration (temperature, isotonic) and threshold selection on synthetic, deliberately miscalibrated scores."""

import json
import os

import numpy as np
import pytest

from fdcore.calibration import (
    CALIBRATION_FILENAME,
    Calibration,
    CalibrationError,
    _pool_adjacent_violators,
    fit_calibration,
    fit_isotonic,
    fit_temperature,
    select_threshold,
)
from fdcore.metrics import expected_calibration_error, roc_auc


def overconfident(n, seed, sharpness=3.0):
    """Labels and P(fake) whose logits are ``sharpness`` times the true posterior logits (true T = sharpness)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    evidence = rng.normal(np.where(labels == 1, 1.0, -1.0), 1.0)  # true posterior logit = 2 * evidence
    return labels, 1.0 / (1.0 + np.exp(-2.0 * sharpness * evidence))


def test_temperature_scaling_recovers_the_temperature_and_reduces_held_out_ece():
    labels, scores = overconfident(4000, seed=0)
    calibration = fit_temperature(scores, labels)
    assert calibration.method == "temperature"
    assert calibration.parameters["temperature"] == pytest.approx(3.0, rel=0.1)
    assert calibration.fitted_on["ece_after"] < calibration.fitted_on["ece_before"] / 3
    assert calibration.fitted_on["nll_after"] < calibration.fitted_on["nll_before"]
    assert calibration.fitted_on["n"] == 4000 and calibration.fitted_on["ece_bins"] == 15
    test_labels, test_scores = overconfident(4000, seed=1)
    before = expected_calibration_error(test_labels, test_scores)
    after = expected_calibration_error(test_labels, calibration.apply(test_scores))
    assert after < before / 3
    # a monotone map leaves the ranking, hence ROC AUC, unchanged
    assert roc_auc(test_labels, calibration.apply(test_scores)) == pytest.approx(roc_auc(test_labels, test_scores))


def test_temperature_from_logits_and_underconfident_scores():
    labels, scores = overconfident(3000, seed=2, sharpness=0.5)
    calibration = fit_temperature(scores, labels)
    assert calibration.parameters["temperature"] == pytest.approx(0.5, rel=0.1)
    logits = np.log(scores) - np.log1p(-scores)
    from_logits = fit_temperature(logits, labels, inputs="logits")
    assert from_logits.parameters["temperature"] == pytest.approx(calibration.parameters["temperature"], rel=1e-6)


def test_temperature_refuses_inverted_scores_and_bad_inputs():
    labels, scores = overconfident(500, seed=3)
    with pytest.raises(CalibrationError, match="not higher for AI-generated"):
        fit_temperature(1.0 - scores, labels)
    with pytest.raises(CalibrationError, match="inputs='logits'"):
        fit_temperature(scores * 4 - 2, labels)
    with pytest.raises(CalibrationError, match="needs both real"):
        fit_temperature([0.2, 0.3], [1, 1])


def test_pool_adjacent_violators_hand_computed():
    means, ends = _pool_adjacent_violators(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4))
    assert means.tolist() == [1.0, 2.5, 4.0] and ends.tolist() == [0, 2, 3]
    means, _ = _pool_adjacent_violators(np.array([3.0, 1.0]), np.array([1.0, 3.0]))
    assert means.tolist() == [1.5]


def test_isotonic_is_monotone_merges_ties_and_reduces_held_out_ece():
    labels, scores = overconfident(4000, seed=4)
    scores = np.round(scores, 3)  # many ties
    calibration = fit_isotonic(scores, labels)
    grid = np.linspace(0, 1, 1001)
    assert np.all(np.diff(calibration.apply(grid)) >= 0)
    calibrated = calibration.apply(scores)
    for value in np.unique(scores)[:50]:
        assert np.unique(calibrated[scores == value]).size == 1
    assert calibration.fitted_on["ece_after"] < 1e-9  # isotonic fits its own bins' frequencies exactly
    test_labels, test_scores = overconfident(4000, seed=5)
    assert expected_calibration_error(test_labels, calibration.apply(test_scores)) < \
        expected_calibration_error(test_labels, test_scores) / 2


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_at_target_fpr_holds_on_validation_and_is_the_best_such(target, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 1500)
    scores = np.round(1 / (1 + np.exp(-rng.normal(labels * 2.0 - 1.0, 1.2))), 2)  # ties across classes
    point = select_threshold(scores, labels, target_fpr=target)
    called = scores >= point["value"]
    fpr = called[labels == 0].mean()
    assert fpr <= target
    assert point["validation_fpr"] == pytest.approx(fpr)
    assert point["validation_tpr"] == pytest.approx(called[labels == 1].mean())
    lower = scores[scores < point["value"]]
    if lower.size:  # the next lower threshold would break the target: the chosen one maximises TPR
        assert (scores[labels == 0] >= lower.max()).mean() > target
    assert point["fpr_resolution"] == pytest.approx(1 / (labels == 0).sum())


def test_fit_calibration_picks_the_threshold_on_calibrated_scores_and_round_trips(tmp_path):
    labels, scores = overconfident(2000, seed=6)
    calibration = fit_calibration(scores, labels, method="temperature", target_fpr=0.05, description="val.csv")
    assert calibration.fitted_on["data"] == "val.csv"
    calibrated = calibration.apply(scores)
    assert (calibrated[labels == 0] >= calibration.threshold["value"]).mean() <= 0.05
    assert calibration.predict(scores).tolist() == (calibrated >= calibration.threshold["value"]).tolist()

    saved = calibration.save(tmp_path)
    assert saved == tmp_path / CALIBRATION_FILENAME
    data = json.loads(saved.read_text())
    assert data["format"] == "fdcore.calibration" and data["method"] == "temperature"
    assert set(data) == {"format", "version", "method", "parameters", "fitted_on", "threshold"}
    loaded = Calibration.load(saved)
    assert loaded.to_dict() == calibration.to_dict()
    assert np.array_equal(loaded.apply(scores), calibrated)

    isotonic = fit_calibration(scores, labels, method="isotonic", target_fpr=None)
    assert isotonic.threshold is None
    isotonic.save(tmp_path / "iso.json")
    assert np.array_equal(Calibration.load(tmp_path / "iso.json").apply(scores), isotonic.apply(scores))
    with pytest.raises(CalibrationError, match="no threshold"):
        isotonic.predict(scores)


def test_bad_calibration_files_are_clear_errors(tmp_path):
    with pytest.raises(CalibrationError, match="no calibration file"):
        Calibration.load(tmp_path / "missing.json")
    torn = tmp_path / "torn.json"
    torn.write_text('{"format": "fdcore.calib')
    with pytest.raises(CalibrationError, match="torn.json"):
        Calibration.load(torn)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "fdcore.calibration", "version": 1, "method": "temperature",
                                 "parameters": {"temperature": -1}}))
    with pytest.raises(CalibrationError, match="wrong.json: temperature must be a positive number"):
        Calibration.load(wrong)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"format": "fdcore.calibration", "version": 99, "method": "identity"}))
    with pytest.raises(CalibrationError, match="version 99"):
        Calibration.load(future)
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        fit_calibration([0.1, 0.9], [0, 1], method="platt")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / CALIBRATION_FILENAME
    Calibration("temperature", {"temperature": 2.0}).save(path)
    original = path.read_bytes()

    def failing_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        Calibration("temperature", {"temperature": 5.0}).save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILENAME]


def test_held_out_operating_point_is_reported_next_to_validation():
    from fdcore.metrics import compute_metrics

    val_labels, val_scores = overconfident(3000, seed=7)
    calibration = fit_calibration(val_scores, val_labels, target_fpr=0.05)
    test_labels, test_scores = overconfident(3000, seed=8)
    records = {"image_id": [str(i) for i in range(3000)], "label": test_labels,
               "score": calibration.apply(test_scores), "degradation": ["jpeg"] * 3000}
    metrics = compute_metrics(records, bootstrap=0, operating_point=calibration.threshold)
    assert metrics["settings"]["threshold"] == calibration.threshold["value"]
    point = metrics["operating_point"]
    assert point["validation"]["validation_fpr"] <= 0.05
    held_out = point["held_out"]["degraded"]
    expected_fpr = (calibration.apply(test_scores)[test_labels == 0] >= calibration.threshold["value"]).mean()
    assert held_out["fpr"] == pytest.approx(expected_fpr)
    assert held_out["fpr"] == pytest.approx(0.05, abs=0.02)  # same distribution: the target carries over
    shifted = dict(records, score=np.minimum(1.0, calibration.apply(test_scores) + 0.2))
    assert any("exceeds the validation target" in note
               for note in compute_metrics(shifted, bootstrap=0, operating_point=calibration.threshold)["notes"])
