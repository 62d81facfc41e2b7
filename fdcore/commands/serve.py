"""``fdcore serve --ensemble ENSEMBLE``: the HTTP scoring service (docs/serve.md).

Exit status: 0 after a clean stop (SIGTERM or Ctrl-C: stop accepting, drain in-flight requests); 2 for a bad option
or an ensemble that cannot be loaded.
"""

from __future__ import annotations

import click

from fdcore.commands import EnsembleParamType
from fdcore.ensemble import PRECISIONS
from fdcore.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS


@click.command("serve")
@click.option("--ensemble", required=True, type=EnsembleParamType(),
              help="Ensemble folder (ensemble.json), one fdcore expert folder, a FeatDistill release folder, or "
                   "hf://ORG/NAME[@REVISION] (docs/hub.md).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --api-key-file (or --insecure-no-auth).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most images the experts score together.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="How long the first waiting image may wait for others to fill a batch.")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most images in the service at once (decoding, queued, scoring); beyond it requests get 429.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=20.0, show_default=True,
              help="Largest request body; larger ones get 413 before being read.")
@click.option("--max-images-per-request", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-inflight-mb", type=click.FloatRange(min=1), default=256.0, show_default=True,
              help="Request bytes held at once across all requests; beyond it requests get 429.")
@click.option("--request-timeout-s", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Per-request limit (body, decoding, queue and scoring); answered 504 when exceeded.")
@click.option("--decode-workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes decoding and resizing uploads (the experts run in one batching thread).")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Bearer keys, one per line; every route but the health probes then requires one.")
@click.option("--insecure-no-auth", is_flag=True,
              help="Allow binding a non-loopback address without keys (an authenticating proxy in front).")
@click.option("--aggregator", default=None,
              help="Per-image fusion rule (`fdcore list aggregators`); default: the ensemble's.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Expert dtype [default: fp32 on CPU, fp16 on GPU]; int8 on CPUs without AVX-512 BF16.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--model-name", default=None, help="Name in the v2 routes [default: the ensemble folder's name].")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images whose header declares more pixels, before decoding (as predict).")
@click.option("--max-aspect-ratio", type=click.FloatRange(min=1.0), default=DEFAULT_MAX_ASPECT_RATIO,
              show_default=True)
@click.option("--access-log", default="-", show_default=True,
              help="Where the JSON access log goes: '-' for stderr, a file path, or '' for none.")
def command(**values):
    """Serve an ensemble over HTTP: POST /v1/score, the KServe v2 routes, /metrics (docs/serve.md)."""
    from fdcore.serve import ServeOptions, run_server

    raise SystemExit(run_server(ServeOptions(**values)))
