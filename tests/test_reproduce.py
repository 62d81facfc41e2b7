"""recipes/reproduce.py: the miniature Table-2 reproduction (smoke size on the shared aigc-sd1x images)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fdcore
from fdcore.recipes import reproduce

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_missing_manifest_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "recipes" / "reproduce.py"), "--data", str(tmp_path),
                             "--out", str(tmp_path / "out"), "--size", "smoke"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "manifest.csv not found" in result.stderr and "Traceback" not in result.stderr


def _paths(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return [row["path"] for row in csv.DictReader(handle)]


def test_smoke_reproduction_on_real_images(shared_data, tmp_path):
    out = tmp_path / "repro"
    messages = []
    results = reproduce.run_reproduction(shared_data, out, "smoke", seed=0, echo=messages.append)

    train, heldout = _paths(out / "data" / "train.csv"), _paths(out / "data" / "heldout.csv")
    assert len(train) + len(heldout) == 2 * reproduce.SIZES["smoke"].max_per_class
    assert not set(train) & set(heldout)
    assert all(Path(path).is_absolute() and str(shared_data.resolve()) in path for path in train + heldout)
    assert json.loads((out / "data" / "split.json").read_text())["counts"]["heldout"]["images"] == len(heldout)

    kinds = [kind for kind, _ in reproduce.architectures()]
    assert sorted(kinds) == ["clip", "siglip"]
    expected = {reproduce.variant_name(kind, policy, stage) for kind in kinds for policy in ("none", "featdistill")
                for stage in ("stage1", "dense-l2", "crd")}
    assert set(results["variants"]) == expected
    assert len(results["ensembles"]) == 6
    assert set(results["aggregators"]) == set(fdcore.registry.names("aggregators"))
    for row in [*results["variants"].values(), *results["ensembles"].values(), *results["aggregators"].values()]:
        assert 0.0 <= row["clean_roc_auc"] <= 1.0 and 0.0 <= row["robust_roc_auc"] <= 1.0

    # Every variant really is a different model: stage 2 moved the weights away from the shared stage-1 model.
    stage1 = fdcore.load_expert(out / "runs" / "clip-deg-stage1" / "expert").state_dict()
    distilled = fdcore.load_expert(out / "runs" / "clip-deg-dense-l2" / "expert").state_dict()
    assert any(not np.array_equal(stage1[key].numpy(), distilled[key].numpy()) for key in stage1)
    expert = fdcore.load_expert(out / "runs" / "siglip-deg-crd" / "expert")
    assert expert.preprocessing.resize == "crop"  # native-resolution crops are recorded with the expert

    # Degraded copies are scored: one clean and one suite record per held-out image and variant.
    with open(out / "records.csv", newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 2 * len(heldout)
    assert {record["condition"] for record in records} == {"clean", "degraded"}

    table = (out / "results.md").read_text()
    assert table.count("\n| ensemble") == 6 and "| rank-mean |" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["variants"] == json.loads(json.dumps(results["variants"]))
    assert "versions" in saved and saved["split"]["counts"]["heldout"]["images"] == len(heldout)

    ensemble = fdcore.load_ensemble(out / "ensemble")
    assert len(ensemble.names) == 2

    # NPR: its variants, the three-architecture ensemble under every rule and cross-fitted weights, per-group robust
    # AUC and paired bootstrap differences.
    npr_names = [name for name, _, _ in reproduce.NPR_VARIANTS]
    assert list(results["npr"]) == npr_names
    assert fdcore.load_expert(out / "runs" / "npr-clean" / "expert").preprocessing.resize == "native"
    three = results["three_architectures"]
    assert three["members"] == ["npr-clean", "clip-deg-dense-l2", "siglip-deg-dense-l2"]
    assert set(three["aggregators"]) == set(fdcore.registry.names("aggregators")) | {
        "weighted, cross-fitted on held-out halves"}
    folds = three["aggregators"]["weighted, cross-fitted on held-out halves"]["folds"]
    assert [fold["fold"] for fold in folds] == [0, 1] and all(
        sum(fold["weights"].values()) == pytest.approx(1.0) for fold in folds)
    assert set(results["groups"]["npr-clean"]) == {"blur", "color", "compression", "geometric", "noise"}
    assert {(row["a"], row["b"]) for row in results["paired"]} >= {("3-arch mean", "npr-clean")}
    for row in results["paired"]:
        assert row["ci"][0] <= row["ci"][1] and 0 <= row["p_a_not_better"] <= 1 and -1 <= row["difference"] <= 1
    assert "Paired bootstrap" in table and "| npr-jpeg | jpeg-recompress |" in table
    assert "| npr-featdistill | featdistill |" in table

    # A second invocation reuses every trained run and reproduces the same figures.
    again = reproduce.run_reproduction(shared_data, out, "smoke", seed=0, echo=messages.append)
    assert sum("already trained, reused" in message for message in messages) == len(expected) + len(npr_names)
    assert again["variants"] == results["variants"] and again["npr"] == results["npr"]


def test_another_dataset_in_the_same_output_is_refused(shared_data, tmp_path):
    out = tmp_path / "repro"
    (out / "data").mkdir(parents=True)
    (out / "data" / "split.json").write_text(json.dumps({"manifest": "/elsewhere/manifest.csv", "size": "smoke"}))
    with pytest.raises(reproduce.ReproductionError, match="use another --out"):
        reproduce.run_reproduction(shared_data, out, "smoke")
