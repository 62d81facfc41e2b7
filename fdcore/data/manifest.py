"""Manifests: tables that name images (CSV, JSONL, Parquet, or a text file of paths/URLs), read one way everywhere.

``fdcore predict MANIFEST`` lists its items with :func:`list_manifest` (label optional), labelled sources for
``fdcore evaluate`` / training with :func:`fdcore.data.sources.read_manifest` (label required); both read rows with
:func:`manifest_rows` and resolve each location with :func:`resolve_location`:

* the location column is ``path`` (or ``uri`` / ``url``; another name with ``--path-column``); a relative path is
  relative to the manifest's folder, ``file://`` is a local path, any other ``scheme://`` is a URL fetched by
  :mod:`fdcore.remote`;
* the item key (the ``image_name`` column of predictions.csv, and what a resumed run matches on) is the ``id`` column
  when there is one (``--id-column``), else the location exactly as written;
* a manifest is untrusted input: it must be UTF-8, every key unique (a repeated key is an error naming both lines),
  every row a mapping of plain values; parse errors name the file and the line (row, for Parquet).
"""

from __future__ import annotations

import csv
import json
import os
import stat
from typing import Any, Iterator, Sequence
from urllib.parse import unquote, urlsplit

from fdcore.data.sources import DataError

MANIFEST_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "text",
                    ".lst": "text"}
LOCATION_COLUMNS = ("path", "uri", "url")
ID_COLUMN = "id"
# A CSV field longer than this is refused (csv's default limit, stated): a manifest cannot make one row huge.
MAX_FIELD_BYTES = 131072


def manifest_format(path: str | os.PathLike) -> str | None:
    """``csv``, ``jsonl``, ``parquet`` or ``text`` by the file's extension; None for anything else."""
    return MANIFEST_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower())


def _formats_text() -> str:
    return ", ".join(sorted(MANIFEST_FORMATS))


def manifest_rows(path: str, required: Sequence[str] = ()) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for every row (keys lower-cased), ``where`` naming the file and line for messages.

    ``required``: columns every row must have (checked on the header for CSV and Parquet, per row for JSONL);
    ``"location"`` stands for any of :data:`LOCATION_COLUMNS`. A text manifest has only a location per line."""
    kind = manifest_format(path)
    if kind is None:
        raise DataError(f"{path}: a manifest must end in {_formats_text()}")
    if kind == "parquet":
        yield from _parquet_rows(path, required)
        return
    try:
        handle = open(path, newline="" if kind == "csv" else None, encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            if kind == "csv":
                yield from _csv_rows(path, handle, required)
            elif kind == "jsonl":
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except (json.JSONDecodeError, RecursionError) as exc:
                        raise DataError(f"{path}, line {number}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
                    row = {str(key).lower(): value for key, value in row.items()}
                    _check_required(path, f"{path}, line {number}", row.keys(), required)
                    yield f"{path}, line {number}", row
            else:
                if "label" in required:
                    raise DataError(f"{path} is a text manifest (one path or URL per line), which has no labels; "
                                    "use a CSV, JSONL or Parquet manifest with a label column")
                for number, line in enumerate(handle, start=1):
                    location = line.strip()
                    if location and not location.startswith("#"):
                        yield f"{path}, line {number}", {"path": location}
        except UnicodeDecodeError as exc:
            raise DataError(f"manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:
            raise DataError(f"{path}: not a readable CSV file ({exc})") from None


def _check_required(path: str, where: str, columns, required: Sequence[str]) -> None:
    columns = set(columns)
    for name in required:
        if name == "location":
            if not columns & set(LOCATION_COLUMNS):
                raise DataError(f"{where}: no path column (have: {', '.join(sorted(columns)) or 'nothing'}); name the "
                                f"image's path or URL in a column called {', '.join(LOCATION_COLUMNS)} (fdcore "
                                "predict also takes --path-column NAME)")
        elif name not in columns:
            hint = ("add it: 0 = real, 1 = AI-generated" if name == "label" else
                    "check the header and the column options (--path-column, --id-column)")
            raise DataError(f"{where}: no {name!r} column (have: {', '.join(sorted(columns)) or 'nothing'}); {hint}")


def _csv_rows(path: str, handle, required: Sequence[str]) -> Iterator[tuple[str, dict]]:
    csv.field_size_limit(MAX_FIELD_BYTES)
    reader = csv.DictReader(handle)
    if reader.fieldnames is None:
        raise DataError(f"manifest {path} is empty; its first line must be a header naming the columns "
                        f"(e.g. {','.join(('path', *[name for name in required if name != 'location']))})")
    header = [(name or "").strip().lower() for name in reader.fieldnames]
    _check_required(path, f"manifest {path}", header, required)
    reader.fieldnames = header
    for row in reader:
        if None in row:
            raise DataError(f"{path}, line {reader.line_num}: more fields than the header has")
        yield f"{path}, line {reader.line_num}", row


def _parquet_rows(path: str, required: Sequence[str]) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow; run `pip install pyarrow`") from None
    try:
        table_file = parquet.ParquetFile(path)
        columns = [name.lower() for name in table_file.schema_arrow.names]
    except Exception as exc:  # a damaged or hostile file: any pyarrow error is the file's fault
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    _check_required(path, f"manifest {path}", columns, required)
    number = 0
    try:
        for batch in table_file.iter_batches(batch_size=4096):
            names = [name.lower() for name in batch.schema.names]
            for values in zip(*(column.to_pylist() for column in batch.columns)):
                number += 1
                yield f"{path}, row {number}", dict(zip(names, values))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}, after row {number}: unreadable Parquet data ({type(exc).__name__}: {exc})") from None


def row_location(row: dict, where: str, column: str | None = None) -> str:
    """The row's path or URL, stripped; a DataError naming ``where`` when it is missing or not text."""
    if column is not None:
        value = row.get(column.lower())
        name = column
    else:
        name = next((candidate for candidate in LOCATION_COLUMNS if candidate in row), LOCATION_COLUMNS[0])
        value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: empty or missing {name} {value!r}")
    if "\x00" in value:
        raise DataError(f"{where}: the {name} holds a NUL byte")
    return value.strip()


def resolve_location(location: str, base: str) -> tuple[str, str]:
    """``("url", location)`` for a remote URL, else ``("local", absolute normalised path)``: relative paths are
    relative to ``base`` (the manifest's folder) and ``file://`` URLs are local paths."""
    from fdcore.remote import is_remote, url_scheme

    if is_remote(location):
        return "url", location
    if url_scheme(location) == "file":
        parts = urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            raise DataError(f"{location}: a file:// URL must name a local path (file:///abs/path)")
        location = unquote(parts.path)
    return "local", os.path.normpath(os.path.join(base, location))


def item_key(row: dict, location: str, where: str, id_column: str | None) -> str:
    """The item's key: its id column's value when the manifest has one, else its location as written."""
    column = (id_column or ID_COLUMN).lower()
    if column in row:
        value = row[column]
        if isinstance(value, bool) or value is None or not isinstance(value, (str, int)) or not str(value).strip():
            raise DataError(f"{where}: bad {column} {value!r}; ids must be non-empty text or integers")
        key = str(value).strip()
        if "\x00" in key:
            raise DataError(f"{where}: the {column} holds a NUL byte")
        return key
    if id_column is not None:
        raise DataError(f"{where}: no {id_column!r} column (--id-column)")
    return location


def locate_item(key: str, location: str, base: str):
    """One item -> a :class:`fdcore.walk.Candidate` to score, or a :class:`fdcore.walk.Skipped` with its reason code:
    a URL with a readable scheme (else ``unsupported_url``), or a local regular file (else ``not_found`` /
    ``not_regular_file``). Nothing is opened or downloaded. A malformed ``file://`` URL is a DataError."""
    from fdcore.remote import unsupported_reason
    from fdcore.walk import Candidate, Skipped

    kind, value = resolve_location(location, base)
    if kind == "url":
        reason = unsupported_reason(value)
        return Skipped(key, "unsupported_url", reason) if reason else Candidate(key, value, -1, 0, None, uri=value)
    try:
        real = os.path.realpath(value, strict=True)
        info = os.stat(real)
    except OSError as exc:
        return Skipped(key, "not_found", f"{value}: {exc.strerror or exc}")
    if not stat.S_ISREG(info.st_mode):
        return Skipped(key, "not_regular_file", f"{value} is not a regular file, never opened")
    return Candidate(key, real, info.st_size, info.st_mtime_ns, None)


def list_manifest(path: str, path_column: str | None = None, id_column: str | None = None):
    """The items a manifest names, as :class:`fdcore.walk.WalkResult` (sorted by key) for ``fdcore predict``.

    Local files are stat'ed (a missing one is ``not_found``, a special file ``not_regular_file``); URLs are checked
    for a readable scheme (``unsupported_url`` otherwise) and for an installed fsspec backend (an error before any
    work otherwise); nothing is opened or downloaded here."""
    from fdcore.remote import check_backends, url_scheme
    from fdcore.walk import Candidate, Skipped, WalkResult

    base = os.path.dirname(os.path.abspath(path))
    required = ((path_column.lower(),) if path_column else ("location",)) + ((id_column.lower(),) if id_column else ())
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    first_seen: dict[str, str] = {}
    schemes: set[str] = set()
    rows = 0
    for where, row in manifest_rows(path, required):
        rows += 1
        location = row_location(row, where, path_column)
        key = item_key(row, location, where, id_column)
        if key in first_seen:
            raise DataError(f"{where}: the key {key!r} was already used at {first_seen[key].rsplit(', ', 1)[-1]}; "
                            "every item needs its own key (add an id column, or remove the repeated row)")
        first_seen[key] = where
        item = locate_item(key, location, base)
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        if item.uri is not None:
            schemes.add(url_scheme(item.uri))
        candidates.append(item)
    if rows == 0:
        raise DataError(f"manifest {path} has no rows; list one image path or URL per row")
    check_backends(schemes)
    candidates.sort(key=lambda item: item.name)
    skipped.sort(key=lambda item: (item.name, item.code))
    return WalkResult(candidates, skipped)


def list_input(location: str, exclude: Sequence[str] = (), path_column: str | None = None,
               id_column: str | None = None):
    """The items of ``fdcore predict``'s input: a folder (:func:`fdcore.walk.walk_images`) or a manifest."""
    from fdcore.walk import walk_images

    if os.path.isdir(location):
        if path_column or id_column:
            raise DataError(f"--path-column and --id-column apply to manifests; {location} is a folder")
        return walk_images(location, exclude=exclude)
    return list_manifest(location, path_column, id_column)


def input_kind(location: str) -> str:
    """``folder`` or ``manifest``; a DataError saying what is accepted for anything else."""
    if os.path.isdir(location):
        return "folder"
    if os.path.isfile(location) and manifest_format(location):
        return "manifest"
    if os.path.exists(location):
        raise DataError(f"IMAGES {location} is neither a folder nor a manifest; pass a folder of images or a "
                        f"manifest ending in {_formats_text()}")
    raise DataError(f"IMAGES {location} does not exist; pass a folder of images or a manifest ({_formats_text()})")


def describe_manifest(path: str) -> dict[str, Any]:
    """What predictions.meta.json records about a manifest input: its path, format, size and SHA-256."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": os.path.realpath(path), "format": manifest_format(path), "sha256": digest.hexdigest(),
            "size_bytes": os.path.getsize(path)}
