"""CLI subcommands, one module each, imported only when invoked (see fdcore.cli.SUBCOMMANDS); and the parameter
types they share."""

from __future__ import annotations

import click


class EnsembleParamType(click.ParamType):
    """An ``--ensemble`` value: a local folder (checked as ``local`` says), or ``hf://ORG/NAME[@REVISION]``, which
    :func:`fdcore.hub.resolve_ensemble` turns into its verified snapshot folder in the Hugging Face cache; the
    command then receives that folder. ``hub=False`` refuses Hub references with ``hub_refusal``."""

    name = "ensemble"

    def __init__(self, local: click.ParamType | None = None, hub: bool = True, hub_refusal: str = ""):
        self.local = local or click.Path(path_type=str)
        self.hub = hub
        self.hub_refusal = hub_refusal

    def get_metavar(self, param, ctx=None):
        return "ENSEMBLE"

    def convert(self, value, param, ctx):
        from fdcore.errors import FdcoreError
        from fdcore.hub import is_hub_uri, parse_hub_uri, resolve_ensemble

        if not is_hub_uri(value):
            return self.local.convert(value, param, ctx)
        try:
            if not self.hub:
                ref = parse_hub_uri(value)
                self.fail(self.hub_refusal.format(uri=ref.uri, short=ref.short), param, ctx)
            resolved = resolve_ensemble(value)
        except FdcoreError as exc:
            self.fail(str(exc), param, ctx)
        return self.local.convert(str(resolved), param, ctx)
