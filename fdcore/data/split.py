"""``fdcore data split``: one labelled source -> training, validation and test manifests that point at the files.

Stratified by label, generator and source, seeded, with near-duplicate images (difference hash within a few bits,
transitively) kept on one side, so a test score is never inflated by a copy of a training image. Nothing is copied:
each manifest is a CSV of absolute paths with their labels (1 = AI-generated), usable wherever fdcore takes data.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Sequence

from fdcore.csvfile import write_csv_atomic
from fdcore.data.sources import DataError, column_values, is_streaming

MANIFEST_COLUMNS = ("path", "label", "generator", "source")


def write_split_manifests(spec, out_dir, test: float = 0.2, validation: float = 0.1, seed: int = 0,
                          group: str = "dhash") -> dict:
    """Split the labelled ``spec`` (anything :func:`fdcore.resolve_data_spec` takes) into ``out_dir/train.csv``,
    ``validation.csv`` (when ``validation`` > 0) and ``test.csv`` (fractions of the whole); returns the counts."""
    from fdcore.data.spec import resolve_data_spec

    if not 0.0 < test < 1.0 or not 0.0 <= validation < 1.0 or test + validation >= 1.0:
        raise DataError(f"--test {test} and --validation {validation} must be fractions that leave images to train "
                        "on (0 < test, 0 <= validation, test + validation < 1)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty; choose a new folder for the split manifests")
    dataset = resolve_data_spec(spec, seed=seed).load()
    rest, test_part = split_train_validation(dataset, test, seed=seed, group=group,
                                             stratify=("label", "generator", "source"))
    parts = {"test": test_part}
    if validation:
        train, parts["validation"] = split_train_validation(rest, validation / (1.0 - test), seed=seed + 1,
                                                            group=group, stratify=("label", "generator", "source"))
    else:
        train = rest
    parts["train"] = train
    counts = {}
    for name, part in parts.items():
        columns = {column: (column_values(part, column) if column in part.column_names else [""] * len(part))
                   for column in MANIFEST_COLUMNS}
        rows = [[str(Path(path).resolve()), int(label), generator or "", source or ""]
                for path, label, generator, source in zip(*(columns[column] for column in MANIFEST_COLUMNS))]
        write_csv_atomic(out_dir / f"{name}.csv", MANIFEST_COLUMNS, sorted(rows))
        counts[name] = {"images": len(rows), "fake": sum(row[1] for row in rows)}
    return {"seed": seed, "group": group, "fractions": {"test": test, "validation": validation}, "counts": counts}


# -- grouping and stratified splitting (shared by validation fractions, fdcore data split and evaluation subsets) --

GROUP_MODES = ("filename", "sha256", "dhash")
# Two images whose 64-bit difference hashes differ in at most this many bits count as near-duplicates.
DHASH_NEAR_BITS = 4
_COPY_SUFFIX = re.compile(r"(?:\s*\(\d+\)|[\s_-]*copy(?:[\s_-]*\d+)?)+$")


def normalized_stem(path: str) -> str:
    """File name without folder, extension, case and trailing copy markers (``IMG_1 (2).JPG`` -> ``img``)."""
    stem = os.path.splitext(os.path.basename(path.split("#")[0]))[0].lower()
    return _COPY_SUFFIX.sub("", stem) or stem


def _image_bytes(row: dict) -> bytes:
    image = row.get("image")
    path = row["path"]
    if isinstance(image, dict):
        if image.get("bytes"):
            return image["bytes"]
        if image.get("path") and os.path.isfile(image["path"]):
            path = image["path"]
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise DataError(f"cannot read {path} to group it: {exc.strerror or exc}") from None


def difference_hash(row: dict) -> int:
    """64-bit dHash (9x8 grey thumbnail, left > right per pixel): equal or close for resized/re-encoded copies."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(_image_bytes(row))) as image:
            image.draft("L", (64, 64))  # JPEG: decode at 1/2..1/8 scale, ample for a 9x8 thumbnail
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # corrupt EXIF: hash the unrotated image
                pass
            grey = np.asarray(image.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    except Exception as exc:
        raise DataError(f"cannot hash image {row.get('path')}: {type(exc).__name__}: {exc}") from None
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(sum(1 << position for position, bit in enumerate(bits) if bit))


def near_duplicate_groups(hashes: Sequence[int], max_bits: int = DHASH_NEAR_BITS) -> list[int]:
    """Group id per item: items linked by hash distance <= ``max_bits`` (transitively) share the smallest index."""
    import numpy as np

    values = np.array(hashes, dtype=np.uint64)
    parent = list(range(len(values)))

    def find(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for index in range(len(values) - 1):
        xor = values[index] ^ values[index + 1:]
        distances = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        for offset in np.nonzero(distances <= max_bits)[0]:
            first, second = find(index), find(index + 1 + int(offset))
            if first != second:
                parent[max(first, second)] = min(first, second)
    return [find(index) for index in range(len(values))]


def group_keys(dataset, group: str) -> list:
    """Per-row group key for ``group``: a column name, ``filename`` (normalised stem), ``sha256`` (identical bytes)
    or ``dhash`` (near-duplicate pixels)."""
    if group in (dataset.column_names or []) and group not in ("path", "image"):
        return column_values(dataset, group)
    if group not in GROUP_MODES:
        raise DataError(f"group {group!r} is neither a column ({', '.join(dataset.column_names)}) nor one of "
                        f"{', '.join(GROUP_MODES)}")
    if group == "filename":
        return [normalized_stem(path) for path in column_values(dataset, "path")]
    columns = [name for name in ("path", "image") if name in dataset.column_names]
    rows = dataset.select_columns(columns)
    if group == "sha256":
        return [hashlib.sha256(_image_bytes(row)).hexdigest() for row in rows]
    return near_duplicate_groups([difference_hash(row) for row in rows])


def split_indices(strata: Sequence[Any], fraction: float, seed: int, groups: Sequence[Any] | None = None):
    """Deterministic stratified split: ``(train_indices, validation_indices)``, both sorted.

    Within each stratum (in sorted order) groups are shuffled by ``seed`` and moved to validation until the
    stratum's validation share is as close as possible to ``fraction``. A group never straddles the two sides;
    a group spanning several strata belongs to the stratum of its first row.
    """
    import numpy as np

    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    groups = list(range(len(strata))) if groups is None else list(groups)
    members: dict[Any, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    by_stratum: dict[Any, list[Any]] = {}
    for key, rows in members.items():
        by_stratum.setdefault(strata[rows[0]], []).append(key)
    rng = np.random.default_rng(seed)
    validation: list[int] = []
    for stratum in sorted(by_stratum, key=repr):
        keys = sorted(by_stratum[stratum], key=lambda key: members[key][0])
        order = rng.permutation(len(keys))
        size = sum(len(members[key]) for key in keys)
        target = fraction * size
        taken = 0
        for position in order:
            rows = members[keys[position]]
            if abs(taken + len(rows) - target) < abs(taken - target):
                validation.extend(rows)
                taken += len(rows)
    chosen = set(validation)
    return [index for index in range(len(strata)) if index not in chosen], sorted(chosen)


def split_train_validation(dataset, fraction: float = 0.1, *, seed: int = 0, group: str | None = None,
                           stratify: Sequence[str] = ("label", "generator")):
    """Split a labelled Dataset into ``(train, validation)`` by seed, stratified by label and generator.

    With ``group`` (a column, ``filename``, ``sha256`` or ``dhash``), rows sharing a group stay on one side, so
    copies and near-duplicates never leak from training into validation.
    """
    if is_streaming(dataset):
        raise DataError("cannot split a streaming dataset; give validation its own sources")
    columns = [column for column in stratify if column in dataset.column_names]
    values = [column_values(dataset, column) for column in columns]
    strata = list(zip(*values)) if values else [()] * len(dataset)
    groups = group_keys(dataset, group) if group else None
    train_rows, validation_rows = split_indices(strata, fraction, seed, groups)
    return dataset.select(train_rows), dataset.select(validation_rows)
