"""``fdcore ensemble``: assemble trained experts into an ensemble directory, and inspect one.

    fdcore ensemble create OUT --expert [NAME=]DIR [--expert ...] [--weight W ...] [--aggregator mean]
    fdcore ensemble info DIR [--json]
    fdcore ensemble push DIR ORG/NAME [--private] [--revision BRANCH] [--license ID] [--evaluation REPORT_DIR]
    fdcore ensemble pull ORG/NAME[@REVISION] [--to DIR]
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group("ensemble")
def command():
    """Assemble trained experts into an ensemble directory; inspect and verify one; share it on the Hugging Face
    Hub."""


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


@command.command("push")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("repo", metavar="ORG/NAME")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--revision", default=None, metavar="BRANCH",
              help="Push to this branch (created from the default branch when missing) [default: the default "
                   "branch].")
@click.option("--license", "license_", default=None, metavar="ID",
              help="Licence identifier in the model card [default: the ensemble card's 'license', else apache-2.0].")
@click.option("--evaluation", type=click.Path(exists=True, path_type=Path), default=None, metavar="REPORT_DIR",
              help="An `fdcore evaluate` --out folder measured on this very ensemble: its metrics go into the card.")
@click.option("--message", default=None, help="Commit message [default: names the ensemble identity].")
@click.option("--dry-run", is_flag=True, help="Verify, write the card and list the files; upload nothing.")
def push_command(directory, repo, private, revision, license_, evaluation, message, dry_run):
    """Upload the ensemble DIRECTORY to the Hub repository ORG/NAME, with a model card (README.md) and
    hub-manifest.json (size and SHA-256 of every file).

    Every file is verified and loaded once before anything is uploaded; the repository (at that branch) then holds
    exactly the ensemble, its card and its manifest. Log in first with `hf auth login` (or set HF_TOKEN).
    """
    from fdcore.hub import push_ensemble

    pushed = push_ensemble(directory, repo, private=private, revision=revision, license=license_,
                           evaluation=evaluation, commit_message=message, dry_run=dry_run)
    if dry_run:
        click.echo(pushed.card)
        click.echo(f"dry run: would upload {len(pushed.files)} files to {pushed.repo_id}"
                   f"{' (branch ' + revision + ')' if revision else ''}: {', '.join(pushed.files)}")
        click.echo(f"ensemble identity {pushed.identity}")
        return
    pin = f"@{pushed.commit}" if pushed.commit else (f"@{revision}" if revision else "")
    click.echo(f"pushed ensemble {pushed.identity[:16]}… to {pushed.repo_id}"
               f"{' (branch ' + revision + ')' if revision else ''}: {len(pushed.files)} files, {pushed.url}")
    click.echo(f"use it: fdcore predict IMAGES --ensemble hf://{pushed.repo_id}{pin} --out OUT_DIR")


@command.command("pull")
@click.argument("reference", metavar="ORG/NAME[@REVISION]")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Also copy the ensemble into this new folder (plain files, verified again), e.g. to calibrate it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pull_command(reference, to, as_json):
    """Fetch an ensemble from the Hub into the Hugging Face cache, verify every file, and print where it is.

    REFERENCE is ORG/NAME or hf://ORG/NAME, optionally @REVISION (branch, tag or commit). Afterwards
    `--ensemble hf://ORG/NAME` works offline (HF_HUB_OFFLINE=1) from the cache.
    """
    from fdcore.cli import echo_json
    from fdcore.hub import pull_ensemble

    pulled = pull_ensemble(reference, to=to)
    if as_json:
        echo_json({"uri": pulled.ref.uri, "commit": pulled.commit, "path": str(pulled.path),
                   "identity": pulled.identity, "files": pulled.files, "copied_to": str(to) if to else None})
        return
    click.echo(f"{pulled.ref.uri}: commit {pulled.commit}, ensemble identity {pulled.identity}")
    click.echo(f"verified {len(pulled.files)} files against hub-manifest.json")
    click.echo(f"cached at {pulled.path}")
    if to is not None:
        click.echo(f"copied to {to} (a local ensemble folder: fdcore calibrate --ensemble {to} ...)")
