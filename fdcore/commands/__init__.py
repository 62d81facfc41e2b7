"""CLI subcommands, one module each, imported only when invoked (see fdcore.cli.SUBCOMMANDS)."""
