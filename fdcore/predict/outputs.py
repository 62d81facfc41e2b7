"""The final output files, written atomically at the end of a run from the work logs.

Rows are sorted by ``image_name`` (Unicode code point order, which is also UTF-8 byte order) and numbers use
one fixed format, so the files are byte-identical whatever the listing order, batch size or worker count.
Names are written exactly as they are on disk (quoted when they hold commas, quotes, carriage returns or newlines:
:mod:`fdcore.csvfile`); nothing is prefixed unless ``--excel-safe`` asks for it, so a name such as ``=1+2.jpg``
round-trips but should not be opened in a spreadsheet that evaluates formulas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from fdcore.csvfile import write_csv_atomic
from fdcore.fileio import write_text_atomic

SCORE_FORMAT = "{:.8f}"
PREDICTION_COLUMNS = ("image_name", "score")
ERROR_COLUMNS = ("image_name", "reason", "detail")
INFO_COLUMNS = ("image_name", "format", "mode", "width", "height", "n_frames", "notes")


def format_score(value: float) -> str:
    return SCORE_FORMAT.format(value)


DECISION_COLUMNS = ("decision", "disagreement")


def per_expert_column(name: str, calibrated: bool) -> str:
    """``p_<expert>``, or ``p_raw_<expert>`` when ``score`` is calibrated (the members' probabilities never are)."""
    return f"p_raw_{name}" if calibrated else f"p_{name}"


def write_predictions(path: Path, rows: Sequence[tuple], expert_names: Sequence[str] | None = None,
                      excel_safe: bool = False, calibrated: bool = False, decisions: bool = False) -> None:
    """``rows`` = (image_name, fused score, per-expert probabilities[, decision, disagreement]); per-expert columns
    when names are given; ``decision`` and ``disagreement`` columns when ``decisions`` (a calibrated threshold)."""
    header = (list(PREDICTION_COLUMNS) + (list(DECISION_COLUMNS) if decisions else [])
              + [per_expert_column(name, calibrated) for name in (expert_names or [])])
    body = []
    for row in sorted(rows, key=lambda row: row[0]):
        name, score, probabilities = row[:3]
        line = [name, format_score(score)]
        if decisions:
            line.extend([row[3], "yes" if row[4] else "no"])
        if expert_names:
            line.extend(format_score(p) for p in probabilities)
        body.append(line)
    write_csv_atomic(path, header, body, excel_safe)


def write_errors(path: Path, rows: Iterable[tuple[str, str, str]], excel_safe: bool = False) -> None:
    write_csv_atomic(path, ERROR_COLUMNS, sorted(rows), excel_safe)


def write_image_info(path: Path, rows: Iterable[tuple[str, dict]], excel_safe: bool = False) -> None:
    body = []
    for name, info in sorted(rows, key=lambda row: row[0]):
        frames = info.get("n_frames")
        body.append([name, info.get("format", ""), info.get("mode", ""), info.get("width", ""),
                     info.get("height", ""), "" if frames is None else frames, ";".join(info.get("notes", []))])
    write_csv_atomic(path, INFO_COLUMNS, body, excel_safe)


def write_meta(path: Path, meta: dict) -> None:
    write_text_atomic(Path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
