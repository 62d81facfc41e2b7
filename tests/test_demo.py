"""The README's `fdcore demo`, at the reduced size: every stage runs and leaves its outputs where documented."""

import csv
import json

from conftest import fdcore_command


def test_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    result = fdcore_command("demo", "--out", str(out), "--size", "small", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not a real-world detector" in result.stdout
    assert "clean ROC AUC" in result.stdout and "robust ROC AUC" in result.stdout
    for step in range(1, 7):
        assert f"[{step}/6]" in result.stdout  # data, three experts, predict, evaluate

    ensemble = json.loads((out / "ensemble" / "ensemble.json").read_text())
    assert [member["name"] for member in ensemble["experts"]] == ["clip_1", "npr_1", "siglip_1"]
    assert ensemble["aggregator"] == "mean" and ensemble["card"]["synthetic_data"] is True
    for member in ensemble["experts"]:
        card = json.loads((out / "ensemble" / member["path"] / "expert.json").read_text())["card"]
        assert card["hyperparameters"]["distiller"] == "dense-l2"
        # NPR trains without degradations by default: they would resample the pixels it reads
        assert card["hyperparameters"]["policy"] == ("none" if member["name"] == "npr_1" else "featdistill")

    with open(out / "predictions" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48
    assert {"image_name", "score"} <= set(rows[0])
    assert all(0.0 <= float(row["score"]) <= 1.0 for row in rows)

    metrics = json.loads((out / "report" / "metrics.json").read_text())
    summary = json.loads((out / "demo.json").read_text())
    assert summary["clean_roc_auc"] == metrics["clean_roc_auc"]
    assert summary["robust_roc_auc"] == metrics["robust_roc_auc"]
    assert (out / "report" / "report.html").is_file()

    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    refused = fdcore_command("demo", "--out", str(tmp_path / "precious"), "--size", "small")
    assert refused.returncode == 2 and "not an earlier demo output" in refused.stderr
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"
