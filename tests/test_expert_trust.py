"""A saved expert's expert.json is untrusted: it is checked before anything is built, and never reaches the network
or a path outside the expert's folder (issue: trust under attack, item 2)."""

import json
import time

import pytest

import fdcore
from conftest import fdcore_command
from fdcore.expert_io import CONFIG_FILE, MANIFEST_FILE, ExpertFormatError, sha256_bytes


def _tamper(directory, edit):
    """Edit expert.json and re-sign it in the manifest, as an attacker who can write the folder would."""
    path = directory / CONFIG_FILE
    document = json.loads(path.read_text())
    edit(document["config"])
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    path.write_bytes(data)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["files"][CONFIG_FILE] = {"size_bytes": len(data), "sha256": sha256_bytes(data)}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.fixture
def saved_clip(tmp_path):
    directory = tmp_path / "clip"
    fdcore.save_expert(fdcore.get_expert("clip", **fdcore.get_expert_class("clip").tiny_config()), directory)
    return directory


CLIP_ATTACKS = [
    ("hidden_size", lambda c: c["backbone_config"].update(hidden_size=1_000_000_000), "hidden_size"),
    ("float size", lambda c: c["backbone_config"].update(hidden_size=1e9), "hidden_size"),
    ("layers", lambda c: c["backbone_config"].update(num_hidden_layers=20000), "num_hidden_layers"),
    ("hub id", lambda c: c.update(backbone="someone/model"), "backbone"),
    ("local dir", lambda c: c.update(backbone="/etc"), "backbone"),
    ("hub kernel", lambda c: c.update(attn_implementation="kernels-community/flash-attn"), "attn_implementation"),
    ("kernel in config", lambda c: c["backbone_config"].update(_attn_implementation="x/y"), "_attn_implementation"),
    ("patch 0", lambda c: c["backbone_config"].update(patch_size=0), "patch_size"),
    ("negative size", lambda c: c["backbone_config"].update(image_size=-8), "image_size"),
    ("list config", lambda c: (c.clear(), c.update({"not": "a list"})), "unknown field"),
    ("unknown keyword", lambda c: c.update(turbo=True), "unknown field"),
    ("head", lambda c: c.update(head_hidden="abc"), "head_hidden"),
    ("wrong width", lambda c: c.update(head_hidden=17), "shapes"),
]


@pytest.mark.parametrize("attack, edit, field", CLIP_ATTACKS, ids=[a[0] for a in CLIP_ATTACKS])
def test_a_tampered_config_is_refused_by_field_before_anything_is_built(saved_clip, attack, edit, field, monkeypatch):
    import socket

    _tamper(saved_clip, edit)

    def no_network(*args, **kwargs):
        raise AssertionError("loading a saved expert opened a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    started = time.monotonic()
    with pytest.raises(ExpertFormatError, match=field):
        fdcore.load_expert(saved_clip)
    assert time.monotonic() - started < 5  # no minutes-long build, no Hub retries


def test_the_cli_answers_a_tampered_expert_with_exit_2_and_the_field(saved_clip, tmp_path):
    _tamper(saved_clip, lambda c: c.update(backbone="someone/model"))
    images = tmp_path / "images"
    images.mkdir()
    result = fdcore_command("predict", str(images), "--ensemble", str(saved_clip), "--out", str(tmp_path / "out"),
                            env={"HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2 and "backbone" in result.stderr and "Traceback" not in result.stderr


def test_a_tampered_npr_config_is_refused(tmp_path):
    for index, (edit, field) in enumerate(((lambda c: c.update(width=10**6), "width"),
                                           (lambda c: c.update(blocks=[3]), "blocks"),
                                           (lambda c: c.update(crop_size=33), "even"),
                                           (lambda c: c.update(width=16), "shapes"))):
        directory = tmp_path / f"npr{index}"
        fdcore.save_expert(fdcore.get_expert("npr", crop_size=32, width=8, blocks=[1, 1]), directory)
        _tamper(directory, edit)
        with pytest.raises(ExpertFormatError, match=field):
            fdcore.load_expert(directory)


@pytest.mark.parametrize("header", [b"[1,2]", b'{"a": 5}', b'{"a": {"shape": "x"}}', b'{"a": {"shape": [1e99]}}',
                                    b"not json"])
def test_expert_info_reports_a_malformed_weights_header(tmp_path, header):
    import struct

    directory = tmp_path / "toy"
    fdcore.save_expert(fdcore.get_expert("toy", width=4), directory)
    data = struct.pack("<Q", len(header)) + header
    (directory / "model.safetensors").write_bytes(data)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["files"]["model.safetensors"] = {"size_bytes": len(data), "sha256": sha256_bytes(data)}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = fdcore_command("expert", "info", str(directory))
    assert result.returncode == 2 and "model.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_degrade_sheet_of_a_folder_is_a_clear_error(tmp_path):
    result = fdcore_command("degrade", "--sheet", str(tmp_path / "sheet.png"), str(tmp_path))
    assert result.returncode == 2 and "is a directory" in result.stderr and "Traceback" not in result.stderr
