"""The append-only work log of a prediction run: one JSON object per line, one line per image outcome.

JSON Lines rather than CSV because every record must be self-delimiting: image names may contain commas, quotes
and newlines, and a CSV record with an embedded newline cannot be told apart from a torn one. Here a record is
committed exactly when its ``\\n`` is on disk; anything after the last ``\\n`` is a torn tail from a killed
process and is dropped (the image is simply scored again). Lines are ASCII (``ensure_ascii``), floats are written
with ``repr`` precision, so resuming never changes a stored probability.

Record shapes:
    {"name": ..., "size": N, "mtime_ns": N, "status": "ok", "p": [P per expert], "info": {...}}
    {"name": ..., "size": N, "mtime_ns": N, "status": "error", "code": ..., "detail": ...}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Iterable

LOG_PREFIX = "rows-"
LOG_SUFFIX = ".jsonl"


def log_name(rank: int, world_size: int) -> str:
    """Each process appends only to its own file, so no two writers ever share one."""
    return f"{LOG_PREFIX}rank{rank:05d}-of{world_size:05d}{LOG_SUFFIX}"


@dataclasses.dataclass
class ReadResult:
    rows: list[dict]
    torn_tails: int = 0  # files that ended in an unterminated record (dropped)
    corrupt_lines: int = 0  # complete lines that were not valid records (dropped)


def _valid(record) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        return False
    if not isinstance(record.get("size"), int) or not isinstance(record.get("mtime_ns"), int):
        return False
    if record.get("status") == "ok":
        probabilities = record.get("p")
        return (isinstance(probabilities, list) and len(probabilities) > 0 and
                all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in probabilities))
    return record.get("status") == "error" and isinstance(record.get("code"), str)


def read_log(path: Path) -> ReadResult:
    data = Path(path).read_bytes()
    complete, _, tail = data.rpartition(b"\n")
    result = ReadResult(rows=[], torn_tails=1 if tail else 0)
    if not complete and not data.endswith(b"\n"):
        return result
    for line in complete.split(b"\n"):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            result.corrupt_lines += 1
            continue
        if _valid(record):
            result.rows.append(record)
        else:
            result.corrupt_lines += 1
    return result


def read_logs(directory: Path) -> ReadResult:
    """All records of every log file in ``directory`` (files in name order, records in append order)."""
    merged = ReadResult(rows=[])
    directory = Path(directory)
    if not directory.is_dir():
        return merged
    for path in sorted(directory.glob(f"{LOG_PREFIX}*{LOG_SUFFIX}")):
        part = read_log(path)
        merged.rows.extend(part.rows)
        merged.torn_tails += part.torn_tails
        merged.corrupt_lines += part.corrupt_lines
    return merged


class LogWriter:
    """Appends records to one log file; a torn tail left by a killed predecessor is cut off first.

    ``write`` hands complete lines to the OS (survives kill -9); ``sync`` also fsyncs (survives power loss).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._repair()
        self._handle = open(self.path, "ab", buffering=0)

    def _repair(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "r+b") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())

    def write(self, records: Iterable[dict]) -> None:
        payload = b"".join(json.dumps(record, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
                           .encode("ascii") + b"\n" for record in records)
        view = memoryview(payload)
        while view:  # unbuffered: straight to the OS, looping over short writes
            written = self._handle.write(view)
            view = view[written:]

    def sync(self) -> None:
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self.sync()
            self._handle.close()
