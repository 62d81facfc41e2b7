"""`fdcore demo`: the whole pipeline on an embedded synthetic dataset, in a few minutes on a CPU."""

import click


@click.command("demo")
@click.option("--out", "out_dir", default="fdcore-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where to put data, training runs, ensemble/, predictions/ and report/.")
@click.option("--size", "size_name", default="full", show_default=True, type=click.Choice(["full", "small"]),
              help="'small' is a faster, smaller run (what the tests use).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
def command(out_dir, size_name, seed):
    """Run the pipeline end to end on synthetic data (a demonstration, not a real-world detector)."""
    from fdcore.demo import DEMO_NOTICE, run_demo

    summary = run_demo(out_dir, size_name=size_name, seed=seed, echo=lambda text: click.echo(text, err=False))

    def show(value):
        return "n/a" if value is None else f"{value:.4f}"

    click.echo("")
    click.echo(f"clean ROC AUC  {show(summary['clean_roc_auc'])}   robust ROC AUC {show(summary['robust_roc_auc'])}")
    for name, values in summary["experts"].items():
        click.echo(f"  {name}: clean {show(values['clean_roc_auc'])}, robust {show(values['robust_roc_auc'])}")
    click.echo(f"predictions: {summary['predictions']}")
    click.echo(f"report:      {summary['report']}")
    click.echo(f"ensemble:    {summary['ensemble']}  (use it with fdcore predict --ensemble)")
    click.echo(f"done in {summary['seconds']} s. {DEMO_NOTICE}")
