"""``fdcore data``: inspect labelled training/evaluation data."""

from __future__ import annotations

import sys

import click


@click.group("data")
def command():
    """Inspect labelled data (folders with real/ and fake/, CSV/JSONL manifests, YAML data specs)."""


@command.command("check")
@click.argument("spec", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when there are warnings.")
@click.option("--max-per-class", type=int, default=None,
              help="Check at most N images per class and source, sampled by --seed (default: all).")
@click.option("--seed", type=int, default=None, help="Seed of the --max-per-class sample (default: the spec's seed).")
@click.option("--skip-missing", is_flag=True, help="Skip manifest rows whose file does not exist (counted) instead of failing.")
def check_command(spec, as_json, strict, max_per_class, seed, skip_missing):
    """Per class and source: formats, JPEG quality, subsampling, sizes, EXIF/ICC, file size; warn when one of
    them alone separates real from fake (single-feature AUC > 0.7 or < 0.3).

    SPEC is a folder with real/ and fake/, a manifest, a YAML data spec, or [NAME=]PATH[:WEIGHT] (repeatable).
    """
    from fdcore.cli import echo_json
    from fdcore.data.check import check_data, format_report
    from fdcore.data.spec import resolve_data_spec

    data_spec = resolve_data_spec(list(spec), skip_missing=skip_missing)
    report = check_data(data_spec, max_per_class=max_per_class, seed=seed)
    if as_json:
        echo_json(report)
    else:
        click.echo(format_report(report))
    if strict and report["warnings"]:
        sys.exit(1)


@command.command("split")
@click.argument("spec", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="New folder for train.csv, validation.csv and test.csv.")
@click.option("--test", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
              help="Fraction of the images held out for testing (used for nothing else).")
@click.option("--validation", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Fraction for validation (calibration, thresholds, choosing weights); 0 for none.")
@click.option("--seed", type=int, default=0, show_default=True)
def split_command(spec, out_dir, test, validation, seed):
    """Split labelled data into train/validation/test manifests (stratified by label, generator and source; seeded;
    near-duplicate images kept on one side). Nothing is copied: the manifests point at the files.

    SPEC is a folder with real/ and fake/, a manifest, a YAML data spec, or [NAME=]PATH[:WEIGHT] (repeatable).
    """
    from fdcore.data.split import write_split_manifests

    result = write_split_manifests(list(spec), out_dir, test=test, validation=validation, seed=seed)
    for name, counts in result["counts"].items():
        click.echo(f"{out_dir}/{name}.csv: {counts['images']} images ({counts['fake']} AI-generated)")
