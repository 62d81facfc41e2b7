"""Ensembles on the Hugging Face Hub, tested offline: `fdcore ensemble push` up to the huggingface_hub call (the
client is substituted: the Hub cannot be reached from the test machines), and `hf://ORG/NAME[@REV]` loaded from a
Hugging Face cache seeded in a temporary HF_HOME with the real layout (refs/, snapshots/<commit>/ links into blobs/),
with HF_HUB_OFFLINE=1."""

import hashlib
import json
import os
import shutil
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import fdcore
from conftest import fdcore_command
from fdcore.ensemble_io import create_ensemble
from fdcore.hub import HubError, parse_hub_uri, push_ensemble

REPO = "fdcore-test/detector"
COMMIT = "3f2c9a7d1e5b4c6a8f0e2d4b6a8c0e1f3a5b7c9d"
OTHER_COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOY_CARD = {"recipe": "two_stage",
            "data": {"spec": {"sources": [{"name": "gen", "kind": "hub", "location": "fdcore-test/gen-images",
                                           "uri": "hub:fdcore-test/gen-images?split=train", "weight": 2.0}],
                              "validation": {"fraction": 0.1}},
                     "counts": {"sources": {"gen": {"rows": 120, "real": 60, "fake": 60}}}},
            "hyperparameters": {"init": "pretrained", "backbone": "fdcore-test/backbone", "epochs": 2,
                                "policy": "featdistill", "distiller": "dense-l2"},
            "metrics": {"stage1": {"clean_roc_auc": 0.91}}}
NPR_CARD = {"recipe": "two_stage",
            "data": {"spec": {"sources": [{"name": "photos", "kind": "folder", "location": "/data/photos",
                                           "weight": 1.0}]}},
            "hyperparameters": {"init": "random", "epochs": 1}}


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi (no network here): records the calls and the uploaded folder's files."""

    instances: ClassVar[list] = []

    def __init__(self, **options):
        self.options, self.calls, self.uploaded = options, [], None
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **options):
        self.calls.append(("create_repo", repo_id, options))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **options):
        self.calls.append(("create_branch", repo_id, options))

    def upload_folder(self, *, repo_id, folder_path, **options):
        self.calls.append(("upload_folder", repo_id, {k: v for k, v in options.items()}))
        root = Path(folder_path)
        self.uploaded = {path.relative_to(root).as_posix(): path.read_bytes()
                         for path in sorted(root.rglob("*")) if path.is_file()}
        return types.SimpleNamespace(oid=COMMIT, commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}")


def seed_cache(hub_cache: Path, repo_id: str, files: dict, commit: str = COMMIT, refs=("main",)) -> Path:
    """Lay ``files`` out exactly as huggingface_hub caches a download: blobs named by SHA-256 (LFS files) or git
    blob SHA-1 (others), snapshots/<commit>/<path> relative links to them, refs/<name> holding the commit."""
    repository = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repository / "snapshots" / commit
    for name, data in files.items():
        blob_name = (hashlib.sha256(data).hexdigest() if name.endswith(".safetensors")
                     else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        blob = repository / "blobs" / blob_name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repository / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repository / "refs" / ref).write_text(commit)
    return snapshot


def blob_of(snapshot: Path, name: str) -> Path:
    return Path(os.path.realpath(snapshot / name))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A calibrated two-expert ensemble (toy + NPR), an `fdcore evaluate` of it, and what push uploaded."""
    from conftest import make_learnable_folder
    from fdcore.evaluation import VariantPlan, run_calibration, run_evaluation

    root = tmp_path_factory.mktemp("hub")
    fdcore.save_expert(fdcore.get_expert("toy", width=4, seed=1), root / "runs" / "toy", card=TOY_CARD)
    fdcore.save_expert(fdcore.get_expert("npr", crop_size=32, crops=4, width=8, blocks=[1, 1]), root / "runs" / "npr",
                       card=NPR_CARD)
    ensemble_dir = create_ensemble(root / "ensemble", [root / "runs" / "toy", root / "runs" / "npr"],
                                   weights=[1.0, 2.0], aggregator="weighted")
    data = make_learnable_folder(root / "data", per_class=6, size=32)
    plan = VariantPlan(clean=True, suite=None, copies=0, sweep_operators=(), seed=0)
    # isotonic: untrained experts may rank either way, which temperature scaling refuses
    run_calibration(ensemble_dir, [str(data)], plan, method="isotonic", target_fpr=0.2, device="cpu")
    metrics = run_evaluation(ensemble_dir, [str(data)], root / "report", plan, device="cpu", bootstrap=0)
    before = {path: path.read_bytes() for path in sorted(ensemble_dir.rglob("*")) if path.is_file()}
    api = FakeHfApi()
    result = push_ensemble(ensemble_dir, REPO, private=True, revision="v1", evaluation=root / "report", api=api)
    after = {path: path.read_bytes() for path in sorted(ensemble_dir.rglob("*")) if path.is_file()}
    assert before == after  # the ensemble folder itself is never written to
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8))
              for i in range(3)]
    local = fdcore.load_ensemble(ensemble_dir, device="cpu")
    return types.SimpleNamespace(root=root, ensemble=ensemble_dir, api=api, result=result, files=api.uploaded,
                                 metrics=metrics, images=images, identity=local.identity,
                                 scores=local.predict_pil(images), data=data)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in a temporary HF_HOME, offline. huggingface_hub reads its settings when imported,
    so this process's copy is pointed at it too; subprocesses read the environment."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


# -- push ---------------------------------------------------------------------------------------------------------


def test_push_uploads_exactly_the_verified_ensemble_its_card_and_manifest(pushed):
    calls = pushed.api.calls
    assert [call[0] for call in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][1:] == (REPO, {"private": True, "exist_ok": True})
    assert calls[1][1:] == (REPO, {"branch": "v1", "exist_ok": True})
    assert calls[2][2]["revision"] == "v1" and calls[2][2]["delete_patterns"] == ["*"]
    assert sorted(pushed.files) == ["README.md", "calibration.json", "ensemble.json", "hub-manifest.json",
                                    "npr/expert.json", "npr/manifest.json", "npr/model.safetensors",
                                    "toy/expert.json", "toy/manifest.json", "toy/model.safetensors"]
    assert sorted(pushed.files) == pushed.result.files and pushed.result.commit == COMMIT
    for name, data in pushed.files.items():  # the ensemble's own files, byte for byte
        if name not in ("README.md", "hub-manifest.json"):
            assert (pushed.ensemble / name).read_bytes() == data, name
    manifest = json.loads(pushed.files["hub-manifest.json"])
    assert manifest["identity"] == pushed.identity == pushed.result.identity
    assert sorted(manifest["files"]) == sorted(set(pushed.files) - {"README.md", "hub-manifest.json"})
    for name, entry in manifest["files"].items():
        assert entry == {"size_bytes": len(pushed.files[name]),
                         "sha256": hashlib.sha256(pushed.files[name]).hexdigest()}


def test_the_model_card_has_the_hub_header_and_says_what_the_ensemble_is(pushed):
    card = pushed.files["README.md"].decode()
    assert card == pushed.result.card
    _, header, body = card.split("---\n", 2)
    metadata = yaml.safe_load(header)
    assert metadata["library_name"] == "fdcore" and metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == "image-classification"
    assert {"fdcore", "ai-generated-image-detection", "toy", "npr"} <= set(metadata["tags"])
    assert metadata["base_model"] == ["fdcore-test/backbone"]  # the toy expert's; NPR was trained from scratch
    assert metadata["datasets"] == ["fdcore-test/gen-images"]
    results = metadata["model-index"][0]["results"][0]
    values = {metric["name"]: metric["value"] for metric in results["metrics"]}
    assert values["clean ROC AUC"] == round(pushed.metrics["clean_roc_auc"], 4)
    assert results["dataset"]["name"] == "data"
    for expected in (f"# {REPO}", pushed.identity, "`toy`, `npr`", "`weighted` rule", "isotonic calibration",
                     "| toy | toy | fdcore-toy |", "| npr | npr | fdcore-npr |", "fdcore-test/gen-images",
                     "120 (60 / 60)", "/data/photos", "policy `featdistill`", "stage1 clean_roc_auc 0.9100",
                     "## Calibration", "Decision threshold", "## Evaluation", "on 12 images", "## Intended use",
                     "## Limitations", "## Licence", f"hf://{REPO}"):
        assert expected in body, expected


def test_push_refuses_what_it_cannot_verify_and_uploads_nothing(pushed, tmp_path):
    from fdcore.ensemble import EnsembleError
    from fdcore.expert_io import ExpertFormatError

    api = FakeHfApi()
    copy = tmp_path / "ensemble"
    shutil.copytree(pushed.ensemble, copy)
    with pytest.raises(HubError, match="give the repository as ORG/NAME and the branch with --revision main"):
        push_ensemble(copy, f"{REPO}@main", api=api)
    with pytest.raises(HubError, match="not a Hub ensemble reference"):
        push_ensemble(copy, "no-namespace", api=api)
    with pytest.raises(HubError, match="--license"):
        push_ensemble(copy, REPO, license="Apache 2", api=api)
    with pytest.raises(EnsembleError, match="single expert"):
        push_ensemble(pushed.root / "runs" / "npr", REPO, api=api)
    report = json.loads((pushed.root / "report" / "metrics.json").read_text())
    report["evaluation"]["ensemble"]["identity"] = "0" * 64
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "metrics.json").write_text(json.dumps(report))
    with pytest.raises(HubError, match="run `fdcore evaluate --ensemble DIR"):
        push_ensemble(copy, REPO, evaluation=tmp_path / "stale", api=api)
    weights = copy / "npr" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ExpertFormatError, match="npr/model.safetensors"):
        push_ensemble(copy, REPO, api=api)
    assert api.calls == []


def test_push_and_dry_run_from_the_command_line(pushed, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from fdcore.cli import cli

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.instances.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = CliRunner().invoke(cli, ["ensemble", "push", str(pushed.ensemble), REPO])
    assert offline.exit_code != 0 and "HF_HUB_OFFLINE is set" in str(offline.exception)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    dry = CliRunner().invoke(cli, ["ensemble", "push", str(pushed.ensemble), REPO, "--dry-run", "--license", "mit"])
    assert dry.exit_code == 0, dry.output
    assert "license: mit" in dry.output and "dry run: would upload 10 files" in dry.output
    assert FakeHfApi.instances == []
    result = CliRunner().invoke(cli, ["ensemble", "push", str(pushed.ensemble), f"hf://{REPO}", "--evaluation",
                                      str(pushed.root / "report")])
    assert result.exit_code == 0, result.output
    (api,) = FakeHfApi.instances
    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2] == {"private": False, "exist_ok": True} and api.calls[1][2]["revision"] is None
    assert f"--ensemble hf://{REPO}@{COMMIT}" in result.output
    assert api.uploaded["hub-manifest.json"] == pushed.files["hub-manifest.json"]


# -- pull and load ------------------------------------------------------------------------------------------------


def test_a_pushed_ensemble_loads_offline_from_the_cache_and_scores_the_same(pushed, hub_cache):
    snapshot = seed_cache(hub_cache, REPO, pushed.files, refs=("main", "v1"))
    for uri in (f"hf://{REPO}", f"hf://{REPO}@v1", f"hf://{REPO}@{COMMIT}"):
        ensemble = fdcore.load_ensemble(uri, device="cpu")
        assert ensemble.identity == pushed.identity  # the card and the manifest are not part of the identity
        assert Path(ensemble.source) == snapshot.resolve()
        np.testing.assert_array_equal(ensemble.predict_pil(pushed.images), pushed.scores)
    assert ensemble.threshold is not None and ensemble.calibrator is not None  # calibration.json is a cached blob
    pulled = fdcore.pull_ensemble(REPO)
    assert (pulled.commit, pulled.identity, pulled.path) == (COMMIT, pushed.identity, snapshot)


def test_predict_and_pull_on_the_command_line_offline(pushed, hub_cache, tmp_path):
    seed_cache(hub_cache, REPO, pushed.files)
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(pushed.images):
        image.save(images / f"{index}.png")
    result = fdcore_command("predict", str(images), "--ensemble", f"hf://{REPO}@main", "--out", str(tmp_path / "out"),
                            "--quiet", "--workers", "0", "--precision", "fp32", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "out" / "predictions.meta.json").read_text())
    assert pushed.identity in json.dumps(meta)
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("image_name,score") and len(rows) == 4
    pulled = fdcore_command("ensemble", "pull", REPO, "--to", str(tmp_path / "local"), check=True)
    assert f"commit {COMMIT}" in pulled.stdout and pushed.identity in pulled.stdout
    local = tmp_path / "local"
    assert not any(path.is_symlink() for path in local.rglob("*"))
    assert not (local / "README.md").exists() and not (local / "hub-manifest.json").exists()
    assert fdcore.load_ensemble(local, device="cpu").identity == pushed.identity
    refused = fdcore_command("calibrate", "--ensemble", f"hf://{REPO}", "--data", str(pushed.data))
    assert refused.returncode == 2 and f"fdcore ensemble pull {REPO} --to DIR" in refused.stderr


def test_a_tampered_blob_is_refused_naming_the_file(pushed, hub_cache, tmp_path):
    snapshot = seed_cache(hub_cache, REPO, pushed.files)
    blob = blob_of(snapshot, "npr/model.safetensors")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    blob.write_bytes(bytes(data))
    with pytest.raises(HubError, match=r"npr/model\.safetensors SHA-256 [0-9a-f]{64} does not match "
                                       r"hub-manifest\.json"):
        fdcore.load_ensemble(f"hf://{REPO}", device="cpu")
    (tmp_path / "images").mkdir()
    result = fdcore_command("predict", str(tmp_path / "images"), "--ensemble", f"hf://{REPO}", "--out",
                            str(tmp_path / "out"))
    assert result.returncode == 2 and "npr/model.safetensors" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    blob.write_bytes(bytes(data[:-1]))  # truncated
    with pytest.raises(HubError, match="npr/model.safetensors has .* bytes but hub-manifest.json says"):
        fdcore.pull_ensemble(f"hf://{REPO}")


def test_links_out_of_the_repo_and_unlisted_or_missing_files_are_refused(pushed, hub_cache, tmp_path):
    snapshot = seed_cache(hub_cache, REPO, pushed.files)
    link = snapshot / "calibration.json"
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(pushed.files["calibration.json"])  # the right bytes, but not in this repository's cache
    os.unlink(link)
    os.symlink(outside, link)
    with pytest.raises(HubError, match="calibration.json is a link to .* not a file of this repository's cache"):
        fdcore.load_ensemble(f"hf://{REPO}", device="cpu")
    os.unlink(link)
    with pytest.raises(HubError, match="calibration.json .* is missing from the snapshot"):
        fdcore.load_ensemble(f"hf://{REPO}", device="cpu")
    shutil.copyfile(outside, link)  # a plain file (caches without symlinks) is read where it is
    assert fdcore.pull_ensemble(REPO).identity == pushed.identity
    (snapshot / "npr" / "extra.safetensors").write_bytes(b"never verified")
    with pytest.raises(HubError, match="npr/extra.safetensors is not listed in hub-manifest.json"):
        fdcore.pull_ensemble(REPO)
    os.unlink(snapshot / "npr" / "extra.safetensors")
    (snapshot / "README.md").unlink()  # the card may be edited or absent: it is never read
    (snapshot / "README.md").write_text("edited on the Hub")
    assert fdcore.pull_ensemble(REPO).identity == pushed.identity
    (snapshot / "hub-manifest.json").unlink()
    with pytest.raises(HubError, match="holds no hub-manifest.json, so it is not an fdcore ensemble repository"):
        fdcore.pull_ensemble(REPO)


def test_a_manifest_that_disagrees_with_the_ensemble_is_refused(pushed, hub_cache):
    files = dict(pushed.files)
    manifest = json.loads(files["hub-manifest.json"])
    manifest["identity"] = "f" * 64
    files["hub-manifest.json"] = json.dumps(manifest).encode()
    seed_cache(hub_cache, REPO, files)
    with pytest.raises(HubError, match="the files give ensemble identity"):
        fdcore.pull_ensemble(REPO)
    other = "fdcore-test/other"
    files = {name: data for name, data in pushed.files.items() if name != "calibration.json"}
    manifest = json.loads(files["hub-manifest.json"])
    del manifest["files"]["calibration.json"]
    files["hub-manifest.json"] = json.dumps(manifest).encode()
    seed_cache(hub_cache, other, files)  # ensemble.json still names calibration.json
    with pytest.raises(HubError, match="the ensemble consists of calibration.json too, which hub-manifest.json "
                                       "does not list"):
        fdcore.pull_ensemble(other)
    files["npr/notes.json"] = b"{}"
    manifest["files"]["npr/notes.json"] = {"size_bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}
    manifest["files"]["calibration.json"] = json.loads(pushed.files["hub-manifest.json"])["files"]["calibration.json"]
    files["calibration.json"] = pushed.files["calibration.json"]
    files["hub-manifest.json"] = json.dumps(manifest).encode()
    seed_cache(hub_cache, "fdcore-test/third", files)  # listed and verified, but not part of the ensemble
    with pytest.raises(HubError, match="hub-manifest.json lists npr/notes.json, which the ensemble does not"):
        fdcore.pull_ensemble("fdcore-test/third")


def test_not_cached_while_offline_is_a_clear_error(pushed, hub_cache, tmp_path):
    with pytest.raises(HubError, match=rf"hf://{REPO} is not in the Hugging Face cache .* HF_HUB_OFFLINE is set: .*"
                                       rf"`fdcore ensemble pull {REPO}`"):
        fdcore.load_ensemble(f"hf://{REPO}", device="cpu")
    seed_cache(hub_cache, REPO, pushed.files)
    with pytest.raises(HubError, match=r"at revision 'v2' .*`fdcore ensemble pull fdcore-test/detector@v2`"):
        fdcore.load_ensemble(f"hf://{REPO}@v2", device="cpu")
    with pytest.raises(HubError, match="not in the Hugging Face cache"):
        fdcore.pull_ensemble(f"{REPO}@{OTHER_COMMIT}")
    (tmp_path / "images").mkdir()
    for command in (["predict", str(tmp_path / "images"), "--ensemble", "hf://fdcore-test/absent", "--out",
                     str(tmp_path / "out")],
                    ["evaluate", "--ensemble", "hf://fdcore-test/absent", "--data", str(pushed.data), "--out",
                     str(tmp_path / "report")],
                    ["ensemble", "pull", "fdcore-test/absent"]):
        result = fdcore_command(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "hf://fdcore-test/absent is not in the Hugging Face cache" in result.stderr
        assert "fdcore ensemble pull fdcore-test/absent" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["hf://", "hf://detector", "hf://org/name/extra", "hf://org/name@", "hf:org/name",
                                   "HF://org/name", "hf://org/na me", "hf://../name", "hf://org/..", "hf://org--x/y",
                                   "hf://org/name@../main", "hf://org/name@a b", "hf://org/name@main/", "hf://-org/x"])
def test_malformed_references_are_refused(value, hub_cache):
    with pytest.raises(HubError, match="hf://ORG/NAME"):
        fdcore.load_ensemble(value, device="cpu")


def test_a_malformed_reference_on_the_command_line(tmp_path):
    (tmp_path / "images").mkdir()
    result = fdcore_command("predict", str(tmp_path / "images"), "--ensemble", "hf://org/name/extra", "--out",
                            str(tmp_path / "out"))
    assert result.returncode == 2 and "'hf://org/name/extra' is not a Hub ensemble reference" in result.stderr
    assert "Traceback" not in result.stderr


def test_parsed_references():
    assert parse_hub_uri("hf://org/name") == fdcore.hub.HubRef("org/name", None)
    assert parse_hub_uri("hf://Org.x/name_2@refs/pr/3").revision == "refs/pr/3"
    assert parse_hub_uri("org/name@v1.0", bare=True).uri == "hf://org/name@v1.0"
    with pytest.raises(HubError):
        parse_hub_uri("org/name")  # without the scheme only where a Hub repository is the only meaning


def test_what_the_hub_answers_becomes_a_clear_error(monkeypatch, hub_cache):
    """Online-only answers (no such revision or repository) cannot be produced offline: the download call raises
    them as huggingface_hub does."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors

    response = httpx2.Response(404, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{REPO}"))
    for raised, expected in ((errors.RevisionNotFoundError("no revision", response=response),
                              "revision 'v9' does not exist in fdcore-test/detector"),
                             (errors.RepositoryNotFoundError("no repository", response=response),
                              "was not found or you have no access to it .* `hf auth login`")):
        def fail(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
        with pytest.raises(HubError, match=expected):
            fdcore.load_ensemble(f"hf://{REPO}@v9", device="cpu")


def test_the_documented_dry_run_works_as_written(pushed, tmp_path):
    """docs/guide.md step 7 as written (with its $W), and docs/hub.md is linked from the README."""
    import shlex

    root = Path(__file__).resolve().parent.parent
    assert "[docs/hub.md](docs/hub.md)" in (root / "README.md").read_text()
    (line,) = [line for line in (root / "docs" / "guide.md").read_text().splitlines()
               if line.startswith("fdcore ensemble push") and "--dry-run" in line]
    work = tmp_path / "work"
    shutil.copytree(pushed.ensemble, work / "ensemble")
    shutil.copytree(pushed.root / "report", work / "report")
    arguments = shlex.split(line.split("#")[0].replace("$W", str(work)))
    result = fdcore_command(*arguments[1:], check=True)
    assert "library_name: fdcore" in result.stdout and "dry run: would upload 10 files to my-org/my-detector" \
        in result.stdout


def test_a_cache_snapshot_maps_back_to_its_pinned_hub_reference(tmp_path):
    from fdcore.hub import hub_reference_of

    snapshot = tmp_path / "hub" / "models--my-org--my.detector" / "snapshots" / ("a" * 40)
    assert hub_reference_of(snapshot) == f"hf://my-org/my.detector@{'a' * 40}"
    assert hub_reference_of(tmp_path / "ensemble") is None
    assert hub_reference_of(tmp_path / "models--x" / "snapshots" / "abc") is None  # no ORG--NAME


def test_names_that_climb_out_of_the_snapshot_are_refused(pushed, hub_cache, tmp_path):
    """RELIABILITY 26 for Hub repositories: neither the hub manifest nor ensemble.json can name a file outside."""
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    for number, name in enumerate(("../../secret.json", str(outside), "npr/../../x")):
        files = dict(pushed.files)
        manifest = json.loads(files["hub-manifest.json"])
        manifest["files"][name] = {"size_bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}
        files["hub-manifest.json"] = json.dumps(manifest).encode()
        repo = f"fdcore-test/climb-{number}"
        seed_cache(hub_cache, repo, files)
        with pytest.raises(HubError, match="is not a relative path of plain names inside the repository"):
            fdcore.pull_ensemble(repo)
    # ensemble.json itself naming a member outside, consistently re-listed in the hub manifest
    files = dict(pushed.files)
    document = json.loads(files["ensemble.json"])
    document["experts"][0]["path"] = "../../../outside"
    files["ensemble.json"] = json.dumps(document).encode()
    manifest = json.loads(files["hub-manifest.json"])
    manifest["files"]["ensemble.json"] = {"size_bytes": len(files["ensemble.json"]),
                                          "sha256": hashlib.sha256(files["ensemble.json"]).hexdigest()}
    files["hub-manifest.json"] = json.dumps(manifest).encode()
    seed_cache(hub_cache, "fdcore-test/climbing-member", files)
    with pytest.raises(HubError, match="do not form an fdcore ensemble"):
        fdcore.pull_ensemble("fdcore-test/climbing-member")
