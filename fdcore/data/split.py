"""``fdcore data split``: one labelled source -> training, validation and test manifests that point at the files.

Stratified by label, generator and source, seeded, with near-duplicate images (difference hash within a few bits,
transitively) kept on one side, so a test score is never inflated by a copy of a training image. Nothing is copied:
each manifest is a CSV of absolute paths with their labels (1 = AI-generated), usable wherever fdcore takes data.
"""

from __future__ import annotations

from pathlib import Path

from fdcore.csvfile import write_csv_atomic
from fdcore.data.sources import DataError

MANIFEST_COLUMNS = ("path", "label", "generator", "source")


def write_split_manifests(spec, out_dir, test: float = 0.2, validation: float = 0.1, seed: int = 0,
                          group: str = "dhash") -> dict:
    """Split the labelled ``spec`` (anything :func:`fdcore.resolve_data_spec` takes) into ``out_dir/train.csv``,
    ``validation.csv`` (when ``validation`` > 0) and ``test.csv`` (fractions of the whole); returns the counts."""
    from fdcore.data.spec import column_values, resolve_data_spec, split_train_validation

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
