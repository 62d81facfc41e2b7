"""``fdcore degrade``: write degraded copies of a folder of images, or a contact sheet of every operator.

Outputs are lossless PNG files holding the degraded pixels, at the input's relative path with the suffix replaced
by ``.png``: a codec operator's result (JPEG, JPEG 2000, WebP...) is stored as its decoded pixels, so reading the
PNG back gives exactly what the detector would see, without a second, uncontrolled compression. ``degradations.csv``
in OUT_DIR has one row per input with the JSON record that ``fdcore.replay`` reproduces. Every sample's randomness
is keyed by (seed, relative path), so reruns with the same arguments give identical bytes, whatever the order or
the number of files.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import click

from fdcore.csvfile import write_csv_atomic
from fdcore.errors import FdcoreError
from fdcore.fileio import write_bytes_atomic

CSV_NAME = "degradations.csv"
CSV_COLUMNS = ("path", "output", "status", "policy", "seed", "branch", "ops", "record")


class DegradeCommandError(FdcoreError):
    """Bad arguments or an output location that cannot be written."""


def _png_bytes(pixels) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # Fixed settings and no metadata: the same pixels always give the same file bytes.
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _ops_summary(record: dict) -> str:
    return ";".join(f"{step['op']}@{step['severity']:g}" for step in record["ops"]) or "clean"


def degrade_folder(in_dir: Path, out_dir: Path, policy=None, op: str | None = None, severity: float | None = None,
                   level: int | None = None, seed: int = 0, options: dict | None = None,
                   echo=lambda message: None, overwrite: bool = False, progress: bool = False) -> dict:
    """Degrade every image under ``in_dir`` into ``out_dir`` (see the module docstring); returns counts.

    A non-empty ``out_dir`` is refused unless ``overwrite`` (then same-named files are replaced, others kept);
    ``progress`` shows a bar on stderr."""
    import numpy as np

    from fdcore.degradations.policy import RECORD_FORMAT, Step, apply_steps, load_policy
    from fdcore.images import ImageRejected, open_image_file
    from fdcore.walk import walk_images

    if not in_dir.is_dir():
        raise DegradeCommandError(f"input folder {in_dir} does not exist or is not a folder")
    in_real, out_real = os.path.realpath(in_dir), os.path.realpath(out_dir)
    if in_real == out_real:
        raise DegradeCommandError("OUT_DIR must differ from IN_DIR (degraded copies would overwrite the originals)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DegradeCommandError(f"OUT_DIR {out_dir} is not empty; choose a new folder, or pass --overwrite to write "
                                  "over same-named files (other files are left as they are)")
    if out_dir.exists() and not out_dir.is_dir():
        raise DegradeCommandError(f"OUT_DIR {out_dir} exists and is not a folder; choose a folder for the outputs")
    loaded_policy = load_policy(policy, **(options or {})) if policy is not None else None
    if op is not None:
        from fdcore import registry

        registry.get("degraders", op)  # unknown operator: UnknownNameError lists the valid ones, before any work
    walked = walk_images(in_dir, exclude=[out_dir])
    outputs: dict[str, str] = {}
    for candidate in walked.candidates:
        target = str(Path(candidate.name).with_suffix(".png").as_posix())
        if target in outputs:
            raise DegradeCommandError(f"{outputs[target]} and {candidate.name} would both be written to {target}; "
                                      "rename one of them")
        outputs[target] = candidate.name

    rows = []
    counts = {"written": 0, "failed": 0, "skipped": len([s for s in walked.skipped if not s.ignored])}

    def row_without_output(name: str, status: str) -> dict:
        return {"path": name, "output": "", "status": status, "policy": "", "seed": seed, "branch": "", "ops": "",
                "record": ""}

    def failed(name: str, status: str) -> None:
        counts["failed"] += 1
        rows.append(row_without_output(name, status))
        echo(f"fdcore degrade: {name}: {status}")

    bar = None
    if progress and walked.candidates:
        from tqdm import tqdm

        bar = tqdm(total=len(walked.candidates), unit="img", desc="fdcore degrade", file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
    try:
        for candidate in walked.candidates:
            if bar is not None:
                bar.update(1)
            target = str(Path(candidate.name).with_suffix(".png").as_posix())
            try:
                pixels = np.asarray(open_image_file(candidate.path, root=candidate.root).image.convert("RGB"))
            except ImageRejected as exc:
                failed(candidate.name, f"error: {exc.code}: {exc.detail}")
                continue
            try:
                if loaded_policy is not None:
                    out, record = loaded_policy.apply(pixels, seed, candidate.name)
                else:
                    out, step_records = apply_steps(pixels, [Step(op, severity, level)], seed, candidate.name)
                    record = {"format": RECORD_FORMAT, "policy": f"op:{op}", "options": {}, "seed": seed,
                              "sample_id": candidate.name, "branch": "single", "ops": step_records}
            except FdcoreError as exc:  # an operator refused this image (e.g. too large for its codec)
                failed(candidate.name, f"error: degrade_failed: {exc}")
                continue
            write_bytes_atomic(out_dir / target, _png_bytes(out))
            counts["written"] += 1
            rows.append({"path": candidate.name, "output": target, "status": "ok", "policy": record["policy"],
                         "seed": seed, "branch": record["branch"], "ops": _ops_summary(record),
                         "record": json.dumps(record, sort_keys=True, separators=(",", ":"))})
    finally:
        if bar is not None:
            bar.close()
        # Written even when an unexpected error stops the run: the images already written keep their records.
        for skipped in walked.skipped:
            if not skipped.ignored:
                rows.append(row_without_output(skipped.name, f"skipped: {skipped.code}: {skipped.detail}"))
        rows.sort(key=lambda row: row["path"])
        write_csv_atomic(out_dir / CSV_NAME, CSV_COLUMNS, ([row.get(column, "") for column in CSV_COLUMNS]
                                                          for row in rows))
    return counts


def contact_sheet(image_path: Path, sheet_path: Path, tile: int = 128, seed: int = 0, pattern: str | None = None):
    """A PNG grid: one row per registered operator, columns original and levels 1..5, labelled."""
    import numpy as np
    from PIL import Image, ImageDraw

    from fdcore import registry
    from fdcore.degradations.policy import Step, apply_steps
    from fdcore.images import ImageRejected, open_image_file

    try:
        source = open_image_file(os.path.realpath(image_path)).image.convert("RGB")
    except ImageRejected as exc:
        raise DegradeCommandError(f"cannot read {image_path}: {exc.code}: {exc.detail}") from exc
    source.thumbnail((tile, tile), Image.Resampling.LANCZOS)
    pixels = np.asarray(source)
    names = registry.names("degraders", pattern)
    if not names:
        raise DegradeCommandError(f"no registered operator matches {pattern!r}")
    label_width, header = 150, 18
    sheet = Image.new("RGB", (label_width + 6 * (tile + 4), header + len(names) * (tile + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(["original", *(f"level {level}" for level in range(1, 6))]):
        draw.text((label_width + column * (tile + 4) + 4, 3), title, fill=(0, 0, 0))
    for row, name in enumerate(names):
        top = header + row * (tile + 4)
        draw.text((4, top + tile // 2 - 6), name, fill=(0, 0, 0))
        for column in range(6):
            if column == 0:
                out = pixels
            else:
                out, _ = apply_steps(pixels, [Step(name, column / 5, column)], seed, name)
            cell = Image.fromarray(out, "RGB")
            if cell.width > tile or cell.height > tile:
                cell.thumbnail((tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(cell, (label_width + column * (tile + 4), top))
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(sheet_path, _png_bytes(np.asarray(sheet)))
    return len(names)


@click.command("degrade")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="IN_DIR OUT_DIR | IMAGE")
@click.option("--policy", default=None, help="Registered policy name (fdcore list policies) or a YAML/JSON file.")
@click.option("--op", default=None, help="One operator (fdcore list degraders) instead of a policy.")
@click.option("--severity", type=click.IntRange(0, 5), default=None, help="Level 1..5 for --op (default 3).")
@click.option("--strength", type=click.FloatRange(0.0, 1.0), default=None,
              help="Continuous strength in [0, 1] for --op, instead of --severity.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Run seed.")
@click.option("--preserve-alignment", is_flag=True, help="Drop pixel-moving operators from the policy.")
@click.option("--sheet", "sheet", type=click.Path(path_type=Path), default=None,
              help="Write a contact sheet of every operator at levels 1..5 for IMAGE to this PNG.")
@click.option("--tile", type=click.IntRange(16, 1024), default=128, show_default=True, help="Contact sheet tile size.")
@click.option("--filter", "pattern", default=None, help="Contact sheet: only operators matching this pattern.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty OUT_DIR (same-named files are replaced).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(paths, policy, op, severity, strength, seed, preserve_alignment, sheet, tile, pattern, overwrite, quiet):
    """Degrade IN_DIR into OUT_DIR (--policy NAME or --op NAME [--severity N]), or draw a contact sheet.

    \b
    fdcore degrade IN_DIR OUT_DIR --policy ntire2026-test-like --seed 0
    fdcore degrade IN_DIR OUT_DIR --op jpeg --severity 4 --seed 0
    fdcore degrade --sheet sheet.png IMAGE
    """
    if sheet is not None:
        if len(paths) != 1 or policy or op:
            raise DegradeCommandError("--sheet takes exactly one IMAGE and no --policy/--op")
        count = contact_sheet(paths[0], sheet, tile=tile, seed=seed, pattern=pattern)
        click.echo(f"wrote {sheet} ({count} operators x levels 1-5)")
        return
    if len(paths) != 2:
        raise DegradeCommandError("give IN_DIR and OUT_DIR (or --sheet SHEET.png IMAGE)")
    if (policy is None) == (op is None):
        raise DegradeCommandError("give exactly one of --policy NAME and --op NAME")
    if op is None and (severity is not None or strength is not None):
        raise DegradeCommandError("--severity/--strength go with --op; a policy draws its own severities")
    if severity is not None and strength is not None:
        raise DegradeCommandError("give --severity (a level) or --strength, not both")
    if op is not None and preserve_alignment:
        raise DegradeCommandError("--preserve-alignment applies to policies, not to a single --op")
    level = None
    if op is not None:
        if strength is None:
            level = 3 if severity is None else severity
            strength = level / 5
    in_dir, out_dir = paths
    counts = degrade_folder(in_dir, out_dir, policy=policy, op=op, severity=strength, level=level, seed=seed,
                            options={"preserve_alignment": True} if preserve_alignment else None,
                            echo=lambda message: click.echo(message, err=True), overwrite=overwrite,
                            progress=not quiet)
    click.echo(f"wrote {counts['written']} images and {out_dir / CSV_NAME}"
               + (f"; {counts['failed']} failed (see the error rows)" if counts["failed"] else "")
               + (f"; {counts['skipped']} skipped entries" if counts["skipped"] else ""))
    if counts["failed"]:
        sys.exit(1)
