"""``fdcore ensemble``: assemble trained experts into an ensemble directory, and inspect one.

    fdcore ensemble create OUT --expert [NAME=]DIR [--expert ...] [--weight W ...] [--aggregator mean]
    fdcore ensemble info DIR [--json]
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group("ensemble")
def command():
    """Assemble trained experts into an ensemble directory; inspect and verify one."""


def _expert_argument(value: str):
    """``NAME=DIR`` or ``DIR`` (named after its registered expert)."""
    name, separator, directory = value.partition("=")
    if separator and name and "/" not in name and directory:
        return name, directory
    return value


@command.command("create")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--expert", "experts", multiple=True, required=True, metavar="[NAME=]DIR",
              help="A trained expert directory (a run's OUTPUT_DIR/expert), optionally named; repeatable, in "
                   "ensemble order. Unnamed members take their expert's name (npr, clip...).")
@click.option("--weight", "weights", multiple=True, type=click.FloatRange(min=0), metavar="W",
              help="One weight per --expert, in the same order (default 1 each); used by weighted rules.")
@click.option("--aggregator", default="mean", show_default=True,
              help="The ensemble's default fusion rule (fdcore list aggregators).")
def create_command(out, experts, weights, aggregator):
    """Create the ensemble directory OUT from trained experts (any plugins, mixed preprocessing).

    Every expert file is copied into OUT and checked against its SHA-256 manifest, then loaded once; OUT holds no
    reference outside itself and appears complete or not at all. An existing OUT is refused.
    """
    from fdcore.ensemble_io import create_ensemble, load_ensemble

    create_ensemble(out, [_expert_argument(value) for value in experts], weights=list(weights) or None,
                    aggregator=aggregator, card={"made_by": "fdcore ensemble create"})
    ensemble = load_ensemble(out, device="cpu")
    click.echo(f"wrote ensemble {out}: {len(ensemble.members)} experts ({', '.join(ensemble.names)}), aggregator "
               f"{aggregator}, identity {ensemble.identity[:16]}…")
    click.echo(f"next: fdcore calibrate --ensemble {out} --data VALIDATION, then fdcore evaluate / fdcore predict")


@command.command("info")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def info_command(ctx, directory, as_json):
    """Summarise an ensemble (members, preprocessing, weights, calibration) and verify every file."""
    from fdcore.commands.expert import info_command as expert_info_command

    ctx.invoke(expert_info_command, directory=directory, as_json=as_json)
