"""Labelled image sources as Hugging Face ``datasets``: folders, manifests, Hub datasets and ``save_to_disk`` folders.

Every source yields the same columns, so that sources can be mixed and every consumer reads one schema:

* ``path`` (str): absolute file path, or a URI ``hub:ORG/NAME?split=S#ROW`` / ``disk:DIR#ROW`` for rows whose image
  bytes live inside a dataset;
* ``image`` (only for dataset sources with embedded images): ``datasets.Image(decode=False)``, i.e.
  ``{"bytes", "path"}``; decoding is left to fdcore's own image policy (EXIF orientation, mode handling);
* ``label`` (int): 1 = AI-generated, 0 = real, whatever numbering the underlying loader used;
* ``generator`` (str): the generator's name, ``""`` when unknown;
* ``source`` (str): the name the data spec gave the source (or a manifest's own ``source`` column).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Any, Iterable, Sequence

from fdcore.errors import FdcoreError

# Class folder names (compared lower-cased). ``0_real``/``1_fake`` is the CNNDetection (Wang et al. 2020) layout.
CLASS_FOLDERS = {"real": 0, "0_real": 0, "fake": 1, "1_fake": 1}
# Label spellings accepted in manifests and dataset columns (compared lower-cased, stripped).
REAL_LABELS = frozenset({"0", "real", "authentic"})
FAKE_LABELS = frozenset({"1", "fake", "ai", "generated", "ai-generated", "synthetic"})
# Labelled manifests (a text manifest has no labels); read by fdcore.data.manifest.
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
COLUMNS = ("path", "image", "label", "generator", "source")
MISSING_POLICIES = ("error", "skip")
_MISSING_SHOWN = 5


class DataError(FdcoreError):
    """A data source or data spec that cannot be used as given; the message says what to change."""


@dataclasses.dataclass
class SourceListing:
    """The rows a file-based source found, plus what it skipped and why (nothing is skipped silently)."""

    records: list[dict]
    skipped: dict[str, int]

    def listing_sha256(self) -> str:
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(f"{record['path']}\t{record['label']}\t{record['generator']}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def parse_label(value: Any, where: str) -> int:
    """0/1 (int, or a string such as ``"1"``) or a class word -> 0 or 1; anything else is a DataError naming ``where``."""
    if isinstance(value, bool):
        raise DataError(f"{where}: label {value!r} is a boolean; write 0 (real) or 1 (AI-generated)")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("0.0", "1.0"):
            word = word[0]
        if word in REAL_LABELS:
            return 0
        if word in FAKE_LABELS:
            return 1
    raise DataError(f"{where}: bad label {value!r}; use 0 or 1 (1 = AI-generated), or one of "
                    f"{', '.join(sorted(REAL_LABELS - {'0'}))} / {', '.join(sorted(FAKE_LABELS - {'1'}))}")


def scan_folder(root: str, generator: str | None = None) -> SourceListing:
    """Find labelled images under ``root``'s ``real/`` and ``fake/`` (or ``0_real/``, ``1_fake/``) folders.

    The folder is listed by :func:`fdcore.walk.walk_images`, the lister ``fdcore predict`` uses (the same image
    extensions, the same symlink and special-file rules and reason codes); this function only labels what it yields.
    Class folders may sit at any depth (``root/airplane/1_fake`` as in CNNDetection) and images at any depth below
    them. The first folder below a fake class folder names the generator (``fake/sdxl/x.png`` -> ``sdxl``) unless
    ``generator`` is given. Files with a hidden component (``.cache/x.jpg``) are skipped as ``hidden``, files outside
    any class folder as ``outside_class_folder``; every skip is counted. Rows are sorted by relative path, so the
    order never depends on the file system; a row's path is ``root/<relative name>`` (a symlink keeps its own name).
    """
    from fdcore.images import IMAGE_EXTENSIONS
    from fdcore.walk import walk_images

    if not os.path.exists(root):
        raise DataError(f"data folder {root} does not exist; pass a folder with real/ and fake/ sub-folders, "
                        "a CSV/JSONL manifest or a YAML data spec")
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a folder; a file must end in .csv or .jsonl (manifest) or .yaml/.yml (spec)")
    root_abs = os.path.abspath(root)
    walked = walk_images(root_abs, extensions=IMAGE_EXTENSIONS)
    skipped: dict[str, int] = {}
    for entry in walked.skipped:
        skipped[entry.code] = skipped.get(entry.code, 0) + 1
    found: list[tuple[str, int, str]] = []
    for candidate in walked.candidates:
        parts = candidate.name.split("/")
        if any(part.startswith(".") for part in parts):
            skipped["hidden"] = skipped.get("hidden", 0) + 1
            continue
        labels = [(depth, CLASS_FOLDERS[part.lower()]) for depth, part in enumerate(parts[:-1])
                  if part.lower() in CLASS_FOLDERS]
        if len({label for _, label in labels}) > 1:
            raise DataError(f"{os.path.join(root_abs, *parts[:-1])} lies inside both a real and a fake class folder; "
                            "rename one so that each image has a single class folder above it")
        if not labels:
            skipped["outside_class_folder"] = skipped.get("outside_class_folder", 0) + 1
            continue
        depth, label = labels[0]
        below = parts[depth + 1:-1]
        file_generator = generator if generator is not None else (below[0] if label == 1 and below else "")
        found.append((candidate.name, label, file_generator))
    if not any(part.lower() in CLASS_FOLDERS for directory in walked.directories for part in directory.split("/")):
        entries = sorted(os.listdir(root_abs))[:8]
        raise DataError(f"{root} has no real/ and fake/ sub-folders (found: {', '.join(entries) or 'nothing'}); put real "
                        f"images under {os.path.join(root, 'real')} and AI-generated ones under "
                        f"{os.path.join(root, 'fake')} (0_real/1_fake also work), or describe them in a CSV manifest")
    if not found:
        raise DataError(f"{root} has class folders but no image files in them (extensions: "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}; skipped: {skipped or 'none'})")
    records = [{"path": os.path.join(root_abs, *relative.split("/")), "label": label, "generator": gen}
               for relative, label, gen in found]
    return SourceListing(records, dict(sorted(skipped.items())))


def read_manifest(path: str, missing: str = "error", generator: str | None = None) -> SourceListing:
    """Rows of a labelled manifest (CSV, JSONL or Parquet: ``path,label[,generator,source]``; other columns are
    ignored), read by :func:`fdcore.data.manifest.manifest_rows`.

    Relative paths are relative to the manifest's folder; a URL (``https://``, ``s3://``...) is kept as the row's
    path and fetched when the image is read (:mod:`fdcore.remote`). ``missing="error"`` refuses a manifest naming
    local files that do not exist (listing the first few); ``missing="skip"`` drops and counts them.
    """
    from fdcore.data.manifest import manifest_rows, resolve_location, row_location

    if missing not in MISSING_POLICIES:
        raise DataError(f"missing must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")
    if not os.path.isfile(path):
        raise DataError(f"manifest {path} does not exist")
    base = os.path.dirname(os.path.abspath(path))
    records: list[dict] = []
    absent: list[tuple[str, str]] = []
    seen_lines = 0
    for where, row in manifest_rows(path, required=("location", "label")):
        seen_lines += 1
        raw_path = row_location(row, where)
        if "label" not in row or row["label"] is None:
            raise DataError(f"{where}: no label; use 0 (real) or 1 (AI-generated)")
        label = parse_label(row["label"], where)
        kind, file_path = resolve_location(raw_path, base)
        if kind == "local" and not os.path.isfile(file_path):
            absent.append((where.rsplit(", ", 1)[-1], raw_path))
            continue
        row_generator = row.get("generator")
        record = {"path": file_path, "label": label,
                  "generator": generator if generator is not None else ("" if row_generator is None else str(row_generator))}
        row_source = row.get("source")
        if row_source not in (None, ""):
            record["source"] = str(row_source)
        records.append(record)
    if seen_lines == 0:
        raise DataError(f"manifest {path} has no rows")
    skipped = {}
    if absent:
        if missing == "error":
            shown = "; ".join(f"{line}: {name}" for line, name in absent[:_MISSING_SHOWN])
            more = f" and {len(absent) - _MISSING_SHOWN} more" if len(absent) > _MISSING_SHOWN else ""
            raise DataError(f"manifest {path}: {len(absent)} listed file(s) do not exist ({shown}{more}); fix the paths "
                            "(relative paths are relative to the manifest's folder) or skip them with --skip-missing "
                            "(YAML: missing: skip)")
        skipped["missing_file"] = len(absent)
    if not records:
        raise DataError(f"manifest {path}: none of its {seen_lines} rows names an existing file")
    return SourceListing(records, skipped)


def schema_features(with_image: bool):
    """The columns every source is mapped onto (``image`` only for sources with embedded images)."""
    import datasets

    columns = {"path": datasets.Value("string")}
    if with_image:
        columns["image"] = datasets.Image(decode=False)
    columns.update(label=datasets.Value("int64"), generator=datasets.Value("string"), source=datasets.Value("string"))
    return datasets.Features(columns)


def listing_to_dataset(listing: SourceListing, source: str):
    """A SourceListing -> ``datasets.Dataset`` with columns path, label, generator, source."""
    import datasets

    return datasets.Dataset.from_dict({
        "path": [record["path"] for record in listing.records],
        "label": [record["label"] for record in listing.records],
        "generator": [record["generator"] for record in listing.records],
        "source": [record.get("source", source) for record in listing.records],
    }, features=schema_features(with_image=False))


class _LabelMapper:
    """Turns one dataset label value into 0/1, honouring ClassLabel names and explicit fake/real values."""

    def __init__(self, feature: Any, fake_values: Sequence[str], real_values: Sequence[str], where: str):
        import datasets

        self.names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        self.fake_values = {str(value).strip().lower() for value in fake_values}
        self.real_values = {str(value).strip().lower() for value in real_values}
        self.where = where

    def __call__(self, value: Any, row: int) -> int:
        if value is None:
            raise DataError(f"{self.where}, row {row}: the label is missing")
        spellings = {str(value).strip().lower()}
        if self.names is not None and isinstance(value, int) and 0 <= value < len(self.names):
            spellings.add(self.names[value].strip().lower())
        if self.fake_values or self.real_values:
            if spellings & self.fake_values:
                return 1
            if spellings & self.real_values or not self.real_values:
                return 0
            raise DataError(f"{self.where}, row {row}: label value {value!r} is in neither fake_value "
                            f"({', '.join(sorted(self.fake_values))}) nor real_value ({', '.join(sorted(self.real_values))})")
        # Without explicit values a ClassLabel is read by its names: imagefolder numbers fake=0, real=1.
        if self.names is not None and isinstance(value, int):
            return parse_label(self.names[value], f"{self.where}, row {row} (class {self.names[value]!r})")
        return parse_label(value, f"{self.where}, row {row}")


@dataclasses.dataclass(frozen=True)
class ColumnMapping:
    """Which columns of a dataset hold the image, label, path, generator and source (None = absent)."""

    image: str | None = None
    label: str = "label"
    path: str | None = None
    generator: str | None = None
    source: str | None = None

    @classmethod
    def from_dict(cls, mapping: dict | None) -> "ColumnMapping":
        mapping = dict(mapping or {})
        unknown = set(mapping) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise DataError(f"unknown column mapping key(s) {', '.join(sorted(unknown))}; known: image, label, path, "
                            "generator, source")
        return cls(**mapping)


def normalize_dataset(dataset, *, source: str, uri: str, columns: ColumnMapping, fake_values: Sequence[str] = (),
                      real_values: Sequence[str] = (), generator: str | None = None, base_dir: str | None = None):
    """Map a loaded ``datasets`` Dataset/IterableDataset with arbitrary columns onto fdcore's schema.

    The image column (if any) keeps its bytes untouched (cast to ``Image(decode=False)``); label, path,
    generator and source are computed without rewriting the image data, so nothing is cached next to the user's
    dataset.
    """
    import datasets

    available = list(dataset.column_names or [])
    image_column = columns.image if columns.image is not None else ("image" if "image" in available else None)
    for role, column in (("image", image_column), ("label", columns.label), ("path", columns.path),
                         ("generator", columns.generator), ("source", columns.source)):
        if column is not None and available and column not in available:
            raise DataError(f"{uri}: no column {column!r} for {role} (columns: {', '.join(available)}); map the right "
                            f"one, e.g. {role}=COLUMN")
    if image_column is None and columns.path is None:
        raise DataError(f"{uri}: no image column found (columns: {', '.join(available)}); map one with image=COLUMN, "
                        "or path=COLUMN for a column of file paths")
    features = dataset.features or {}
    if image_column is not None and features and not isinstance(features.get(image_column), datasets.Image):
        raise DataError(f"{uri}: column {image_column!r} is {features.get(image_column)}, not an image; map a column of "
                        "file paths with path=COLUMN instead")
    mapper = _LabelMapper(features.get(columns.label) if features else None, fake_values, real_values, uri)

    def resolve_path(value: Any, row: int) -> str:
        if value is None or value == "":
            return f"{uri}#{row}"
        value = str(value)
        if base_dir is not None and "://" not in value and not os.path.isabs(value):
            return os.path.normpath(os.path.join(base_dir, value))
        return value

    def row_generator(example: dict) -> str:
        if columns.generator is not None and example.get(columns.generator) is not None:
            return str(example[columns.generator])
        return generator or ""

    def row_source(example: dict) -> str:
        if columns.source is not None and example.get(columns.source) not in (None, ""):
            return str(example[columns.source])
        return source

    target = schema_features(with_image=image_column is not None)
    if isinstance(dataset, datasets.IterableDataset):
        def convert(example: dict, row: int) -> dict:
            out = {"path": resolve_path(example.get(columns.path) if columns.path else None, row),
                   "label": mapper(example[columns.label], row),
                   "generator": row_generator(example), "source": row_source(example)}
            if image_column is not None:
                out["image"] = example[image_column]
            return out

        if image_column is not None:
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        converted = dataset.map(convert, with_indices=True, remove_columns=available or None, features=target)
        return converted.select_columns(list(target))

    wanted = [name for name in (columns.label, columns.path, columns.generator, columns.source) if name is not None]
    table = dataset.select_columns(sorted(set(wanted))).to_dict() if wanted else {}
    size = len(dataset)
    rows = [{name: table[name][row] for name in table} for row in range(size)]
    built = {
        "path": [resolve_path(example.get(columns.path) if columns.path else None, row) for row, example in enumerate(rows)],
        "label": [mapper(example[columns.label], row) for row, example in enumerate(rows)],
        "generator": [row_generator(example) for example in rows],
        "source": [row_source(example) for example in rows],
    }
    if image_column is None:
        return datasets.Dataset.from_dict(built, features=target)
    images = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    if image_column != "image":
        images = images.rename_column(image_column, "image")
    for name in ("path", "label", "generator", "source"):
        images = images.add_column(name, built[name], feature=target[name])
    return images.select_columns(list(target))


def _offline_hint(dataset_id: str, split: str | None) -> str:
    split_arg = f", split={split!r}" if split else ""
    return (f"download it on a machine with Hub access (datasets.load_dataset({dataset_id!r}{split_arg})"
            f".save_to_disk('DIR')), copy DIR here and use disk:DIR; or point HF_HOME at a cache that holds it")


def load_hub_dataset(dataset_id: str, *, split: str | None = "train", config: str | None = None,
                     revision: str | None = None, streaming: bool = False, cache_dir: str | None = None):
    """``datasets.load_dataset`` with failures turned into DataErrors that say how to get the data here."""
    import datasets

    offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False)) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "ON")
    try:
        loaded = datasets.load_dataset(dataset_id, config, split=split, revision=revision, streaming=streaming,
                                       cache_dir=cache_dir)
    except (ConnectionError, OSError) as exc:
        state = "offline mode (HF_HUB_OFFLINE=1)" if offline else "the Hub could not be reached or has no such dataset"
        raise DataError(f"cannot load Hub dataset {dataset_id!r}: {state} ({exc}); {_offline_hint(dataset_id, split)}") from None
    except ValueError as exc:
        raise DataError(f"cannot load Hub dataset {dataset_id!r} (config={config!r}, split={split!r}): {exc}") from None
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"Hub dataset {dataset_id!r} has splits {', '.join(loaded)}; choose one with split=NAME")
    return loaded


def load_disk_dataset(path: str, split: str | None = None):
    """``datasets.load_from_disk`` of a ``save_to_disk`` folder (a Dataset, or one split of a DatasetDict)."""
    import datasets

    if not os.path.isdir(path):
        raise DataError(f"dataset folder {path} does not exist (disk: expects a folder written by save_to_disk)")
    try:
        loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{path} is not a dataset saved with save_to_disk ({exc}); for a folder of images use its path "
                        "without disk:") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise DataError(f"{path} holds splits {', '.join(loaded)}; choose one with split=NAME")
            split = next(iter(loaded))
        if split not in loaded:
            raise DataError(f"{path} has no split {split!r} (splits: {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded


def check_weight(weight: Any, where: str) -> float:
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise DataError(f"{where}: weight {weight!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"{where}: weight must be a finite number > 0, got {weight!r} (drop the source to exclude it)")
    return value


def label_counts(labels: Iterable[int]) -> dict[str, int]:
    counts = {"real": 0, "fake": 0}
    for label in labels:
        counts["fake" if label == 1 else "real"] += 1
    return counts


def is_streaming(dataset) -> bool:
    """Whether a loaded source is a ``datasets.IterableDataset`` (a stream: no length, no random access)."""
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def column_values(dataset, column: str) -> list:
    """A column of a (possibly index-mapped) Dataset as a Python list."""
    return list(dataset.select_columns([column]).to_dict()[column]) if len(dataset) else []



def open_image_rgb(path: str | None = None, data: bytes | None = None, name: str | None = None):
    """Decode one training or evaluation image with :mod:`fdcore.images` (the one decoder: format allowlist, pixel
    limits, frame 0, EXIF orientation, the pixel policy) -> model RGB PIL image; a refusal is a DataError naming it."""
    from fdcore.images import ImageRejected, load_image, open_image_file

    name = name or path or "<image bytes>"
    try:
        if data is not None:
            return load_image(data).image
        # open_image_file refuses a symlink in the last component; listings have already checked the target.
        return open_image_file(os.path.realpath(path)).image
    except ImageRejected as exc:
        raise DataError(f"image {name} refused: {exc}") from None
