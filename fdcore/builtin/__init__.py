"""fdcore's own implementations, each module registered as an ordinary plugin (see fdcore.plugins.DEFAULT_PLUGINS)."""
