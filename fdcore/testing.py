"""Helpers for plugin authors' tests (and fdcore's own)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from fdcore import plugins, registry


@contextlib.contextmanager
def plugin_registered(plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` (a module or object with ``@fdcore.hookimpl`` functions) for the duration of a block.

    Example::

        class MyPlugin:
            @fdcore.hookimpl
            def register_aggregators(self, register):
                register(MyAggregator)

        with plugin_registered(MyPlugin()):
            assert "my-rule" in fdcore.list_aggregators()
    """
    manager = plugins.load_plugins()
    name = name or f"test-plugin-{id(plugin)}"
    unknown = plugins._unknown_hooks(plugin)
    if unknown:
        raise plugins.PluginError(f"{name}: unknown hook(s) {', '.join(unknown)}")
    manager.register(plugin, name=name)
    registry.clear()
    try:
        yield plugin
    finally:
        manager.unregister(name=name)
        registry.clear()
