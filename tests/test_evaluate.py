"""`fdcore evaluate` and `fdcore calibrate` on a toy ensemble: real scoring, degradations, metrics, report."""

import csv
import json

import pytest
from click.testing import CliRunner

import fdcore
from fdcore.cli import cli


@pytest.fixture
def small_folder(tmp_path):
    from conftest import make_learnable_folder

    return make_learnable_folder(tmp_path / "data", per_class=12)


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_metrics_records_and_report(toy_ensemble, small_folder, tmp_path):
    out = tmp_path / "eval"
    result = invoke("evaluate", "--ensemble", str(toy_ensemble), "--data", str(small_folder), "--out", str(out),
                    "--copies", "2", "--bootstrap", "50", "--workers", "0", "--quiet")
    assert "robust ROC AUC" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["clean_roc_auc"] <= 1 and 0 <= metrics["robust_roc_auc"] <= 1
    assert set(metrics["experts"]) == {"one", "two"}
    assert metrics["evaluation"]["variants"]["suite"] == "ntire2026-test-like"
    assert metrics["counts"]["clean"]["n"] == 24 and metrics["counts"]["degraded"]["n"] == 48
    rows = read_rows(out / "records.csv")
    assert len(rows) == 24 * 3
    degraded = [row for row in rows if row["condition"] == "degraded"]
    assert len(degraded) == 48
    for row in degraded:
        record = json.loads(row["degradation_record"])
        chain = [step["op"] for step in record["ops"]]
        assert 1 <= len(chain) <= 5 and "+".join(chain) == row["degradation"]
        assert record["seed"] == 0
    for name in ("report.html", "report.md", "roc_curves.png"):
        assert (out / name).is_file()


def test_evaluate_is_deterministic_across_workers(toy_ensemble, small_folder, tmp_path):
    common = ["--ensemble", str(toy_ensemble), "--data", str(small_folder), "--bootstrap", "0", "--quiet",
              "--seed", "4"]
    invoke("evaluate", *common, "--out", str(tmp_path / "a"), "--workers", "0", "--batch-size", "5")
    invoke("evaluate", *common, "--out", str(tmp_path / "b"), "--workers", "2", "--batch-size", "16")
    assert (tmp_path / "a" / "records.csv").read_bytes() == (tmp_path / "b" / "records.csv").read_bytes()


def test_sweep_scores_each_operator_at_each_level(toy_ensemble, small_folder, tmp_path):
    out = tmp_path / "sweep"
    invoke("evaluate", "--ensemble", str(toy_ensemble), "--data", str(small_folder), "--out", str(out),
           "--suite", "none", "--sweep", "jpeg,gaussian_blur", "--bootstrap", "0", "--workers", "0", "--quiet")
    rows = read_rows(out / "records.csv")
    variants = {row["image_id"][len(row["path"]) + 1:] for row in rows}
    assert variants == {"clean"} | {f"{op}@{level}" for op in ("jpeg", "gaussian_blur") for level in range(1, 6)}
    metrics = json.loads((out / "metrics.json").read_text())
    assert "jpeg" in json.dumps(metrics["breakdown"])


def test_unknown_suite_or_operator_fails_before_scoring(toy_ensemble, small_folder, tmp_path):
    for args in (["--suite", "no-such-policy"], ["--sweep", "no_such_op"]):
        result = CliRunner().invoke(cli, ["evaluate", "--ensemble", str(toy_ensemble), "--data", str(small_folder),
                                          "--out", str(tmp_path / "x"), *args])
        assert result.exit_code != 0
        assert not (tmp_path / "x").exists()


def test_calibrate_stores_calibration_and_evaluate_uses_it(toy_ensemble, small_folder, tmp_path):
    result = invoke("calibrate", "--ensemble", str(toy_ensemble), "--data", str(small_folder), "--target-fpr", "0.1",
                    "--workers", "0", "--quiet")
    assert "threshold" in result.output
    document = json.loads((toy_ensemble / "ensemble.json").read_text())
    assert document["calibration"] == "calibration.json"
    calibration = json.loads((toy_ensemble / "calibration.json").read_text())
    assert calibration["method"] == "temperature"
    assert calibration["threshold"]["validation_fpr"] <= 0.1
    assert document["threshold"]["value"] == calibration["threshold"]["value"]

    out = tmp_path / "calibrated"
    invoke("evaluate", "--ensemble", str(toy_ensemble), "--data", str(small_folder), "--out", str(out),
           "--bootstrap", "0", "--workers", "0", "--quiet")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["calibrated"] is True
    assert metrics["operating_point"]["validation"]["value"] == calibration["threshold"]["value"]
    assert "fpr" in metrics["operating_point"]["held_out"]["clean"]
    rows = read_rows(out / "records.csv")
    assert any(row["score"] != row["raw_score"] for row in rows)


def test_predict_outputs_calibrated_scores_for_the_rule_it_was_fitted_for(toy_ensemble, small_folder, tmp_path):
    invoke("calibrate", "--ensemble", str(toy_ensemble), "--data", str(small_folder), "--clean-only",
           "--workers", "0", "--quiet")
    calibration = fdcore.calibration.Calibration.load(toy_ensemble)
    ensemble = fdcore.load_ensemble(toy_ensemble, device="cpu")
    paths = sorted(str(p) for p in (small_folder / "fake").iterdir())[:3]
    raw = ensemble.fuse(ensemble.expert_probabilities([__import__("PIL.Image").Image.open(p) for p in paths]))

    out = tmp_path / "predicted"
    invoke("predict", str(small_folder), "--ensemble", str(toy_ensemble), "--out", str(out), "--workers", "0",
           "--quiet")
    scores = {row["image_name"]: float(row["score"]) for row in read_rows(out / "predictions.csv")}
    expected = calibration.apply(raw)
    for path, value in zip(paths, expected):
        assert scores["fake/" + path.rsplit("/", 1)[1]] == pytest.approx(value, abs=1e-7)
    meta = json.loads((out / "predictions.meta.json").read_text())
    assert meta["calibrated"] is True and "calibrated" in meta["score_definition"]

    other = tmp_path / "max-rule"
    invoke("predict", str(small_folder), "--ensemble", str(toy_ensemble), "--out", str(other), "--workers", "0",
           "--aggregator", "max", "--quiet")
    assert json.loads((other / "predictions.meta.json").read_text())["calibrated"] is False


def test_set_level_fusion_sees_the_whole_evaluation_whatever_the_batch(toy_ensemble, small_folder):
    from fdcore.ensemble_io import load_ensemble
    from fdcore.evaluation import VariantPlan, load_rows, score_dataset

    ensemble = load_ensemble(toy_ensemble, device="cpu")
    _, rows = load_rows([str(small_folder)])
    plan = VariantPlan(copies=1, seed=2)
    by_batch = {}
    for batch_size in (1, 16):
        records, _ = score_dataset(ensemble, rows, plan, aggregator="rank-mean", batch_size=batch_size)
        by_batch[batch_size] = {record["image_id"]: record["score"] for record in records}
    assert by_batch[1] == by_batch[16]
    scores = sorted(by_batch[1].values())
    assert len(set(scores)) > len(scores) // 2 and scores[0] < 0.2 and scores[-1] > 0.8  # ranks over all 48 variants


def test_a_sweep_never_changes_the_headline_robust_auc(toy_ensemble, small_folder, tmp_path):
    common = ["--ensemble", str(toy_ensemble), "--data", str(small_folder), "--copies", "1", "--bootstrap", "0",
              "--workers", "0", "--quiet"]
    invoke("evaluate", *common, "--out", str(tmp_path / "plain"))
    invoke("evaluate", *common, "--out", str(tmp_path / "swept"), "--sweep", "jpeg,motion_blur")
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    swept = json.loads((tmp_path / "swept" / "metrics.json").read_text())
    assert swept["robust_roc_auc"] == plain["robust_roc_auc"] and swept["clean_roc_auc"] == plain["clean_roc_auc"]
    assert set(swept["breakdown"]["sweep"]) == {"jpeg", "motion_blur"}
    assert set(swept["breakdown"]["sweep"]["jpeg"]) == {"1", "2", "3", "4", "5"}
    assert swept["breakdown"]["sweep"]["jpeg"]["3"]["n_real"] == 12
    assert "Sweep: jpeg at each level" in (tmp_path / "swept" / "report.md").read_text()
    rows = read_rows(tmp_path / "swept" / "records.csv")
    assert {row["condition"] for row in rows} == {"clean", "degraded", "sweep"}


def test_calibrated_decisions_with_an_inconclusive_band_in_predict_and_evaluate(toy_ensemble, small_folder, tmp_path):
    from fdcore.scoring import decision

    refused = CliRunner().invoke(cli, ["calibrate", "--ensemble", str(toy_ensemble), "--data", str(small_folder),
                                       "--clean-only", "--workers", "0", "--quiet", "--inconclusive", "0.999,1.0"])
    assert refused.exit_code != 0 and "does not contain the chosen threshold" in str(refused.exception or refused.output)
    invoke("calibrate", "--ensemble", str(toy_ensemble), "--data", str(small_folder), "--clean-only", "--workers", "0",
           "--quiet", "--target-fpr", "0.2", "--inconclusive", "0.0,1.0")  # everything inconclusive: easy to check
    threshold = json.loads((toy_ensemble / "calibration.json").read_text())["threshold"]
    assert threshold["inconclusive"] == [0.0, 1.0] and threshold["inconclusive_share"] == 1.0
    out = tmp_path / "predicted"
    invoke("predict", str(small_folder), "--ensemble", str(toy_ensemble), "--out", str(out), "--workers", "0",
           "--per-expert", "--quiet")
    with open(out / "predictions.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["image_name", "score", "decision", "disagreement", "p_raw_one", "p_raw_two"]
    rows = read_rows(out / "predictions.csv")
    assert {row["decision"] for row in rows} == {"inconclusive"} and {row["disagreement"] for row in rows} <= {"yes", "no"}
    meta = json.loads((out / "predictions.meta.json").read_text())
    assert "raw" in meta["columns"]["p_raw_one"] and "inconclusive" in meta["columns"]["decision"]

    # a narrow band: decisions follow the rule, members that straddle the threshold are flagged
    calibration = json.loads((toy_ensemble / "calibration.json").read_text())
    value = calibration["threshold"]["value"]
    calibration["threshold"]["inconclusive"] = [max(0.0, value - 0.01), min(1.0, value + 0.01)]
    (toy_ensemble / "calibration.json").write_text(json.dumps(calibration))
    narrow = tmp_path / "narrow"
    invoke("predict", str(small_folder), "--ensemble", str(toy_ensemble), "--out", str(narrow), "--workers", "0",
           "--per-expert", "--quiet")
    rows = read_rows(narrow / "predictions.csv")
    assert [row["decision"] for row in rows] == [decision(float(row["score"]), calibration["threshold"])
                                                  for row in rows]
    assert {"ai", "real"} <= {row["decision"] for row in rows}
    ensemble = fdcore.load_ensemble(toy_ensemble, device="cpu")
    for row in rows:
        calls = {ensemble.calibrated([float(row[f"p_raw_{name}"])])[0][0] >= value for name in ("one", "two")}
        assert (row["disagreement"] == "yes") == (len(calls) == 2)

    report = tmp_path / "report"
    invoke("evaluate", "--ensemble", str(toy_ensemble), "--data", str(small_folder), "--out", str(report),
           "--bootstrap", "0", "--workers", "0", "--quiet", "--copies", "0")
    decisions = json.loads((report / "metrics.json").read_text())["decisions"]
    assert "Calibrated decisions at threshold" in (report / "report.md").read_text()
    clean = decisions["clean"]
    assert sum(sum(cell.values()) for cell in clean["confusion"].values()) == clean["n"] == len(rows)
    assert clean["confusion"]["ai"]["fake"] + clean["confusion"]["real"]["fake"] + \
        clean["confusion"]["inconclusive"]["fake"] == sum(1 for row in rows if row["image_name"].startswith("fake/"))

    calibration["threshold"]["inconclusive"] = ["low", "high"]  # a forged band is refused by name, not a traceback
    (toy_ensemble / "calibration.json").write_text(json.dumps(calibration))
    from conftest import fdcore_command

    result = fdcore_command("predict", str(small_folder), "--ensemble", str(toy_ensemble), "--out",
                            str(tmp_path / "forged"), "--workers", "0", "--quiet")
    assert result.returncode == 2 and "threshold.inconclusive" in result.stderr and "Traceback" not in result.stderr
