"""fdcore's expert format: verified before parsing, never unpickled, atomic to write."""

import json
import struct

import pytest
import torch

import fdcore
from fdcore.expert_io import ExpertFormatError, load_expert, save_expert


@pytest.fixture
def saved(tmp_path):
    expert = fdcore.get_expert("toy", width=4, seed=1).eval()
    directory = save_expert(expert, tmp_path / "toy-expert", card={"trained_on": "nothing"})
    return expert, directory


def test_round_trip_is_bit_identical(saved):
    expert, directory = saved
    pixels = torch.randn(3, 3, 32, 32)
    assert torch.equal(expert(pixels), load_expert(directory)(pixels))
    config = json.loads((directory / "expert.json").read_text())
    assert config["expert"] == "toy" and config["provider"] == "fdcore-toy"
    assert config["card"] == {"trained_on": "nothing"}
    assert config["preprocessing"]["size"] == 32 and config["versions"]["fdcore"] == fdcore.__version__


def test_identity_changes_with_the_weights(saved, tmp_path):
    _, directory = saved
    other = save_expert(fdcore.get_expert("toy", width=4, seed=2), tmp_path / "other")
    assert fdcore.expert_identity(directory) != fdcore.expert_identity(other)
    assert fdcore.expert_identity(directory) == fdcore.expert_identity(directory)


def test_flipped_byte_is_refused_before_parsing(saved, monkeypatch):
    _, directory = saved
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    parsed = []
    monkeypatch.setattr("fdcore.expert_io.parse_safetensors", lambda *a: parsed.append(a))
    with pytest.raises(ExpertFormatError, match="SHA-256"):
        load_expert(directory)
    assert parsed == []


def test_truncated_file_is_refused_by_size(saved):
    _, directory = saved
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ExpertFormatError, match="truncated"):
        load_expert(directory)


def test_hostile_safetensors_header_is_a_clean_error(tmp_path):
    from fdcore.expert_io import parse_safetensors

    with pytest.raises(ExpertFormatError, match="header"):
        parse_safetensors(struct.pack("<Q", 200 * 1024 * 1024) + b"{}", tmp_path / "x.safetensors")
    with pytest.raises(ExpertFormatError, match="not a valid safetensors"):
        parse_safetensors(struct.pack("<Q", 4) + b"nope", tmp_path / "x.safetensors")
    with pytest.raises(ExpertFormatError, match="too short"):
        parse_safetensors(b"abc", tmp_path / "x.safetensors")


def test_edited_config_is_refused(saved):
    _, directory = saved
    config = directory / "expert.json"
    config.write_text(config.read_text().replace('"width": 4', '"width": 5'))
    with pytest.raises(ExpertFormatError, match="expert.json"):
        load_expert(directory)


def test_missing_manifest_or_unknown_expert(saved, monkeypatch, tmp_path):
    with pytest.raises(ExpertFormatError, match="manifest.json is missing"):
        load_expert(tmp_path)
    _, directory = saved
    monkeypatch.setenv("FDCORE_LOAD_PLUGINS", "")
    fdcore.registry.reset()
    with pytest.raises(ExpertFormatError, match="not registered: install fdcore-toy"):
        load_expert(directory)


def test_save_refuses_to_overwrite_and_leaves_no_partial_directory(saved, monkeypatch):
    expert, directory = saved
    with pytest.raises(ExpertFormatError, match="already exists"):
        save_expert(expert, directory)

    def failing_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr("fdcore.expert_io.os.replace", failing_replace)
    target = directory.parent / "never"
    with pytest.raises(OSError):
        save_expert(expert, target)
    assert not target.exists()
    assert [p.name for p in directory.parent.iterdir() if p.name.startswith(".never")] == []


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_native_crop_preprocessing_survives_save_and_load(kind, tmp_path):
    config = fdcore.get_expert_class(kind).tiny_config()
    expert = fdcore.get_expert(kind, **config, resize="crop")
    loaded = fdcore.load_expert(save_expert(expert, tmp_path / kind))
    assert loaded.preprocessing == expert.preprocessing and loaded.preprocessing.resize == "crop"
    default = fdcore.get_expert(kind, **config)
    assert default.preprocessing.resize == "short-side" and "resize" not in default.config
