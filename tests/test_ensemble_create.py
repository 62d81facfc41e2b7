"""`fdcore ensemble create` / `info`: any trained experts become a self-contained ensemble, or nothing is written."""

import json

import numpy as np
import pytest
from PIL import Image

import fdcore
from conftest import fdcore_command, make_learnable_folder
from fdcore.ensemble import EnsembleError
from fdcore.ensemble_io import create_ensemble


@pytest.fixture
def two_experts(tmp_path):
    toy = fdcore.get_expert("toy", width=4, seed=1)
    npr = fdcore.get_expert("npr", crop_size=32, crops=4, width=8, blocks=[1, 1])
    fdcore.save_expert(toy, tmp_path / "runs" / "toy" / "expert")
    fdcore.save_expert(npr, tmp_path / "runs" / "npr" / "expert")
    return tmp_path / "runs" / "toy" / "expert", tmp_path / "runs" / "npr" / "expert"


def test_create_assembles_mixed_experts_into_a_self_contained_ensemble(two_experts, tmp_path):
    toy_dir, npr_dir = two_experts
    out = create_ensemble(tmp_path / "ens", [toy_dir, npr_dir], weights=[1.0, 3.0], aggregator="weighted")
    document = json.loads((out / "ensemble.json").read_text())
    assert [(m["name"], m["path"], m["weight"]) for m in document["experts"]] == [("toy", "toy", 1.0),
                                                                                  ("npr", "npr", 3.0)]
    assert document["aggregator"] == "weighted"
    assert sorted(p.name for p in (out / "npr").iterdir()) == ["expert.json", "manifest.json", "model.safetensors"]
    ensemble = fdcore.load_ensemble(out, device="cpu")
    assert ensemble.names == ["toy", "npr"] and len(ensemble.geometries) == 2
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (50, 70, 3), dtype=np.uint8))
              for i in range(3)]
    fused = ensemble.predict_pil(images)
    alone = [fdcore.load_ensemble(directory, device="cpu").predict_pil(images) for directory in two_experts]
    np.testing.assert_allclose(fused, (alone[0] + 3 * alone[1]) / 4, atol=1e-12)
    # the originals can go: nothing in the ensemble points outside it
    import shutil

    shutil.rmtree(tmp_path / "runs")
    np.testing.assert_array_equal(fdcore.load_ensemble(out, device="cpu").predict_pil(images), fused)


def test_create_refuses_what_it_cannot_verify_and_writes_nothing(two_experts, tmp_path):
    toy_dir, npr_dir = two_experts
    with pytest.raises(EnsembleError, match="not a directory"):
        create_ensemble(tmp_path / "a", [tmp_path / "missing"])
    with pytest.raises(EnsembleError, match="appears more than once"):
        create_ensemble(tmp_path / "a", [toy_dir, toy_dir])
    named = create_ensemble(tmp_path / "named", [("toy_1", toy_dir), ("toy_2", toy_dir)])
    assert fdcore.load_ensemble(named, device="cpu").names == ["toy_1", "toy_2"]
    with pytest.raises(EnsembleError, match="already exists"):
        create_ensemble(tmp_path / "named", [toy_dir])
    with pytest.raises(EnsembleError, match="2 weights for 1 experts"):
        create_ensemble(tmp_path / "a", [toy_dir], weights=[1, 2])
    with pytest.raises(EnsembleError, match="aggregator"):
        create_ensemble(tmp_path / "a", [toy_dir], aggregator="meen")
    weights = npr_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(fdcore.expert_io.ExpertFormatError, match="model.safetensors"):
        create_ensemble(tmp_path / "a", [toy_dir, npr_dir])
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))
    with pytest.raises(EnsembleError, match="is an ensemble"):
        create_ensemble(tmp_path / "b", [named])


def test_the_cli_creates_inspects_and_refuses_with_clear_errors(two_experts, tmp_path):
    toy_dir, npr_dir = two_experts
    out = tmp_path / "ens"
    made = fdcore_command("ensemble", "create", str(out), "--expert", f"first={toy_dir}", "--expert", str(npr_dir),
                          check=True)
    assert "2 experts (first, npr)" in made.stdout
    info = fdcore_command("ensemble", "info", str(out), check=True).stdout
    assert "native-resolution windows, 4 per image" in info and "all files match their manifests" in info
    again = fdcore_command("ensemble", "create", str(out), "--expert", str(toy_dir))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    lone = fdcore_command("calibrate", "--ensemble", str(toy_dir), "--data", str(tmp_path))
    assert lone.returncode == 2 and "fdcore ensemble create" in lone.stderr


def test_train_then_ensemble_create_then_predict_through_the_console_script(tmp_path):
    data = make_learnable_folder(tmp_path / "data", per_class=16, size=48)
    options = json.dumps({"crop_size": 32, "crops": 4, "width": 8, "blocks": [1, 1]})
    fdcore_command("train", "--expert", "npr", "--expert-options", options, "--data", str(data), "--output-dir",
                   str(tmp_path / "run"), "--epochs", "1", "--stage2-epochs", "1", "--batch-size", "8",
                   "--workers", "0", "--validation-policy", "none", "--no-progress", check=True, timeout=300)
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert (record["lr"], record["weight_decay"], record["policy"]) == (2e-4, 0.0, "none")  # NPR's own defaults
    fdcore_command("ensemble", "create", str(tmp_path / "ens"), "--expert", str(tmp_path / "run" / "expert"),
                   check=True)
    fdcore_command("predict", str(data), "--ensemble", str(tmp_path / "ens"), "--out", str(tmp_path / "pred"),
                   "--per-expert", "--quiet", check=True)
    rows = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "image_name,score,p_npr" and len(rows) == 33


def test_nothing_an_ensemble_or_expert_names_may_lie_outside_its_folder(two_experts, tmp_path):
    import os

    toy_dir, _ = two_experts
    outside = create_ensemble(tmp_path / "outside", [toy_dir])
    victim = create_ensemble(tmp_path / "victim", [toy_dir])
    document = json.loads((victim / "ensemble.json").read_text())

    def tamper(**changes):
        (victim / "ensemble.json").write_text(json.dumps({**document, **changes}))

    tamper(experts=[{"name": "toy", "path": "../outside/toy", "weight": 1.0}])
    with pytest.raises(EnsembleError, match="without '..'"):
        fdcore.load_ensemble(victim, device="cpu")
    tamper(calibration="/etc/passwd")
    with pytest.raises(EnsembleError, match="calibration"):
        fdcore.load_ensemble(victim, device="cpu")
    tamper()
    import shutil

    shutil.rmtree(victim / "toy")
    os.symlink(outside / "toy", victim / "toy")  # a member swapped for a link to another folder
    with pytest.raises(EnsembleError, match="outside the ensemble folder"):
        fdcore.load_ensemble(victim, device="cpu")
    info = fdcore_command("expert", "info", str(victim))
    assert info.returncode == 2 and "outside the ensemble folder" in info.stderr
    # an expert manifest naming a file elsewhere is refused before anything is hashed
    manifest = json.loads((outside / "toy" / "manifest.json").read_text())
    manifest["files"]["../../../../etc/passwd"] = {"size_bytes": 1, "sha256": "0" * 64}
    (outside / "toy" / "manifest.json").write_text(json.dumps(manifest))
    info = fdcore_command("expert", "info", str(outside / "toy"))
    assert info.returncode == 2 and "not a plain file name" in info.stderr and "sha256" not in info.stdout


def test_the_identity_is_that_of_the_bytes_loaded_even_if_the_folder_changes_meanwhile(two_experts, tmp_path,
                                                                                       monkeypatch):
    import shutil

    import fdcore.expert_io as expert_io

    toy_dir, _ = two_experts
    loaded_model = create_ensemble(tmp_path / "a", [toy_dir])
    other = tmp_path / "b"
    fdcore.save_expert(fdcore.get_expert("toy", width=4, seed=99), other)
    expected = expert_io.expert_identity(loaded_model / "toy")
    replaced = expert_io.expert_identity(other)
    parse = expert_io.parse_safetensors

    def swap_while_loading(data, origin):
        state = parse(data, origin)  # the verified bytes are parsed; now someone replaces the folder in place
        for name in ("expert.json", "model.safetensors", "manifest.json"):
            shutil.copy2(other / name, loaded_model / "toy" / name)
        return state

    monkeypatch.setattr(expert_io, "parse_safetensors", swap_while_loading)
    ensemble = fdcore.load_ensemble(loaded_model, device="cpu")
    monkeypatch.setattr(expert_io, "parse_safetensors", parse)
    assert ensemble.members[0].identity == expected != replaced
    reference = fdcore.get_expert("toy", width=4, seed=1)
    assert all(torch_equal(a, b) for a, b in zip(ensemble.members[0].expert.state_dict().values(),
                                                 reference.state_dict().values()))


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)
