"""Dataset-bias check: does something other than the generator separate real from fake images?

For each class (and each source) the check reads image headers only (no pixel decoding): container format from the
file's signature (not its extension), JPEG quality estimated from the quantisation tables, chroma subsampling, size,
EXIF and ICC presence, file size. For every such feature it computes the AUC of that feature alone for telling fake
from real (Mann-Whitney, ties counted half) and warns when it is above :data:`AUC_HIGH` or below :data:`AUC_LOW`:
a detector trained on such data can learn the feature instead of the generator's traces.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from fdcore.data.sources import DataError
from fdcore.images import ALLOWED_FORMATS

CHECK_VERSION = "fdcore-data-check-v1"
AUC_HIGH = 0.7
AUC_LOW = 0.3
# Below this many readable images in either class a feature is not compared (its AUC would be noise).
MIN_PER_CLASS = 5

# IJG standard quantisation tables (ITU-T T.81 Annex K), natural (row-major) order as Pillow reports them.
IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
IJG_CHROMINANCE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)
_SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def ijg_table(base: Sequence[int], quality: int) -> np.ndarray:
    """The table libjpeg's ``jpeg_set_quality(quality, force_baseline=TRUE)`` derives from ``base``."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((np.asarray(base, dtype=np.int64) * scale + 50) // 100, 1, 255)


_IJG_LUMINANCE_TABLES = np.stack([ijg_table(IJG_LUMINANCE, quality) for quality in range(1, 101)])
_IJG_CHROMINANCE_TABLES = np.stack([ijg_table(IJG_CHROMINANCE, quality) for quality in range(1, 101)])


def estimate_jpeg_quality(quantization: dict[int, Sequence[int]]) -> tuple[int, float]:
    """Best-fitting IJG quality 1..100 for a JPEG's quantisation tables (Pillow's ``image.quantization``).

    Returns ``(quality, mean_abs_error)``: the mean absolute difference per coefficient between the file's tables
    and the IJG tables at that quality (0.0 means the file was written by libjpeg's standard scaling; a larger
    error means custom tables, e.g. a camera or Photoshop, and the quality is only the nearest equivalent).
    """
    if not quantization or 0 not in quantization:
        raise ValueError("no luminance quantisation table")
    luminance = np.asarray(quantization[0], dtype=np.int64)
    if luminance.shape != (64,):
        raise ValueError(f"a quantisation table has 64 entries, got {luminance.shape}")
    errors = np.abs(_IJG_LUMINANCE_TABLES - luminance).sum(axis=1)
    count = 64
    if 1 in quantization and len(quantization[1]) == 64:
        errors = errors + np.abs(_IJG_CHROMINANCE_TABLES - np.asarray(quantization[1], dtype=np.int64)).sum(axis=1)
        count = 128
    best = int(np.argmin(errors))
    return best + 1, float(errors[best]) / count


def roc_auc(fake_values: Sequence[float], real_values: Sequence[float]) -> float:
    """P(a fake value > a real value) + 0.5 * P(equal): the AUC of the raw feature as a fake-vs-real score."""
    fake = np.asarray(fake_values, dtype=np.float64)
    real = np.asarray(real_values, dtype=np.float64)
    if fake.size == 0 or real.size == 0:
        raise ValueError("both classes need at least one value")
    values = np.concatenate([fake, real])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # average 1-based rank of a run of ties
    fake_rank_sum = ranks[: fake.size].sum()
    return float((fake_rank_sum - fake.size * (fake.size + 1) / 2.0) / (fake.size * real.size))


def inspect_image(path: str | None = None, data: bytes | None = None) -> dict[str, Any]:
    """Header facts about one image (nothing is decoded): format, size, mode, JPEG quality/subsampling, EXIF,
    ICC, file size; ``error`` is set instead when the file cannot be read as an allowed image."""
    from PIL import Image, JpegImagePlugin

    facts: dict[str, Any] = {"path": path}
    try:
        facts["file_size"] = len(data) if data is not None else os.stat(path).st_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # header reads only: Pillow's bomb warning is moot here
            with Image.open(io.BytesIO(data) if data is not None else path, formats=ALLOWED_FORMATS) as image:
                facts.update(format=image.format, width=image.size[0], height=image.size[1], mode=image.mode)
                facts["exif"] = _has_exif(image)
                facts["icc"] = bool(image.info.get("icc_profile"))
                if image.format in ("JPEG", "MPO"):
                    quality, error = estimate_jpeg_quality(image.quantization)
                    facts.update(jpeg_quality=quality, jpeg_table_error=round(error, 3))
                    sampling = JpegImagePlugin.get_sampling(image)
                    facts["subsampling"] = "grey" if image.mode == "L" else _SUBSAMPLING.get(sampling, "other")
    except Exception as exc:  # one unreadable file is a finding, not a reason to stop the check
        facts["error"] = f"{type(exc).__name__}: {exc}"
    return facts


def _has_exif(image) -> bool:
    if image.format == "TIFF":
        return 34665 in getattr(image, "tag_v2", {})  # the Exif IFD pointer; plain TIFF tags are not EXIF
    return bool(image.info.get("exif"))


def _row_facts(row: dict) -> dict[str, Any]:
    image = row.get("image")
    if isinstance(image, dict) and image.get("bytes"):
        facts = inspect_image(data=image["bytes"])
        facts["path"] = row.get("path")
        return facts
    if isinstance(image, dict) and image.get("path") and os.path.isfile(image["path"]):
        return inspect_image(path=image["path"])
    return inspect_image(path=row["path"])


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"q1": float(q1), "median": float(median), "q3": float(q3)}


def _fractions(values: Iterable[Any]) -> dict[str, float]:
    counter = Counter(str(value) for value in values)
    total = sum(counter.values())
    return {key: round(count / total, 4) for key, count in counter.most_common()} if total else {}


def summarize(facts: Sequence[dict]) -> dict[str, Any]:
    """Distribution summary of one group of images (one class in one scope)."""
    readable = [item for item in facts if "error" not in item]
    jpegs = [item for item in readable if "jpeg_quality" in item]
    sizes = Counter(f"{item['width']}x{item['height']}" for item in readable)
    return {
        "images": len(facts),
        "unreadable": len(facts) - len(readable),
        "formats": _fractions(item["format"] for item in readable),
        "modes": _fractions(item["mode"] for item in readable),
        "jpeg_quality": _quantiles([item["jpeg_quality"] for item in jpegs]),
        "jpeg_quality_common": [[quality, count] for quality, count in
                                Counter(item["jpeg_quality"] for item in jpegs).most_common(3)],
        "jpeg_nonstandard_tables": round(sum(item["jpeg_table_error"] > 0 for item in jpegs) / len(jpegs), 4) if jpegs else None,
        "subsampling": _fractions(item["subsampling"] for item in jpegs),
        "width": _quantiles([item["width"] for item in readable]),
        "height": _quantiles([item["height"] for item in readable]),
        "square": round(sum(item["width"] == item["height"] for item in readable) / len(readable), 4) if readable else None,
        "common_sizes": [[size, count] for size, count in sizes.most_common(5)],
        "exif": round(sum(item["exif"] for item in readable) / len(readable), 4) if readable else None,
        "icc": round(sum(item["icc"] for item in readable) / len(readable), 4) if readable else None,
        "file_size": _quantiles([item["file_size"] for item in readable]),
    }


def _numeric_features(item: dict) -> dict[str, float]:
    pixels = item["width"] * item["height"]
    features = {"pixels": float(pixels), "aspect_ratio": item["width"] / item["height"],
                "exif": float(item["exif"]), "icc": float(item["icc"]), "file_size": float(item["file_size"]),
                "bytes_per_pixel": item["file_size"] / pixels}
    if "jpeg_quality" in item:
        features["jpeg_quality"] = float(item["jpeg_quality"])
    return features


# What each feature means to a reader, and the family it belongs to in warnings.
_FEATURE_FAMILY = {"format": "format", "mode": "format", "subsampling": "jpeg_quality", "jpeg_quality": "jpeg_quality",
                   "pixels": "size", "aspect_ratio": "size", "exif": "exif", "icc": "icc", "file_size": "file_size",
                   "bytes_per_pixel": "file_size"}


def compare_classes(real: Sequence[dict], fake: Sequence[dict]) -> list[dict[str, Any]]:
    """Single-feature AUCs (fake vs real) for every feature both classes have enough values of."""
    real = [item for item in real if "error" not in item]
    fake = [item for item in fake if "error" not in item]
    results = []

    def add(feature: str, fake_values: list[float], real_values: list[float], note: str = "") -> None:
        if len(fake_values) < MIN_PER_CLASS or len(real_values) < MIN_PER_CLASS:
            return
        auc = roc_auc(fake_values, real_values)
        results.append({"feature": feature, "family": _FEATURE_FAMILY[feature.split("=")[0]], "auc": round(auc, 4),
                        "n_fake": len(fake_values), "n_real": len(real_values), "note": note,
                        "flag": auc > AUC_HIGH or auc < AUC_LOW})

    for categorical in ("format", "mode"):
        for value in sorted({item[categorical] for item in real + fake}):
            add(f"{categorical}={value}", [float(item[categorical] == value) for item in fake],
                [float(item[categorical] == value) for item in real])
    jpeg_real = [item for item in real if "jpeg_quality" in item]
    jpeg_fake = [item for item in fake if "jpeg_quality" in item]
    for value in sorted({item["subsampling"] for item in jpeg_real + jpeg_fake}):
        add(f"subsampling={value}", [float(item["subsampling"] == value) for item in jpeg_fake],
            [float(item["subsampling"] == value) for item in jpeg_real], "JPEGs only")
    real_numbers = [_numeric_features(item) for item in real]
    fake_numbers = [_numeric_features(item) for item in fake]
    for feature in ("jpeg_quality", "pixels", "aspect_ratio", "exif", "icc", "file_size", "bytes_per_pixel"):
        add(feature, [item[feature] for item in fake_numbers if feature in item],
            [item[feature] for item in real_numbers if feature in item], "JPEGs only" if feature == "jpeg_quality" else "")
    return results


def _warning_text(scope: str, comparison: dict, real_summary: dict, fake_summary: dict) -> str:
    feature, auc = comparison["feature"], comparison["auc"]
    if feature.startswith(("format=", "mode=", "subsampling=")):
        name = feature.split("=", 1)[0]
        key = {"format": "formats", "mode": "modes", "subsampling": "subsampling"}[name]
        detail = f"real: {_fmt_fractions(real_summary[key])}; fake: {_fmt_fractions(fake_summary[key])}"
        if name == "format":
            detail += " (the classic real-JPEG vs fake-PNG trap: re-encode both classes the same way)"
        return f"[{scope}] the {name} alone separates the classes ({feature}: AUC {auc:.2f}): {detail}"
    direction = "fake" if auc > 0.5 else "real"
    return f"[{scope}] {feature} alone separates the classes (AUC {auc:.2f}): higher values go with {direction} images"


def _strongest_per_feature(comparisons: Sequence[dict]) -> list[dict]:
    """Flagged comparisons, one per feature: a categorical feature's values mirror each other (format=JPEG vs
    format=PNG), so only its most separating value is reported."""
    strongest: dict[str, dict] = {}
    for comparison in comparisons:
        if not comparison["flag"]:
            continue
        feature = comparison["feature"].split("=", 1)[0]
        current = strongest.get(feature)
        if current is None or abs(comparison["auc"] - 0.5) > abs(current["auc"] - 0.5):
            strongest[feature] = comparison
    return list(strongest.values())


def check_rows(rows: Iterable[dict]) -> dict[str, Any]:
    """The bias report for labelled rows (``path``/``image``, ``label``, ``source``)."""
    facts = []
    for row in rows:
        item = _row_facts(row)
        item["label"] = int(row["label"])
        item["source"] = row.get("source") or ""
        facts.append(item)
    scopes = {"all": facts}
    sources = sorted({item["source"] for item in facts})
    if len(sources) > 1:
        for source in sources:
            scopes[f"source:{source}"] = [item for item in facts if item["source"] == source]
    report: dict[str, Any] = {"version": CHECK_VERSION, "thresholds": {"auc_high": AUC_HIGH, "auc_low": AUC_LOW,
                                                                     "min_per_class": MIN_PER_CLASS},
                              "scopes": {}, "warnings": [], "unreadable": []}
    for scope, items in scopes.items():
        real = [item for item in items if item["label"] == 0]
        fake = [item for item in items if item["label"] == 1]
        real_summary, fake_summary = summarize(real), summarize(fake)
        comparisons = compare_classes(real, fake) if real and fake else []
        report["scopes"][scope] = {"real": real_summary, "fake": fake_summary, "comparisons": comparisons}
        if not real or not fake:
            missing, present = ("real", "fake") if not real else ("fake", "real")
            report["warnings"].append({"scope": scope, "feature": "class_balance", "family": "source", "auc": None,
                                       "message": f"[{scope}] has only {present} images: whatever identifies this "
                                                  f"{'source' if scope != 'all' else 'data'} (content, camera, size, "
                                                  f"format) also identifies the {present} class; it has no {missing} "
                                                  "images to compare with"})
            continue
        for comparison in _strongest_per_feature(comparisons):
            if comparison["flag"]:
                report["warnings"].append({"scope": scope, "feature": comparison["feature"],
                                           "family": comparison["family"], "auc": comparison["auc"],
                                           "message": _warning_text(scope, comparison, real_summary, fake_summary)})
    report["unreadable"] = [{"path": item["path"], "error": item["error"]} for item in facts if "error" in item]
    if report["unreadable"]:
        report["warnings"].append({"scope": "all", "feature": "unreadable", "family": "unreadable", "auc": None,
                                   "message": f"{len(report['unreadable'])} file(s) could not be read as images "
                                              f"(first: {report['unreadable'][0]['path']}: "
                                              f"{report['unreadable'][0]['error']})"})
    return report


def sample_indices(labels: Sequence[int], sources: Sequence[str], max_per_class: int | None, seed: int) -> list[int]:
    """Row indices: at most ``max_per_class`` per (source, label), chosen by ``seed``; every row when None."""
    if max_per_class is None:
        return list(range(len(labels)))
    if max_per_class < MIN_PER_CLASS:
        raise DataError(f"--max-per-class must be at least {MIN_PER_CLASS}, got {max_per_class}")
    groups: dict[tuple, list[int]] = {}
    for index, (label, source) in enumerate(zip(labels, sources)):
        groups.setdefault((source or "", int(label)), []).append(index)
    rng = np.random.default_rng(seed)
    chosen = []
    for key in sorted(groups):
        indices = groups[key]
        if len(indices) > max_per_class:
            indices = rng.choice(indices, size=max_per_class, replace=False).tolist()
        chosen.extend(indices)
    return sorted(chosen)


def check_data(spec, *, max_per_class: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Run the bias check over every row of a :class:`fdcore.data.DataSpec` (weights ignored)."""
    import datasets

    from fdcore.data.sources import column_values

    dataset = spec.load_all()
    if isinstance(dataset, datasets.IterableDataset):
        raise DataError("the bias check reads every row; set streaming: false (or check a local copy)")
    sample_seed = spec.seed if seed is None else seed
    chosen = sample_indices(column_values(dataset, "label"), column_values(dataset, "source"), max_per_class,
                            sample_seed)
    columns = [name for name in ("path", "image", "label", "source") if name in dataset.column_names]
    # rows are read one at a time: embedded image bytes never all sit in memory together
    report = check_rows(dataset.select(chosen).select_columns(columns))
    report["data"] = spec.to_dict()
    report["sampled"] = {"max_per_class": max_per_class, "seed": sample_seed, "rows": len(chosen), "of": len(dataset)}
    return report


# --------------------------------------------------------------------------------------------- text rendering


def _fmt_quantiles(value: dict | None) -> str:
    if not value:
        return "-"
    return f"{value['median']:g} [{value['q1']:g}-{value['q3']:g}]"


def _fmt_fractions(value: dict) -> str:
    return ", ".join(f"{key} {100 * share:.0f}%" for key, share in list(value.items())[:4]) or "-"


def _fmt_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _summary_lines(real: dict, fake: dict) -> list[tuple[str, str, str]]:
    def sizes(summary: dict) -> str:
        return ", ".join(f"{size} x{count}" for size, count in summary["common_sizes"][:3]) or "-"

    def qualities(summary: dict) -> str:
        text = _fmt_quantiles(summary["jpeg_quality"])
        if summary["jpeg_nonstandard_tables"]:
            text += f" ({100 * summary['jpeg_nonstandard_tables']:.0f}% custom tables)"
        return text

    def file_size(summary: dict) -> str:
        value = summary["file_size"]
        if not value:
            return "-"
        return f"{value['median'] / 1024:.0f} KiB [{value['q1'] / 1024:.0f}-{value['q3'] / 1024:.0f}]"

    return [
        ("images", str(real["images"]), str(fake["images"])),
        ("unreadable", str(real["unreadable"]), str(fake["unreadable"])),
        ("formats", _fmt_fractions(real["formats"]), _fmt_fractions(fake["formats"])),
        ("modes", _fmt_fractions(real["modes"]), _fmt_fractions(fake["modes"])),
        ("JPEG quality med [q1-q3]", qualities(real), qualities(fake)),
        ("chroma subsampling", _fmt_fractions(real["subsampling"]), _fmt_fractions(fake["subsampling"])),
        ("width med [q1-q3]", _fmt_quantiles(real["width"]), _fmt_quantiles(fake["width"])),
        ("height med [q1-q3]", _fmt_quantiles(real["height"]), _fmt_quantiles(fake["height"])),
        ("square", _fmt_percent(real["square"]), _fmt_percent(fake["square"])),
        ("common sizes", sizes(real), sizes(fake)),
        ("EXIF", _fmt_percent(real["exif"]), _fmt_percent(fake["exif"])),
        ("ICC profile", _fmt_percent(real["icc"]), _fmt_percent(fake["icc"])),
        ("file size med [q1-q3]", file_size(real), file_size(fake)),
    ]


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`check_data`'s report."""
    lines: list[str] = []
    for scope, section in report["scopes"].items():
        lines.append(f"== {scope}")
        lines += _table(_summary_lines(section["real"], section["fake"]), ("", "REAL", "FAKE"))
        if section["comparisons"]:
            lines.append("")
            rows = [(item["feature"], f"{item['auc']:.2f}", "WARN" if item["flag"] else "ok", item["note"])
                    for item in section["comparisons"]]
            lines += _table(rows, ("FEATURE", "AUC", "", "NOTE"))
        lines.append("")
    thresholds = report["thresholds"]
    if report["warnings"]:
        lines.append(f"{len(report['warnings'])} warning(s) (single-feature AUC > {thresholds['auc_high']} or "
                     f"< {thresholds['auc_low']}):")
        lines += [f"  - {warning['message']}" for warning in report["warnings"]]
    else:
        lines.append(f"No warnings: no single header feature separates real from fake (AUC within "
                     f"[{thresholds['auc_low']}, {thresholds['auc_high']}]).")
    for name, record in (report.get("data") or {}).get("counts", {}).get("sources", {}).items():
        if record.get("skipped"):
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(record["skipped"].items()))
            lines.append(f"(source {name}: files skipped while listing: {reasons})")
    sampled = report.get("sampled")
    if sampled and sampled["rows"] != sampled["of"]:
        lines.append(f"(checked {sampled['rows']} of {sampled['of']} images, at most {sampled['max_per_class']} per "
                     f"class and source, seed {sampled['seed']})")
    return "\n".join(lines)
