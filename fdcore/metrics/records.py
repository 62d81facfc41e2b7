"""The scored-record table that evaluation works on, and its validation.

One record per scored image (a degraded copy is its own record):

=================  ==========================================================================================
``image_id``       str, unique in the table (a degraded copy needs its own id, e.g. ``"a.jpg@jpeg+blur"``)
``label``          0 = real, 1 = AI-generated (bools and the strings "0"/"1" are accepted)
``score``          fused P(AI-generated) in [0, 1]
``expert:<name>``  optional, one column per expert: that expert's P(AI-generated) in [0, 1]; every record must
                   carry the same experts
``generator``      optional str, the generator of an AI-generated image ("" when unknown; ignored for reals)
``source``         optional str, where the image comes from (dataset, camera, site; "" when unknown)
``condition``      optional "clean", "degraded" (a suite's degraded copy: pooled into the robust AUC) or "sweep"
                   (one operator at one level, reported apart and never pooled); derived from
                   ``degradation`` when absent (clean or degraded)
``degradation``    optional str, the operator chain in order, joined with "+" (``"jpeg+gaussian_blur"``);
                   "" for clean images
``severity``       optional number on the level scale 0..5: the highest level among the chain's operators
                   (continuous strengths s in [0, 1] are ``5 * s``); 0 or absent for clean images
=================  ==========================================================================================

Other keys (paths, origin ids, ...) are allowed and ignored. Records may be given as a list of dicts or as one dict
of equal-length columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from fdcore.metrics.scores import MetricError

EXPERT_PREFIX = "expert:"
CLEAN = "clean"
DEGRADED = "degraded"
SWEEP = "sweep"
UNKNOWN = "(unknown)"
UNSPECIFIED_DEGRADATION = "(unspecified)"
MAX_LEVEL = 5


class RecordError(MetricError):
    """A scored-record table that does not follow the record format."""


@dataclass
class RecordTable:
    """Validated, columnar records (numpy arrays, one entry per image)."""

    image_id: np.ndarray
    label: np.ndarray
    score: np.ndarray
    experts: dict[str, np.ndarray]
    generator: np.ndarray
    source: np.ndarray
    condition: np.ndarray
    degradation: np.ndarray
    severity: np.ndarray  # float, NaN where unknown
    extra: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.label.size)

    @property
    def clean(self) -> np.ndarray:
        return self.condition == CLEAN

    @property
    def degraded(self) -> np.ndarray:
        return self.condition == DEGRADED

    @property
    def sweep(self) -> np.ndarray:
        return self.condition == SWEEP

    def scores_of(self, scorer: str | None) -> np.ndarray:
        """The fused score (``None``) or one expert's scores."""
        return self.score if scorer is None else self.experts[scorer]

    def operators(self) -> list[list[str]]:
        """Each record's degradation chain split into operator names (empty for clean images)."""
        return [[] if not chain or chain == UNSPECIFIED_DEGRADATION else chain.split("+") for chain in self.degradation]

    def severity_levels(self) -> np.ndarray:
        """Integer level 1..5 per degraded record: level k covers severities in (k-1, k]; 0 when clean or unknown."""
        levels = np.zeros(len(self), dtype=np.int64)
        known = (self.degraded | self.sweep) & np.isfinite(self.severity) & (self.severity > 0)
        levels[known] = np.clip(np.ceil(self.severity[known] - 1e-9), 1, MAX_LEVEL).astype(np.int64)
        return levels


def _columns(records: Any) -> dict[str, list]:
    if isinstance(records, RecordTable):
        raise RecordError("records are already a RecordTable; pass them to normalize_records only once")
    if isinstance(records, Mapping):
        columns = {str(key): list(value) for key, value in records.items()}
        lengths = {key: len(value) for key, value in columns.items()}
        if len(set(lengths.values())) > 1:
            raise RecordError(f"columnar records must have equal-length columns, got lengths {lengths}")
        return columns
    rows = list(records)
    if not all(isinstance(row, Mapping) for row in rows):
        raise RecordError("records must be a list of dicts or a dict of columns")
    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in row if key not in keys)
    return {key: [row.get(key) for row in rows] for key in keys}


def _label(value: Any, image_id: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return int(value)
    raise RecordError(f"record {image_id!r}: label must be 0 (real) or 1 (AI-generated), got {value!r}")


def _probability(value: Any, image_id: str, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecordError(f"record {image_id!r}: {column} must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise RecordError(f"record {image_id!r}: {column} must be a probability in [0, 1], got {value!r}; "
                          "score images with a detector that outputs P(AI-generated)")
    return number


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _severity(value: Any, image_id: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecordError(f"record {image_id!r}: severity must be a number on the level scale 0..5, got {value!r}") \
            from None
    if math.isnan(number):
        return math.nan
    if not 0.0 <= number <= MAX_LEVEL:
        raise RecordError(f"record {image_id!r}: severity must be on the level scale 0..{MAX_LEVEL} (the highest "
                          f"operator level in the chain), got {value!r}")
    return number


def normalize_records(records: Iterable[Mapping[str, Any]] | Mapping[str, Iterable]) -> RecordTable:
    """Validate records (see the module docstring) and return them as a :class:`RecordTable`.

    Raises:
        RecordError: naming the offending record and field.
    """
    columns = _columns(records)
    for required in ("image_id", "label", "score"):
        if required not in columns:
            raise RecordError(f"records lack the required field {required!r}; every record needs image_id, label "
                              "and score (see docs/evaluation.md)")
    image_ids = [_text(value) for value in columns["image_id"]]
    if not image_ids:
        raise RecordError("no records to evaluate")
    seen: set[str] = set()
    for position, image_id in enumerate(image_ids):
        if not image_id:
            raise RecordError(f"record #{position} (counting from 0) has no image_id")
        if image_id in seen:
            raise RecordError(f"image_id {image_id!r} appears more than once; give each degraded copy its own id")
        seen.add(image_id)
    n = len(image_ids)

    def column(name: str, default: Any) -> list:
        return columns.get(name, [default] * n)

    labels = np.array([_label(value, image_id) for value, image_id in zip(columns["label"], image_ids)], np.int8)
    scores = np.array([_probability(value, image_id, "score")
                       for value, image_id in zip(columns["score"], image_ids)], np.float64)
    experts: dict[str, np.ndarray] = {}
    for key in columns:
        if not key.startswith(EXPERT_PREFIX):
            continue
        name = key[len(EXPERT_PREFIX):]
        if not name:
            raise RecordError(f"expert column {key!r} has no expert name; use 'expert:<name>'")
        values = columns[key]
        missing = [image_id for value, image_id in zip(values, image_ids) if value is None or value == ""]
        if missing:
            raise RecordError(f"{len(missing)} records lack a score for expert {name!r} (first: {missing[0]!r}); "
                              "every record must carry the same experts")
        experts[name] = np.array([_probability(value, image_id, key) for value, image_id in zip(values, image_ids)])
    if "experts" in columns:
        raise RecordError("per-expert scores go in flat 'expert:<name>' fields, not a nested 'experts' dict")

    degradations = [_text(value) for value in column("degradation", "")]
    conditions = []
    for raw, chain, image_id in zip(column("condition", None), degradations, image_ids):
        condition = _text(raw).lower() or (DEGRADED if chain else CLEAN)
        if condition not in (CLEAN, DEGRADED, SWEEP):
            raise RecordError(f"record {image_id!r}: condition must be 'clean', 'degraded' or 'sweep', got {raw!r}")
        if condition == SWEEP and not chain:
            raise RecordError(f"record {image_id!r}: a sweep record needs its operator in 'degradation'")
        if condition == CLEAN and chain:
            raise RecordError(f"record {image_id!r}: condition is 'clean' but degradation is {chain!r}")
        if chain == CLEAN:
            raise RecordError(f"record {image_id!r}: 'clean' is not a degradation name; use degradation '' for "
                              "clean images")
        conditions.append(condition)
    degradations = [UNSPECIFIED_DEGRADATION if condition == DEGRADED and not chain else chain
                    for condition, chain in zip(conditions, degradations)]
    severities = np.array([_severity(value, image_id) for value, image_id in zip(column("severity", None), image_ids)],
                          np.float64)
    for condition, severity, image_id in zip(conditions, severities, image_ids):
        if condition == CLEAN and np.isfinite(severity) and severity != 0:
            raise RecordError(f"record {image_id!r}: a clean image must have severity 0 or none, got {severity:g}")

    known = {"image_id", "label", "score", "generator", "source", "condition", "degradation", "severity"}
    extra = {key: values for key, values in columns.items() if key not in known and not key.startswith(EXPERT_PREFIX)}
    return RecordTable(
        image_id=np.array(image_ids, dtype=object),
        label=labels,
        score=scores,
        experts=experts,
        generator=np.array([_text(value) or UNKNOWN for value in column("generator", "")], dtype=object),
        source=np.array([_text(value) or UNKNOWN for value in column("source", "")], dtype=object),
        condition=np.array(conditions, dtype=object),
        degradation=np.array(degradations, dtype=object),
        severity=severities,
        extra=extra,
    )


def read_records_csv(path) -> RecordTable:
    """Read records from a CSV file with the record fields as column names (``expert:<name>`` columns included)."""
    import csv
    from pathlib import Path

    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise RecordError(f"cannot read records from {path}: {error}") from error
    except (UnicodeDecodeError, csv.Error) as error:
        raise RecordError(f"{path} is not a UTF-8 CSV file of records: {error}") from error
    try:
        return normalize_records(rows)
    except RecordError as error:
        raise RecordError(f"{path}: {error}") from error
