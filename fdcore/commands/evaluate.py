"""`fdcore evaluate` and `fdcore calibrate`."""

from __future__ import annotations

import json
import sys

import click

from fdcore.commands import EnsembleParamType
from fdcore.ensemble import PRECISIONS


def _variant_options(function):
    options = [
        click.option("--suite", default="ntire2026-test-like", show_default=True,
                     help="Degradation policy for the robust set (a registered policy or a YAML file); 'none' skips it."),
        click.option("--copies", default=1, show_default=True, type=click.IntRange(0),
                     help="Degraded copies of every image drawn from the suite."),
        click.option("--sweep", "sweep", default=None,
                     help="Also sweep these operators (comma list, or 'all') over levels 1..5."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
                     help="Seed of every degradation draw (recorded per image)."),
        click.option("--max-images", default=None, type=click.IntRange(1),
                     help="Score a seeded, label-stratified subset of this many images."),
        click.option("--aggregator", default=None, help="Fusion rule (default: the ensemble's)."),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--precision", default=None, type=click.Choice(PRECISIONS),
                     help="Default fp32 on CPU, fp16 on GPU."),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1)),
        click.option("--workers", default=2, show_default=True, type=click.IntRange(0)),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _plan(suite, copies, sweep, seed, clean=True):
    from fdcore import registry
    from fdcore.evaluation import VariantPlan

    operators = ()
    if sweep:
        operators = tuple(registry.names("degraders")) if sweep == "all" else tuple(
            name.strip() for name in sweep.split(",") if name.strip())
        for name in operators:
            registry.get("degraders", name)  # unknown names: an error listing the valid ones
    suite = None if suite in (None, "", "none") else suite
    if suite:
        from fdcore.degradations.api import load_policy

        load_policy(suite)  # fail before any scoring on an unknown policy
    return VariantPlan(clean=clean, suite=suite, copies=copies if suite else 0, sweep_operators=operators, seed=seed)


def _progress(quiet, what):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(unit="img", desc=what, file=sys.stderr, dynamic_ncols=True)


@click.command("evaluate")
@click.option("--ensemble", "ensemble_path", required=True,
              type=EnsembleParamType(click.Path(exists=True, file_okay=False)),
              help="Ensemble directory, fdcore expert directory, FeatDistill release, or hf://ORG/NAME[@REVISION] "
                   "(docs/hub.md).")
@click.option("--data", "data", required=True, multiple=True,
              help="Labelled data: folder with real/ and fake/, CSV/JSONL manifest, hub:ID, disk:PATH or YAML spec.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: metrics.json, records.csv, report.html, report.md and PNG plots.")
@click.option("--weights", default=None, help="Comma list of per-expert weights (weighted / logit-mean rules).")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0),
              help="Bootstrap replicates for the AUC confidence intervals.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Decision threshold when the ensemble has no calibrated one.")
@click.option("--raw", is_flag=True, help="Ignore the ensemble's calibration (score raw fused probabilities).")
@click.option("--json", "as_json", is_flag=True, help="Print the headline metrics as JSON on stdout.")
@_variant_options
def evaluate_command(ensemble_path, data, out_dir, weights, bootstrap, threshold, raw, as_json, suite, copies, sweep,
                     seed, max_images, aggregator, device, precision, batch_size, workers, quiet):
    """Measure an ensemble and each expert on labelled data, clean and degraded; write a report.

    Clean ROC AUC pools the undegraded images; robust ROC AUC pools every degraded image (all degradations,
    generators, real and fake together), as the NTIRE 2026 challenge does.
    """
    from fdcore.evaluation import run_evaluation

    plan = _plan(suite, copies, sweep, seed)
    parsed_weights = [float(w) for w in weights.split(",")] if weights else None
    bar = _progress(quiet, "evaluate")
    try:
        metrics = run_evaluation(ensemble_path, list(data), out_dir, plan, aggregator=aggregator,
                                 weights=parsed_weights, device=device, precision=precision, batch_size=batch_size,
                                 workers=workers, bootstrap=bootstrap, threshold=threshold,
                                 use_calibration=not raw, max_images=max_images, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    headline = {key: metrics.get(key) for key in ("clean_roc_auc", "robust_roc_auc", "clean_roc_auc_ci",
                                                   "robust_roc_auc_ci")}
    headline["experts"] = {name: {k: v.get(k) for k in ("clean_roc_auc", "robust_roc_auc")}
                           for name, v in (metrics.get("experts") or {}).items()}
    headline["out"] = out_dir
    if as_json:
        click.echo(json.dumps(headline, indent=2, sort_keys=True))
        return
    def show(value):
        return "n/a" if value is None else f"{value:.4f}"
    click.echo(f"clean ROC AUC  {show(headline['clean_roc_auc'])}")
    click.echo(f"robust ROC AUC {show(headline['robust_roc_auc'])}")
    for name, values in headline["experts"].items():
        click.echo(f"  {name}: clean {show(values['clean_roc_auc'])}, robust {show(values['robust_roc_auc'])}")
    skipped = metrics["evaluation"]["skipped"]
    if skipped:
        click.echo(f"{len(skipped)} image(s) skipped (see metrics.json evaluation.skipped)")
    click.echo(f"report: {out_dir}/report.html  metrics: {out_dir}/metrics.json")


def _parse_band(ctx, param, value):
    if value is None:
        return None
    try:
        low, high = (float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LOW,HIGH such as 0.4,0.6, got {value!r}") from None
    if not 0.0 <= low < high <= 1.0:
        raise click.BadParameter(f"expected 0 <= LOW < HIGH <= 1, got {value!r}")
    return low, high


@click.command("calibrate")
@click.option("--ensemble", "ensemble_path", required=True,
              type=EnsembleParamType(click.Path(exists=True, file_okay=False), hub=False, hub_refusal=(
                  "{uri}: calibrate writes calibration.json into the ensemble folder, and a Hub snapshot in the "
                  "cache is read-only; copy it first with `fdcore ensemble pull {short} --to DIR`, calibrate DIR, "
                  "then push DIR")),
              help="fdcore ensemble directory; calibration.json is written into it.")
@click.option("--data", "data", required=True, multiple=True,
              help="Labelled VALIDATION data (never the test set).")
@click.option("--method", default="temperature", show_default=True,
              type=click.Choice(["temperature", "isotonic"]))
@click.option("--target-fpr", default=0.01, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Choose the decision threshold whose validation false-positive rate is at most this.")
@click.option("--inconclusive", "inconclusive", default=None, metavar="LOW,HIGH", callback=_parse_band,
              help="Calibrated scores in [LOW, HIGH) are called 'inconclusive' instead of ai/real (the band must "
                   "contain the chosen threshold); predict and serve then report three decisions.")
@click.option("--clean-only", is_flag=True, help="Fit on clean validation images only (default: clean + suite).")
@_variant_options
def calibrate_command(ensemble_path, data, method, target_fpr, inconclusive, clean_only, suite, copies, sweep, seed,
                      max_images, aggregator, device, precision, batch_size, workers, quiet):
    """Fit temperature (or isotonic) calibration and a threshold at a target FPR on validation data, and store them
    with the ensemble; `fdcore predict` and `fdcore evaluate` then use them."""
    from fdcore.evaluation import run_calibration

    plan = _plan(None if clean_only else suite, copies, sweep, seed)
    bar = _progress(quiet, "calibrate")
    try:
        calibration = run_calibration(ensemble_path, list(data), plan, method=method, target_fpr=target_fpr,
                                      inconclusive=inconclusive,
                                      aggregator=aggregator, device=device, precision=precision,
                                      batch_size=batch_size, workers=workers, max_images=max_images,
                                      progress=bar)
    finally:
        if bar is not None:
            bar.close()
    fitted = calibration.fitted_on
    click.echo(f"{method} calibration on {fitted.get('n')} validation scores: ECE {fitted.get('ece_before'):.4f} -> "
               f"{fitted.get('ece_after'):.4f}")
    if calibration.threshold:
        t = calibration.threshold
        click.echo(f"threshold {t['value']:.6f}: validation FPR {t['validation_fpr']:.4f} (target {target_fpr}), "
                   f"TPR {t['validation_tpr']:.4f}")
        if t.get("inconclusive"):
            low, high = t["inconclusive"]
            click.echo(f"inconclusive band [{low:g}, {high:g}): {t['inconclusive_share']:.1%} of the validation "
                       "scores fall in it")
    click.echo(f"stored in {ensemble_path}/calibration.json")
