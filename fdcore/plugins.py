"""Plugin discovery: one pluggy manager, entry points in the ``fdcore`` group, built-ins as an ordinary plugin.

Loading is lazy (first registry access) and fault tolerant: a plugin that fails to import, implements a hook
that does not exist, or raises while registering is reported and skipped, unless ``FDCORE_STRICT_PLUGINS=1``.

Environment:
    FDCORE_LOAD_PLUGINS   comma list of distribution or entry-point names to load; empty string loads none.
    FDCORE_STRICT_PLUGINS ``1`` turns every plugin failure into an exception (for plugin authors' CI).
    FDCORE_TRACE_PLUGINS  ``1`` prints every hook call to stderr.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import sys
import traceback
from typing import Any

import pluggy

from fdcore import hookspecs
from fdcore.errors import FdcoreError

ENTRY_POINT_GROUP = "fdcore"

# The core's own implementations, registered after the entry points exactly like any plugin.
DEFAULT_PLUGINS = (
    "fdcore.builtin.aggregators",
    "fdcore.builtin.distillers",
    "fdcore.builtin.degraders",
)


class PluginError(FdcoreError, RuntimeError):
    """A plugin could not be loaded or registered (raised only in strict mode)."""


@dataclasses.dataclass
class PluginFailure:
    plugin: str
    distribution: str | None
    version: str | None
    stage: str
    error: str

    def message(self) -> str:
        where = f"distribution {self.distribution} {self.version}" if self.distribution else "built-in"
        return f"plugin {self.plugin!r} ({where}) failed at {self.stage}: {self.error}"


@dataclasses.dataclass
class PluginRecord:
    plugin: str
    module: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    builtin: bool


_manager: pluggy.PluginManager | None = None
_loaded = False
_records: dict[str, PluginRecord] = {}
_failures: list[PluginFailure] = []
_declared_only: list[dict] = []  # declared but deliberately not loaded (FDCORE_LOAD_PLUGINS)


def strict() -> bool:
    return os.environ.get("FDCORE_STRICT_PLUGINS", "").strip() not in ("", "0", "false", "no")


def _selected() -> set[str] | None:
    value = os.environ.get("FDCORE_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with hookspecs added (plugins are loaded by :func:`load_plugins`)."""
    global _manager
    if _manager is None:
        _manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
        _manager.add_hookspecs(hookspecs)
        if os.environ.get("FDCORE_TRACE_PLUGINS", "").strip() not in ("", "0"):
            _manager.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
            _manager.enable_tracing()
    return _manager


def report_failure(failure: PluginFailure, exc: BaseException | None = None) -> None:
    """Record a plugin failure, warn on stderr, and raise in strict mode."""
    _failures.append(failure)
    if strict():
        raise PluginError(failure.message()) from exc
    print(
        f"fdcore: warning: {failure.message()}; skipped (set FDCORE_STRICT_PLUGINS=1 to make this fatal)",
        file=sys.stderr,
    )


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def unknown_hooks(module: Any) -> list[str]:
    """Hook implementations whose names match no hookspec (a misspelled ``register_expert``, say)."""
    known = {name for name in dir(hookspecs) if name.startswith("register_")}
    unknown = []
    for attribute in dir(module):
        value = getattr(module, attribute, None)
        if callable(value) and hasattr(value, f"{ENTRY_POINT_GROUP}_impl") and attribute not in known:
            unknown.append(attribute)
    return unknown


def _register_module(
    manager: pluggy.PluginManager, module: Any, name: str, distribution: str | None, version: str | None
) -> bool:
    unknown = unknown_hooks(module)
    if unknown:
        valid = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("register_")))
        report_failure(
            PluginFailure(name, distribution, version, "validation",
                          f"unknown hook(s) {', '.join(unknown)}; valid hooks are: {valid}")
        )
        return False
    try:
        manager.register(module, name=name)
    except Exception as exc:  # pluggy validation errors, duplicate plugin names
        report_failure(PluginFailure(name, distribution, version, "validation", format_exception(exc)), exc)
        return False
    return True


def _distributions():
    """Installed distributions (a seam for tests, which substitute fake ones)."""
    return importlib.metadata.distributions()


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, Any]]:
    """Every ``fdcore`` entry point of every installed distribution (one per entry-point name and distribution)."""
    found = []
    seen = set()
    for dist in _distributions():
        for ep in dist.entry_points:
            key = (ep.name, dist.metadata["Name"])
            if ep.group != ENTRY_POINT_GROUP or key in seen:
                continue
            seen.add(key)
            found.append((ep, dist))
    found.sort(key=lambda pair: (pair[0].name, pair[1].metadata["Name"]))
    return found


def reserved(name: str) -> bool:
    """Entry-point names a distribution may not take: the built-ins' and anything in fdcore's namespace."""
    return name in DEFAULT_PLUGINS or name == "fdcore" or name.startswith("fdcore.")


def load_plugins() -> pluggy.PluginManager:
    """Load the built-ins and the installed plugins once; safe to call any number of times.

    The built-ins register first, under names no entry point may take. Two distributions declaring the same
    entry-point name are both refused and reported (which one wins must never depend on discovery order); choose
    one with ``FDCORE_LOAD_PLUGINS=<distribution>`` or uninstall the other. A name in ``FDCORE_LOAD_PLUGINS`` that
    no installed distribution declares is reported too.
    """
    global _loaded
    manager = get_plugin_manager()
    if _loaded:
        return manager
    _loaded = True
    from fdcore import __version__

    for module_name in DEFAULT_PLUGINS:
        if manager.get_plugin(module_name) is not None:
            continue
        module = importlib.import_module(module_name)
        if _register_module(manager, module, module_name, "fdcore", __version__):
            _records[module_name] = PluginRecord(module_name, module_name, "fdcore", __version__, None, builtin=True)
    selected = _selected()
    declared = _entry_points()
    by_name: dict[str, list] = {}
    for ep, dist in declared:
        dist_name = dist.metadata["Name"]
        if selected is not None and ep.name not in selected and dist_name not in selected:
            _declared_only.append({"plugin": ep.name, "distribution": dist_name, "version": dist.version,
                                   "entry_point": f"{ep.name} = {ep.value}",
                                   "status": "not loaded: not selected by FDCORE_LOAD_PLUGINS"})
            continue
        by_name.setdefault(ep.name, []).append((ep, dist))
    if selected is not None:
        known = {ep.name for ep, _ in declared} | {dist.metadata["Name"] for _, dist in declared}
        for name in sorted(selected - known):
            report_failure(PluginFailure(name, None, None, "selection",
                                         f"FDCORE_LOAD_PLUGINS names {name!r}, which no installed distribution "
                                         f"declares; installed: {', '.join(sorted(known)) or 'none'}"))
    for name, entries in sorted(by_name.items()):
        if reserved(name):
            for ep, dist in entries:
                report_failure(PluginFailure(name, dist.metadata["Name"], dist.version, "validation",
                                             f"the entry-point name {name!r} is reserved for fdcore's built-ins; "
                                             "rename the entry point (the convention is the plugin's short name)"))
            continue
        if len(entries) > 1:
            owners = ", ".join(f"{dist.metadata['Name']} {dist.version}" for _, dist in entries)
            for ep, dist in entries:
                report_failure(PluginFailure(name, dist.metadata["Name"], dist.version, "validation",
                                             f"the entry-point name {name!r} is declared by several distributions "
                                             f"({owners}); none of them is loaded. Uninstall all but one, or choose "
                                             "one with FDCORE_LOAD_PLUGINS=<distribution name>"))
            continue
        [(ep, dist)] = entries
        dist_name, version = dist.metadata["Name"], dist.version
        try:
            module = ep.load()
        except BaseException as exc:  # a plugin may raise anything, SystemExit included
            if isinstance(exc, KeyboardInterrupt):
                raise
            report_failure(PluginFailure(ep.name, dist_name, version, "import", format_exception(exc)), exc)
            continue
        if _register_module(manager, module, ep.name, dist_name, version):
            _records[ep.name] = PluginRecord(ep.name, getattr(module, "__name__", str(module)), dist_name,
                                             version, f"{ep.name} = {ep.value}", builtin=False)
    return manager


def record_for(plugin_name: str) -> PluginRecord | None:
    return _records.get(plugin_name)


def provider_of(plugin_name: str) -> str:
    """A human name for whoever registered something: the distribution, or the plugin name if unknown."""
    record = _records.get(plugin_name)
    if record is None:
        return plugin_name
    return record.distribution or plugin_name


def failures() -> list[PluginFailure]:
    """Every plugin that failed to import, validate or register, in the order it happened."""
    load_plugins()
    return list(_failures)


def records() -> dict[str, Any]:
    """The loaded plugins' records by plugin name (distribution, version, module, entry point, built-in or not)."""
    load_plugins()
    return dict(_records)


def declared_only() -> list[dict[str, Any]]:
    """Distributions that declared an fdcore entry point that was not loaded (refused clash, not selected)."""
    return list(_declared_only)


def forget() -> None:
    """Forget every loaded plugin (the registries are cleared by :func:`fdcore.registry.reset`, which calls this)."""
    global _manager, _loaded
    _manager = None
    _loaded = False
    _records.clear()
    _failures.clear()
    _declared_only.clear()
