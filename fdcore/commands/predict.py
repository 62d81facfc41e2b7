"""``fdcore predict IMAGES --ensemble ENSEMBLE --out OUT_DIR``: score a folder of images or a manifest of paths and
URLs (see docs/predict.md).

Exit status: 0 every candidate image was scored; 3 partial (some files skipped, listed in OUT_DIR/errors.csv);
2 user error (bad option, locked or mismatched output folder, unusable ensemble, no image at all); 130 / 143 stopped by
Ctrl-C (SIGINT) / SIGTERM after saving what was scored (rerun to continue).

Distributed: ``accelerate launch -m fdcore predict ...`` or ``torchrun --nproc_per_node N -m fdcore predict ...``.
"""

from __future__ import annotations

import json

import click

from fdcore.commands import EnsembleParamType
from fdcore.ensemble import PRECISIONS
from fdcore.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from fdcore.remote import DEFAULT_MAX_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S


def _parse_weights(ctx, param, value):
    if value is None:
        return None
    try:
        weights = [float(item) for item in value.split(",") if item.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers such as 1,1,2,2, got {value!r}") from exc
    if not weights:
        raise click.BadParameter("expected at least one weight")
    return weights


@click.command("predict")
@click.argument("images", type=click.Path(file_okay=True, dir_okay=True, path_type=str))
@click.option("--ensemble", "ensemble", required=True, type=EnsembleParamType(),
              help="Ensemble folder (ensemble.json), one fdcore expert folder, a FeatDistill release folder, or "
                   "hf://ORG/NAME[@REVISION] (an ensemble on the Hugging Face Hub, verified; docs/hub.md).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder: predictions.csv, errors.csv, image_info.csv, predictions.meta.json.")
@click.option("--aggregator", default=None,
              help="Fusion rule, any registered aggregator (`fdcore list aggregators`); default: the ensemble's.")
@click.option("--weights", callback=_parse_weights, default=None,
              help="Comma-separated per-expert weights, in ensemble order (for 'weighted' / 'logit-mean').")
@click.option("--per-expert", is_flag=True, help="Add p_<expert> columns to predictions.csv.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader processes decoding and resizing images (0 = in the main process).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Expert weights and inputs dtype [default: fp32 on CPU, fp16 on GPU]; int8 (CPU): dynamically "
                   "quantised linear layers, the fastest CPU option without AVX-512 BF16.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Score everything again; the old results stay readable until the new run completes.")
@click.option("--quiet", is_flag=True, help="No progress bar, no summary line on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@click.option("--save-every", type=click.IntRange(min=1), default=8, show_default=True,
              help="fsync the work log every N batches (each batch reaches the OS immediately regardless).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images whose header declares more pixels (decompression bombs), before decoding.")
@click.option("--max-aspect-ratio", type=click.FloatRange(min=1.0), default=DEFAULT_MAX_ASPECT_RATIO,
              show_default=True, help="Refuse images more elongated than this (long side / short side).")
@click.option("--skip-hash-check", is_flag=True,
              help="Load a FeatDistill release without manifest.json (identity falls back to size + mtime).")
@click.option("--excel-safe", is_flag=True,
              help="Prefix text cells starting with = + - @ (tab, CR) with ' so spreadsheets do not run them as "
                   "formulas; such names then no longer match their files.")
@click.option("--path-column", default=None,
              help="Manifest column holding each image's path or URL [default: path, uri or url].")
@click.option("--id-column", default=None,
              help="Manifest column holding each item's key (image_name in the outputs) [default: id when present, "
                   "else the path or URL as written].")
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_BYTES, show_default=True,
              help="Refuse remote objects larger than this (checked before downloading, enforced while reading).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.001), default=DEFAULT_TIMEOUT_S,
              show_default=True,
              help="Seconds allowed for each http(s) request (the size check, then the download), end to end.")
@click.option("--retries", type=click.IntRange(min=0), default=DEFAULT_RETRIES, show_default=True,
              help="Retries (exponential backoff from 0.5 s) after a transient network error: unreachable, timeout, "
                   "HTTP 408/425/429/5xx.")
@click.option("--allow-private-urls", is_flag=True, envvar="FDCORE_ALLOW_PRIVATE_URLS",
              help="Also fetch http(s) URLs whose host resolves to a loopback, private or link-local address "
                   "(refused by default: a manifest could aim at internal services). Env: FDCORE_ALLOW_PRIVATE_URLS=1.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process (or torchrun/accelerate ranks); ray: Ray Data actors on a cluster "
                   "(docs/predict.md \"Scale out with Ray\").")
@click.option("--ray-address", default=None,
              help="Ray cluster to join (ray://HOST:10001 or auto) [default: RAY_ADDRESS, else a local Ray].")
@click.option("--num-actors", type=click.IntRange(min=1), default=None,
              help="Ray actors, each holding one copy of the ensemble [default: 1 per GPU, else 1].")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs reserved by each Ray actor (fractions share a GPU).")
@click.pass_context
def command(ctx, images, ensemble, out, aggregator, weights, per_expert, batch_size, workers, precision, device,
            overwrite, quiet, as_json, save_every, max_pixels, max_aspect_ratio, skip_hash_check, excel_safe,
            path_column, id_column, max_bytes, timeout_s, retries, allow_private_urls, engine, ray_address,
            num_actors, gpus_per_actor):
    """Score every image under the folder IMAGES, or named by the manifest IMAGES (CSV, JSONL, Parquet or a text
    file of paths and URLs), with an ensemble; resumable, fault-tolerant, deterministic."""
    from fdcore.predict import PredictOptions, run_predict
    from fdcore.predict.runner import PredictInterrupted, stop_cleanly_on_sigterm

    options = PredictOptions(images=images, ensemble=ensemble, out=out, aggregator=aggregator, weights=weights,
                             per_expert=per_expert, batch_size=batch_size, workers=workers, precision=precision,
                             device=device, overwrite=overwrite, quiet=quiet, save_every=save_every,
                             max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio,
                             skip_hash_check=skip_hash_check, excel_safe=excel_safe, path_column=path_column,
                             id_column=id_column, max_bytes=max_bytes, timeout_s=timeout_s, retries=retries,
                             allow_private_urls=allow_private_urls)
    if engine != "ray" and (ray_address or num_actors or gpus_per_actor):
        raise click.UsageError("--ray-address, --num-actors and --gpus-per-actor need --engine ray")
    try:
        with stop_cleanly_on_sigterm():
            if engine == "ray":
                from fdcore.integrations.ray import RayEngine, run_predict_ray

                summary = run_predict_ray(options, RayEngine(address=ray_address, num_actors=num_actors,
                                                             gpus_per_actor=gpus_per_actor))
            else:
                summary = run_predict(options)
    except PredictInterrupted as exc:
        click.echo(f"fdcore predict: {exc}", err=True)
        ctx.exit(exc.exit_code)
    if summary is None:  # a non-zero rank of a distributed run: rank 0 reports
        return
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    ctx.exit(summary.exit_code)
