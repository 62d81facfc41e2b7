"""``fdcore degrade``: folder degradation with a policy or one operator, byte-identical reruns, records that replay,
the contact sheet, and the degrader listing."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fdcore
from conftest import fdcore_command
from fdcore.cli import cli, main
from test_degraders_conformance import synthetic_image


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(synthetic_image(40, 56)).save(root / "a.jpg", quality=95)
    Image.fromarray(synthetic_image(32, 32)).save(root / "sub" / "b.png")
    Image.fromarray(synthetic_image(24, 48)).save(root / "sub" / "c.webp", lossless=True)
    (root / "notes.txt").write_text("not an image")
    return root


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def read_rows(out_dir):
    with open(out_dir / "degradations.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def folder_bytes(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_policy_run_is_byte_identical_on_rerun_and_replays(image_folder, tmp_path):
    first, second = tmp_path / "out1", tmp_path / "out2"
    invoke("degrade", image_folder, first, "--policy", "ntire2026-test-like", "--seed", 3)
    invoke("degrade", image_folder, second, "--policy", "ntire2026-test-like", "--seed", 3)
    assert folder_bytes(first) == folder_bytes(second)
    assert set(folder_bytes(first)) == {"a.png", "sub/b.png", "sub/c.png", "degradations.csv"}
    rows = read_rows(first)
    assert [row["path"] for row in rows] == ["a.jpg", "sub/b.png", "sub/c.webp"]
    for row in rows:
        assert row["status"] == "ok" and row["policy"] == "ntire2026-test-like"
        record = json.loads(row["record"])
        assert record["sample_id"] == row["path"]
        source = np.asarray(Image.open(image_folder / row["path"]).convert("RGB"))
        written = np.asarray(Image.open(first / row["output"]))
        assert np.array_equal(fdcore.replay(record, source), written)
    other_seed = tmp_path / "out3"
    invoke("degrade", image_folder, other_seed, "--policy", "ntire2026-test-like", "--seed", 4)
    assert folder_bytes(other_seed)["degradations.csv"] != folder_bytes(first)["degradations.csv"]


def test_single_operator_run(image_folder, tmp_path):
    out = tmp_path / "out"
    invoke("degrade", image_folder, out, "--op", "jpeg", "--severity", 4, "--seed", 1)
    rows = read_rows(out)
    record = json.loads(rows[0]["record"])
    assert record["ops"] == [{"op": "jpeg", "severity": 0.8, "level": 4, "params": {"quality": 7}}]
    source = np.asarray(Image.open(image_folder / "a.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "a.png")), fdcore.degrade(source, "jpeg", level=4, seed=1,
                                                                              sample_id="a.jpg"))


def test_unreadable_image_is_reported_and_the_rest_is_written(image_folder, tmp_path):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["degrade", str(image_folder), str(out), "--op", "gaussian_blur"])
    assert result.exit_code == 1
    rows = {row["path"]: row for row in read_rows(out)}
    assert rows["broken.png"]["status"].startswith("error:")
    assert (out / "a.png").is_file() and rows["a.jpg"]["status"] == "ok"


def test_an_operator_refusing_one_image_fails_that_image_only(image_folder, tmp_path):
    Image.fromarray(np.zeros((400, 16400, 3), dtype=np.uint8)).save(image_folder / "panorama.png")  # over WebP's limit
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["degrade", str(image_folder), str(out), "--op", "webp"])
    assert result.exit_code == 1 and "1 failed" in result.output
    rows = {row["path"]: row for row in read_rows(out)}
    assert rows["panorama.png"]["status"].startswith("error: degrade_failed: degrader 'webp': WEBP cannot store")
    assert all(rows[name]["status"] == "ok" for name in ("a.jpg", "sub/b.png", "sub/c.webp"))
    assert (out / "sub" / "c.png").is_file() and not (out / "panorama.png").exists()


def test_bad_arguments_exit_2_with_a_message(image_folder, tmp_path):
    result = fdcore_command("degrade", str(image_folder), str(tmp_path / "out"), "--policy", "no-such-policy")
    assert result.returncode == 2 and "unknown policy 'no-such-policy'" in result.stderr
    assert "Traceback" not in result.stderr

def test_more_bad_arguments(image_folder, tmp_path, capsys):
    for args, expected in ((["--op", "gausian_blur"], "gaussian_blur"), ([], "--policy"),
                           (["--policy", "ntire2026", "--severity", "2"], "--severity")):
        with pytest.raises(SystemExit) as exit_info:
            main(["degrade", str(image_folder), str(tmp_path / "out"), *args])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_contact_sheet(image_folder, tmp_path):
    sheet = tmp_path / "sheet.png"
    invoke("degrade", "--sheet", sheet, image_folder / "a.jpg", "--tile", 32, "--filter", "*blur*")
    blurs = fdcore.list_degraders("*blur*")
    with Image.open(sheet) as image:
        assert image.height == 18 + len(blurs) * 36 and image.width == 150 + 6 * 36


def test_list_degraders_json_shows_the_metadata():
    result = invoke("list", "degraders", "--json")
    listed = {item["name"]: item for item in json.loads(result.output)}
    assert set(listed) == set(fdcore.list_degraders())
    for item in listed.values():
        assert {"category", "moves_pixels", "changes_size"} <= set(item)
    assert listed["jitter"]["moves_pixels"] is True and listed["jpeg"]["group"] == "jpeg"


def test_a_non_empty_out_dir_is_refused_unless_overwrite(image_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    result = fdcore_command("degrade", str(image_folder), str(out), "--policy", "ntire2026-test-like")
    assert result.returncode == 2 and "not empty" in result.stderr and "--overwrite" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["keep.txt"]  # nothing written
    result = fdcore_command("degrade", str(image_folder), str(out), "--policy", "ntire2026-test-like", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (out / "keep.txt").read_text() == "someone's file" and (out / "degradations.csv").is_file()
    assert "fdcore degrade" in result.stderr  # the progress bar
