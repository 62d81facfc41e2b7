"""CSV files fdcore writes (predictions, errors, image info, evaluation records, degradation records): one encoder.

Any name a file system allows must round-trip through Python's ``csv`` module and pandas. Python's writer quotes a
field holding the delimiter, a quote or a character of its line terminator, so with ``\\n`` line endings a field
holding a bare carriage return is written unquoted, and readers split the row there: a file named
``zz\\rvictim.jpg`` would forge a row for ``victim.jpg``. Fields are therefore quoted here whenever they hold ``,``,
``"``, ``\\r`` or ``\\n`` (quotes doubled), and left as they are otherwise, so ordinary files keep their exact bytes.

Spreadsheets evaluate a cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return) as a formula.
Files are written exactly by default; ``excel_safe=True`` (``--excel-safe``) prefixes such text cells with a single
quote, the OWASP "CSV injection" mitigation, at the price of names that no longer match the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from fdcore.fileio import write_text_atomic

_NEEDS_QUOTES = (",", '"', "\r", "\n")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_field(value: Any, excel_safe: bool = False) -> str:
    text = "" if value is None else str(value)
    if excel_safe and isinstance(value, str) and text.startswith(FORMULA_PREFIXES):
        text = "'" + text
    if any(character in text for character in _NEEDS_QUOTES):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]], excel_safe: bool = False) -> str:
    """The whole file: a header line, then one ``\\n``-terminated line per row."""
    lines = [",".join(csv_field(name) for name in header)]
    lines += [",".join(csv_field(value, excel_safe) for value in row) for row in rows]
    return "\n".join(lines) + "\n"


def write_csv_atomic(path, header: Sequence[str], rows: Iterable[Sequence[Any]], excel_safe: bool = False) -> Path:
    """Write the CSV atomically (readers see the old file or the new one, never a torn one)."""
    return write_text_atomic(Path(path), csv_text(header, rows, excel_safe))
