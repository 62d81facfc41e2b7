"""Import of FeatDistill release files: scores equal an independent forward pass, hashes are checked before any
byte is deserialised, pickles that carry code are refused unexecuted, keys match strictly, and the conversion
command writes an fdcore ensemble that `fdcore expert info` verifies."""

import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import fdcore
from fdcore.errors import FdcoreError
from fdcore.featdistill import FeatDistillReleaseError, is_featdistill_release, load_featdistill_release

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent
# Tiny versions of the two FeatDistill backbones, written out here (not taken from the plugins).
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "patch_size": 14, "image_size": 28, "projection_dim": 16}
TINY_SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "patch_size": 14, "image_size": 42}
EXPERT_CONFIG = {"clip": {"backbone_config": TINY_CLIP}, "siglip": {"backbone_config": TINY_SIGLIP}}


def _head(width, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 2)).eval()


def _reference_models():
    """FeatDistill's four experts, built by hand: (tag, backbone, head, pooled output) per release file."""
    models = {}
    for index, tag in ((1, "clip"), (2, "clip"), (3, "siglip"), (4, "siglip")):
        torch.manual_seed(100 + index)
        if tag == "clip":
            backbone = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY_CLIP))
            head, pooled = _head(16, index), "image_embeds"
        else:
            backbone = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY_SIGLIP))
            head, pooled = _head(32, index), "pooler_output"
        models[f"Expert_{index}_{tag}.pth"] = (tag, backbone.eval(), head, pooled)
    return models


def _featdistill_state_dict(backbone, head, nest_under=None, position_ids=False):
    """The key layout of torch.save(model.state_dict()) for FeatDistill's module (vision_encoder + classifier).

    ``nest_under``: older transformers nested some vision towers one level deeper (``vision_model.``);
    ``position_ids``: transformers < 4.31 also saved that index buffer.
    """
    prefix = f"vision_encoder.{nest_under}." if nest_under else "vision_encoder."
    state = {prefix + key: value.clone() for key, value in backbone.state_dict().items()}
    if position_ids:
        embeddings = next(key for key in state if key.endswith("position_embedding.weight"))
        state[embeddings.replace("position_embedding.weight", "position_ids")] = \
            torch.arange(state[embeddings].shape[0]).unsqueeze(0)
    state.update({f"classifier.{key}": value.clone() for key, value in head.state_dict().items()})
    return state


def _write_manifest(directory):
    files = {}
    for path in sorted(Path(directory).glob("Expert_*.pth")):
        data = path.read_bytes()
        files[path.name] = {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (Path(directory) / "manifest.json").write_text(json.dumps({"schema_version": 1, "files": files}))


@pytest.fixture
def release(tmp_path):
    """A four-file release in FeatDistill's layout, with the variations real checkpoints show."""
    models = _reference_models()
    directory = tmp_path / "release"
    directory.mkdir()
    layouts = {
        "Expert_1_clip.pth": lambda b, h: _featdistill_state_dict(b, h),
        "Expert_2_clip.pth": lambda b, h: {"model_state_dict": _featdistill_state_dict(b, h, position_ids=True),
                                           "epoch": 2, "val_auc": 0.93},
        "Expert_3_siglip.pth": lambda b, h: {"model_state_dict": _featdistill_state_dict(
            b, h, nest_under="vision_model", position_ids=True)},
        "Expert_4_siglip.pth": lambda b, h: _featdistill_state_dict(b, h),
    }
    for name, (tag, backbone, head, _) in models.items():
        torch.save(layouts[name](backbone, head), directory / name)
    _write_manifest(directory)
    return directory, models


def _pixels(size, seed=0):
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _reference_probabilities(models):
    out = {}
    for name, (tag, backbone, head, pooled) in models.items():
        pixels = _pixels(TINY_CLIP["image_size"] if tag == "clip" else TINY_SIGLIP["image_size"])
        out[name] = torch.softmax(head(getattr(backbone(pixel_values=pixels), pooled)), dim=-1)[:, 1]
    return out


def test_import_scores_equal_an_independent_forward_pass(release):
    directory, models = release
    assert is_featdistill_release(directory) and not is_featdistill_release(directory.parent)
    experts = load_featdistill_release(directory, expert_config=EXPERT_CONFIG)
    assert [name for name, _ in experts] == ["expert_1", "expert_2", "expert_3", "expert_4"]
    assert [expert.name for _, expert in experts] == ["clip", "clip", "siglip", "siglip"]
    expected = _reference_probabilities(models)
    with torch.no_grad():
        for (name, expert), (file_name, probabilities) in zip(experts, expected.items()):
            assert not expert.training
            got = expert.probabilities(_pixels(expert.preprocessing.size))
            torch.testing.assert_close(got, probabilities, atol=1e-6, rtol=0, msg=file_name)


def test_command_converts_a_release_into_a_verified_fdcore_ensemble(release, tmp_path):
    from fdcore.cli import cli

    directory, models = release
    configs = []
    for tag, architecture in (("clip", TINY_CLIP), ("siglip", TINY_SIGLIP)):
        (tmp_path / f"{tag}.json").write_text(json.dumps(architecture))
        configs += ["--backbone-config", f"{tag}={tmp_path / f'{tag}.json'}"]
    out = tmp_path / "ensemble"
    result = CliRunner().invoke(cli, ["expert", "import-featdistill", str(directory), str(out), *configs])
    assert result.exit_code == 0, result.output + repr(result.exception)
    document = json.loads((out / "ensemble.json").read_text())
    assert document["format"] == "fdcore-ensemble" and document["aggregator"] == "mean"
    assert document["experts"] == [{"name": f"expert_{i}", "path": f"expert_{i}", "weight": 1.0} for i in range(1, 5)]
    sources = document["card"]["source"]["files"]
    for name in models:
        assert sources[name]["sha256"] == hashlib.sha256((directory / name).read_bytes()).hexdigest()
        assert sources[name]["verified_by"] == ["manifest"]
    expected = _reference_probabilities(models)
    with torch.no_grad():
        for index, name in enumerate(models, start=1):
            expert = fdcore.load_expert(out / f"expert_{index}")
            assert json.loads((out / f"expert_{index}" / "expert.json").read_text())["card"]["source"]["file"] == name
            torch.testing.assert_close(expert.probabilities(_pixels(expert.preprocessing.size)), expected[name],
                                       atol=1e-6, rtol=0)
    assert not list(tmp_path.glob(".ensemble.*"))  # no staging directory left behind

    info = CliRunner().invoke(cli, ["expert", "info", str(out)])
    assert info.exit_code == 0, info.output + repr(info.exception)
    assert "all files match their manifests" in info.output and info.output.count("model.safetensors") == 4
    listed = json.loads(CliRunner().invoke(cli, ["expert", "info", str(out / "expert_3"), "--json"]).output)
    assert listed["expert"] == "siglip" and listed["architecture"]["num_hidden_layers"] == 2
    assert listed["weights"]["parameters"] == sum(p.numel() for p in fdcore.load_expert(out / "expert_3").parameters())

    weights = out / "expert_2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    tampered = CliRunner().invoke(cli, ["expert", "info", str(out)])
    assert isinstance(tampered.exception, FdcoreError) and "SHA-256" in str(tampered.exception)

    again = CliRunner().invoke(cli, ["expert", "import-featdistill", str(directory), str(out), *configs])
    assert isinstance(again.exception, FdcoreError) and "--overwrite" in str(again.exception)


def test_a_failed_import_leaves_no_output(release, tmp_path):
    from fdcore.cli import cli

    directory, _ = release
    (directory / "manifest.json").unlink()
    out = tmp_path / "ensemble"
    result = CliRunner().invoke(cli, ["expert", "import-featdistill", str(directory), str(out)])
    assert isinstance(result.exception, FdcoreError) and "--skip-hash-check" in str(result.exception)
    assert not out.exists() and not list(tmp_path.glob(".ensemble.*"))


def test_manifest_mismatch_is_refused_before_deserialising(release, monkeypatch):
    directory, _ = release
    target = directory / "Expert_1_clip.pth"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))

    def must_not_run(*args, **kwargs):
        raise AssertionError("torch.load ran on unverified bytes")

    monkeypatch.setattr(torch, "load", must_not_run)
    with pytest.raises(FeatDistillReleaseError, match=r"Expert_1_clip\.pth SHA-256 .* does not match the manifest"):
        load_featdistill_release(directory, expert_config=EXPERT_CONFIG)
    target.write_bytes(bytes(data[:-10]))
    with pytest.raises(FeatDistillReleaseError, match="truncated or replaced"):
        load_featdistill_release(directory, expert_config=EXPERT_CONFIG)


def test_missing_manifest_needs_an_explicit_skip(release):
    directory, _ = release
    (directory / "manifest.json").unlink()
    with pytest.raises(FeatDistillReleaseError, match="--skip-hash-check"):
        load_featdistill_release(directory, expert_config=EXPERT_CONFIG)
    assert len(load_featdistill_release(directory, skip_hash_check=True, expert_config=EXPERT_CONFIG)) == 4


def test_manifest_must_cover_exactly_the_release(release):
    directory, models = release
    (directory / "Expert_5_clip.pth").write_bytes((directory / "Expert_1_clip.pth").read_bytes())
    with pytest.raises(FeatDistillReleaseError, match="does not list Expert_5_clip.pth"):
        load_featdistill_release(directory, expert_config=EXPERT_CONFIG)
    (directory / "Expert_5_clip.pth").unlink()
    (directory / "Expert_4_siglip.pth").unlink()
    with pytest.raises(FeatDistillReleaseError, match="Expert_4_siglip.pth, missing"):
        load_featdistill_release(directory, expert_config=EXPERT_CONFIG)


def test_pinned_hashes_catch_a_consistently_replaced_file(release):
    directory, models = release
    original = hashlib.sha256((directory / "Expert_1_clip.pth").read_bytes()).hexdigest()
    _, backbone, head, _ = models["Expert_2_clip.pth"]
    torch.save(_featdistill_state_dict(backbone, head), directory / "Expert_1_clip.pth")
    _write_manifest(directory)  # whoever swaps the file can rewrite the manifest next to it
    assert len(load_featdistill_release(directory, expert_config=EXPERT_CONFIG)) == 4
    with pytest.raises(FeatDistillReleaseError, match="does not match the pinned hash"):
        load_featdistill_release(directory, expert_config=EXPERT_CONFIG,
                                 expected_sha256={"Expert_1_clip.pth": original})
    with pytest.raises(FeatDistillReleaseError, match="not 64 hex digits"):
        load_featdistill_release(directory, expected_sha256={"Expert_1_clip.pth": "abc"})


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("force_unsafe_default", [False, True])
def test_a_pickle_that_carries_code_is_refused_without_running(tmp_path, monkeypatch, force_unsafe_default):
    if force_unsafe_default:
        # Makes torch.load default to full unpickling; an explicit weights_only=True must still win.
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    directory = tmp_path / "release"
    directory.mkdir()
    marker = tmp_path / "payload-ran"
    torch.save({"model_state_dict": {"classifier.0.weight": torch.zeros(2, 2)}, "hook": _Payload(marker)},
               directory / "Expert_1_clip.pth")
    _write_manifest(directory)  # the hashes are right: only deserialisation can stop it
    with pytest.raises(FeatDistillReleaseError, match="refused: it is not a plain tensor checkpoint"):
        load_featdistill_release(directory)
    out = tmp_path / "converted"
    from fdcore.cli import cli

    result = CliRunner().invoke(cli, ["expert", "import-featdistill", str(directory), str(out)])
    assert isinstance(result.exception, FeatDistillReleaseError) and not out.exists()
    assert not marker.exists()
    # Control: the payload is live (full unpickling of the same file runs it), so the refusals above are what
    # kept the marker away.
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    torch.load(io.BytesIO((directory / "Expert_1_clip.pth").read_bytes()), weights_only=False)
    assert marker.exists()


def test_keys_must_match_strictly(release, tmp_path):
    directory, models = release
    _, backbone, head, _ = models["Expert_1_clip.pth"]
    cases = {
        "unexpected": {**_featdistill_state_dict(backbone, head), "classifier.5.weight": torch.zeros(1)},
        "missing": {k: v for k, v in _featdistill_state_dict(backbone, head).items() if "visual_projection" not in k},
        "wrongly shaped": {**_featdistill_state_dict(backbone, head), "classifier.3.weight": torch.zeros(3, 256)},
        "prefixed": {f"module.{k}": v for k, v in _featdistill_state_dict(backbone, head).items()},
    }
    for problem, state in cases.items():
        case = tmp_path / problem.replace(" ", "-")
        case.mkdir()
        torch.save(state, case / "Expert_1_clip.pth")
        with pytest.raises(FeatDistillReleaseError, match="does not fit expert 'clip'") as caught:
            load_featdistill_release(case, skip_hash_check=True, expert_config=EXPERT_CONFIG)
        assert re.search(rf"[1-9]\d* {problem.split()[0]}" if problem != "prefixed" else r"\d+ unexpected",
                         str(caught.value)), (problem, str(caught.value))


def test_bad_release_contents_give_clear_errors(tmp_path):
    unknown = tmp_path / "unknown-tag"
    unknown.mkdir()
    torch.save({"classifier.0.weight": torch.zeros(1)}, unknown / "Expert_1_dinov9.pth")
    with pytest.raises(FeatDistillReleaseError, match="no installed expert imports FeatDistill 'dinov9' files"):
        load_featdistill_release(unknown, skip_hash_check=True)
    not_a_dict = tmp_path / "list"
    not_a_dict.mkdir()
    torch.save([torch.zeros(2)], not_a_dict / "Expert_1_clip.pth")
    with pytest.raises(FeatDistillReleaseError, match="not a state dict"):
        load_featdistill_release(not_a_dict, skip_hash_check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatDistillReleaseError, match="no Expert_<n>_<tag>.pth files"):
        load_featdistill_release(empty)
    with pytest.raises(FeatDistillReleaseError, match="is not a directory"):
        load_featdistill_release(tmp_path / "absent")


def _package_sources():
    roots = [REPO / "fdcore", *(REPO / "experts").glob("*/fdcore_*")]
    return [path for root in roots for path in root.rglob("*.py")]


def test_no_unsafe_loading_anywhere_in_the_package():
    sources = _package_sources()
    assert any(path.name == "featdistill.py" for path in sources)
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert "weights_only=False" not in text, path
        assert "trust_remote_code=True" not in text, path
        assert "import fdcore_clip" not in text and "import fdcore_siglip" not in text or "experts" in path.parts, path


def test_the_generic_core_modules_name_no_specific_expert():
    for name in ("hf_expert.py", "featdistill.py", "commands/expert.py"):
        text = (REPO / "fdcore" / name).read_text(encoding="utf-8")
        assert not re.search(r"clip|siglip", text, re.IGNORECASE), name
