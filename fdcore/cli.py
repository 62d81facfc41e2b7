"""The ``fdcore`` command line. Subcommands live in their own modules and are imported only when invoked,
so ``fdcore --help`` imports neither torch nor any plugin."""

from __future__ import annotations

import importlib
import json
import os
import sys

import click

from fdcore import __version__
from fdcore.errors import FdcoreError

# name -> ("module:command", one-line help). New commands slot in here.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("fdcore.cli:plugins_command", "List installed plugins, their versions, hooks and load errors."),
    "list": ("fdcore.cli:list_command", "List registered experts, degraders, distillers, aggregators or policies."),
    "predict": ("fdcore.commands.predict:command", "Score a folder of images with an ensemble (resumable, fault-tolerant)."),
    "demo": ("fdcore.commands.demo:command", "Run the whole pipeline on synthetic data (a demonstration, minutes on CPU)."),
    "train": ("fdcore.commands.train:command", "Train one expert: stage 1 BCE, stage 2 self-distillation."),
    "evaluate": ("fdcore.commands.evaluate:evaluate_command",
                 "Clean and robust ROC AUC, breakdowns, calibration metrics and an HTML report."),
    "calibrate": ("fdcore.commands.evaluate:calibrate_command",
                  "Fit calibration and a threshold at a target FPR on validation data; store with the ensemble."),
    "data": ("fdcore.commands.data:command", "Inspect labelled data: bias check of formats, JPEG quality, sizes, EXIF."),
    "expert": ("fdcore.commands.expert:command", "Inspect expert/ensemble directories; import FeatDistill release files."),
    "ensemble": ("fdcore.commands.ensemble:command",
                 "Assemble trained experts into an ensemble; inspect one; push it to / pull it from the Hub."),
    "serve": ("fdcore.commands.serve:command", "Serve an ensemble over HTTP (dynamic batching, auth, metrics, KServe v2)."),
    "degrade": ("fdcore.commands.degrade:command", "Degrade a folder with a policy or one operator; contact sheet of all operators."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        target, _ = SUBCOMMANDS[name]
        module_name, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx, formatter):
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="fdcore")
@click.option("--no-plugins", is_flag=True, help="Load no installed plugins (built-ins only); same as FDCORE_LOAD_PLUGINS=''.")
def cli(no_plugins):
    """fdcore: robust AI-generated image detection with pluggable experts, degradations, distillers and fusion."""
    if no_plugins:
        os.environ["FDCORE_LOAD_PLUGINS"] = ""


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def echo_table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(cell[i]) for cell in cells)) for i, column in enumerate(columns)]
    click.echo("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths)).rstrip())
    for cell in cells:
        click.echo("  ".join(value.ljust(width) for value, width in zip(cell, widths)).rstrip())


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "include_builtins", is_flag=True, help="Include fdcore's built-in plugins.")
def plugins_command(as_json, include_builtins):
    """List installed plugins, their versions, hooks and load errors."""
    from fdcore.registry import plugins_info

    info = plugins_info(include_builtins=include_builtins)
    if as_json:
        echo_json(info)
        return
    rows = []
    for item in info:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in item["registered"].items())
        rows.append({"distribution": item["name"], "version": item["version"] or "",
                     "hooks": ",".join(item["hooks"]), "registered": registered,
                     "status": ("error: " + " | ".join(item["errors"]) if item["errors"]
                                else item.get("status", "ok"))})
    echo_table(rows, ["distribution", "version", "hooks", "registered", "status"])


_KIND_COLUMNS = {
    "experts": ["input_size", "parameters"],
    "degraders": ["category", "moves_pixels", "changes_size"],
    "distillers": ["needs_alignment"],
    "aggregators": ["uses_weights"],
    "policies": [],
}


@click.command("list")
@click.argument("kind", type=click.Choice(sorted(_KIND_COLUMNS)))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option("--filter", "pattern", default=None, help="Only names matching this fnmatch pattern, e.g. '*blur*'.")
def list_command(kind, as_json, pattern):
    """List registered experts, degraders, distillers, aggregators or policies."""
    from fdcore import registry

    described = [registry.describe(kind, name) for name in registry.names(kind, pattern)]
    if as_json:
        echo_json(described)
        return
    echo_table(described, ["name", *_KIND_COLUMNS[kind], "provider", "description"])


def main(argv=None) -> None:
    """Console-script entry point: user errors become one clear message and exit status 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="fdcore", standalone_mode=True)
    except FdcoreError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
