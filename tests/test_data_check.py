"""fdcore data check: JPEG quality estimation, single-feature AUCs, the format trap, and the real aigc-sd1x data."""

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fdcore.data.check import (
    AUC_HIGH,
    check_data,
    estimate_jpeg_quality,
    format_report,
    ijg_table,
    IJG_LUMINANCE,
    inspect_image,
    roc_auc,
)
from fdcore.data.spec import resolve_data_spec

AIGC = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "aigc-sd1x"


def _pixels(seed: int, size=(48, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize(size, Image.BILINEAR))


def _save(path: Path, seed: int, fmt: str, size=(48, 40), **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed, size)).save(path, format=fmt, **options)


def test_jpeg_quality_estimate_recovers_pillow_qualities():
    image = Image.fromarray(_pixels(0))
    for quality in [1, 5, 10, 25, 49, 50, 51, 75, 90, 95, 99, 100]:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        estimate, error = estimate_jpeg_quality(Image.open(buffer).quantization)
        assert (estimate, error) == (quality, 0.0)
    custom = {0: [max(1, value - 1) for value in ijg_table(IJG_LUMINANCE, 80).tolist()]}
    estimate, error = estimate_jpeg_quality(custom)
    assert 78 <= estimate <= 82 and error > 0
    with pytest.raises(ValueError):
        estimate_jpeg_quality({})


def test_roc_auc_with_ties_matches_pair_counting():
    rng = np.random.default_rng(1)
    fake = rng.integers(0, 4, 23).astype(float)
    real = rng.integers(0, 4, 17).astype(float)
    pairs = [(1.0 if f > r else 0.5 if f == r else 0.0) for f, r in itertools.product(fake, real)]
    assert roc_auc(fake, real) == pytest.approx(sum(pairs) / len(pairs))
    assert roc_auc([1, 1], [0, 0]) == 1.0 and roc_auc([0, 0], [1, 1]) == 0.0 and roc_auc([3], [3]) == 0.5


def test_inspect_image_reads_headers_not_extensions(tmp_path):
    _save(tmp_path / "png_named.jpg", 1, "PNG")
    exif = Image.Exif()
    exif[0x010F] = "Cam"
    _save(tmp_path / "photo.jpg", 2, "JPEG", quality=83, subsampling=0, exif=exif, icc_profile=b"\0" * 16)
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg at all")
    png = inspect_image(str(tmp_path / "png_named.jpg"))
    assert png["format"] == "PNG" and "jpeg_quality" not in png and png["exif"] is False
    jpeg = inspect_image(str(tmp_path / "photo.jpg"))
    assert (jpeg["format"], jpeg["jpeg_quality"], jpeg["subsampling"], jpeg["exif"], jpeg["icc"]) == (
        "JPEG", 83, "4:4:4", True, True)
    assert (jpeg["width"], jpeg["height"]) == (48, 40) and jpeg["file_size"] == (tmp_path / "photo.jpg").stat().st_size
    assert "error" in inspect_image(str(tmp_path / "garbage.jpg"))


def _trap_folder(root: Path, count: int = 12) -> None:
    for index in range(count):
        _save(root / "real" / f"r{index}.jpg", index, "JPEG", quality=90)
        _save(root / "fake" / f"f{index}.png", 100 + index, "PNG")


def _balanced_folder(root: Path, count: int = 12) -> None:
    for index in range(count):
        for label, offset in (("real", 0), ("fake", 100)):
            if index % 2:
                _save(root / label / f"{index}.png", offset + index, "PNG")
            else:
                _save(root / label / f"{index}.jpg", offset + index, "JPEG", quality=90)


def test_jpeg_vs_png_trap_warns(tmp_path):
    _trap_folder(tmp_path / "trap")
    (tmp_path / "trap" / "real" / "._r0.jpg").write_bytes(b"\0")
    (tmp_path / "trap" / "fake" / "notes.txt").write_text("not an image")
    report = check_data(resolve_data_spec(str(tmp_path / "trap")))
    format_warnings = [w for w in report["warnings"] if w["family"] == "format"]
    assert format_warnings, report["warnings"]
    assert any("real-JPEG vs fake-PNG trap" in w["message"] for w in format_warnings)
    comparisons = {c["feature"]: c for c in report["scopes"]["all"]["comparisons"]}
    assert comparisons["format=PNG"]["auc"] == 1.0 and comparisons["format=JPEG"]["auc"] == 0.0
    assert report["scopes"]["all"]["real"]["formats"] == {"JPEG": 1.0}
    assert report["scopes"]["all"]["real"]["jpeg_quality"]["median"] == 90
    text = format_report(report)
    assert "format=PNG" in text and "WARN" in text and "warning(s)" in text
    assert "files skipped while listing: appledouble_companion 1, ignored_extension 1" in text
    json.dumps(report)


def test_balanced_formats_do_not_warn(tmp_path):
    _balanced_folder(tmp_path / "ok")
    report = check_data(resolve_data_spec(str(tmp_path / "ok")))
    assert not [w for w in report["warnings"] if w["family"] in ("format", "jpeg_quality", "size", "exif")], report["warnings"]
    assert report["scopes"]["all"]["fake"]["formats"] == {"JPEG": 0.5, "PNG": 0.5}
    assert all(AUC_HIGH >= c["auc"] >= 1 - AUC_HIGH for c in report["scopes"]["all"]["comparisons"]
               if c["family"] == "format")


def test_per_source_scopes_and_one_class_sources(tmp_path):
    _balanced_folder(tmp_path / "mixed", 10)
    for index in range(6):
        _save(tmp_path / "reals" / "real" / f"{index}.jpg", 200 + index, "JPEG", quality=70)
    report = check_data(resolve_data_spec([f"mixed={tmp_path / 'mixed'}", f"reals={tmp_path / 'reals'}"]))
    assert set(report["scopes"]) == {"all", "source:mixed", "source:reals"}
    assert any(w["scope"] == "source:reals" and w["feature"] == "class_balance" for w in report["warnings"])
    assert report["data"]["counts"]["sources"]["reals"]["real"] == 6


def test_cli_check_json_strict_and_errors(tmp_path, capsys):
    from fdcore.cli import main

    _trap_folder(tmp_path / "trap")
    _balanced_folder(tmp_path / "ok")
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(tmp_path / "trap"), "--json"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["warnings"] and report["version"] == "fdcore-data-check-v1"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(tmp_path / "trap"), "--strict"])
    assert exit_info.value.code == 1
    assert "real-JPEG vs fake-PNG trap" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(tmp_path / "ok"), "--strict", "--max-per-class", "6"])
    assert exit_info.value.code == 0
    assert "checked 12 of 24 images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(tmp_path / "absent")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("Error: ") and "absent does not exist" in error and "Traceback" not in error


@pytest.mark.skipif(not AIGC.is_dir(), reason="../shared/data/aigc-sd1x is not present")
def test_aigc_sd1x_has_no_container_bias_and_quality_95():
    report = check_data(resolve_data_spec(str(AIGC / "manifest.csv")))
    families = {w["family"] for w in report["warnings"]}
    assert not families & {"format", "jpeg_quality", "size", "exif", "icc"}, report["warnings"]
    for label in ("real", "fake"):
        summary = report["scopes"]["all"][label]
        assert summary["images"] == 480 and summary["unreadable"] == 0
        assert summary["formats"] == {"JPEG": 1.0} and summary["subsampling"] == {"4:2:0": 1.0}
        assert summary["jpeg_quality"] == {"q1": 95.0, "median": 95.0, "q3": 95.0}
        assert summary["common_sizes"] == [["512x512", 480]] and summary["square"] == 1.0
    comparisons = {c["feature"]: c["auc"] for c in report["scopes"]["all"]["comparisons"]}
    assert comparisons["file_size"] == pytest.approx(0.52, abs=0.02)  # PROVENANCE.md: file-size AUC about 0.52


def test_embedded_images_in_a_saved_dataset_are_checked_by_content(tmp_path):
    import datasets

    images, labels = [], []
    for index in range(8):
        for label, fmt in ((0, "JPEG"), (1, "PNG")):
            buffer = io.BytesIO()
            Image.fromarray(_pixels(index + 10 * label)).save(buffer, format=fmt)
            images.append({"bytes": buffer.getvalue(), "path": f"{index}.bin"})
            labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(tmp_path / "ds"))
    report = check_data(resolve_data_spec(f"disk:{tmp_path / 'ds'}"), max_per_class=6, seed=1)
    assert report["scopes"]["all"]["fake"]["formats"] == {"PNG": 1.0}
    assert report["scopes"]["all"]["real"]["images"] == 6
    assert [w["family"] for w in report["warnings"]].count("format") == 1  # one warning per feature, not per value
    assert report["sampled"] == {"max_per_class": 6, "seed": 1, "rows": 12, "of": 16}
