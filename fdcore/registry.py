"""Name -> class registries filled by the ``register_*`` hooks, with provenance.

Each hook implementation is called on its own, so fdcore knows which plugin registered what, and a plugin
that raises while registering is reported and skipped like one that fails to import.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import re
from typing import Any, Callable

from fdcore import plugins
from fdcore.errors import FdcoreError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class UnknownNameError(FdcoreError, KeyError):
    """A name that no plugin registered; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(name)

    def __str__(self) -> str:
        listing = ", ".join(self.valid) if self.valid else "(none registered)"
        return f"unknown {self.kind} {self.name!r}{did_you_mean(self.name, self.valid)}; valid {self.kind}s: {listing}"


def did_you_mean(name: str, valid: list[str]) -> str:
    """``"; did you mean 'mean' or 'median'?"`` for the valid names closest to ``name`` (typos, case, a missing
    dash), or ``""`` when none is close."""
    import difflib

    lowered = {candidate.lower(): candidate for candidate in valid}
    close = [lowered[match] for match in difflib.get_close_matches(str(name).lower(), list(lowered), n=3, cutoff=0.6)]
    return f"; did you mean {' or '.join(repr(match) for match in close)}?" if close else ""


class RegistrationError(FdcoreError, ValueError):
    """A plugin tried to register something invalid or a name that is already taken."""


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    provider: str
    plugin: str
    description: str
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of registrable thing: which hook fills it, and how to validate an entry."""

    plural: str
    singular: str
    hook: str
    base: str | None  # "module:Class" the registered classes must subclass; imported only when needed


KINDS = {
    "experts": Kind("experts", "expert", "register_experts", "fdcore.interfaces:Expert"),
    "degraders": Kind("degraders", "degrader", "register_degraders", "fdcore.interfaces:Degrader"),
    "distillers": Kind("distillers", "distiller", "register_distillers", "fdcore.interfaces:Distiller"),
    "aggregators": Kind("aggregators", "aggregator", "register_aggregators", "fdcore.interfaces:Aggregator"),
    "policies": Kind("policies", "policy", "register_policies", None),
}

_tables: dict[str, dict[str, Entry]] = {}


def _base_class(kind: Kind) -> type | None:
    if kind.base is None:
        return None
    module_name, _, attribute = kind.base.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _make_register(kind: Kind, table: dict[str, Entry], plugin_name: str) -> Callable:
    provider = plugins.provider_of(plugin_name)

    def add(name: str, obj: Any, description: str, extra: dict) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise RegistrationError(
                f"{provider} registered {kind.singular} name {name!r}: names must be lower case letters, digits, "
                "'-', '_' or '.'"
            )
        if name in table:
            raise RegistrationError(
                f"{kind.singular} name {name!r} from {provider} is already registered by {table[name].provider}; "
                f"the one from {provider} was refused (uninstall one of them or rename it)"
            )
        table[name] = Entry(name, obj, provider, plugin_name, description, extra)

    if kind.base is None:  # policies are data: register(name, spec, description="")
        def register_policy(name, spec, description=""):
            if not (isinstance(spec, dict) or callable(spec)):
                raise RegistrationError(f"{provider} registered policy {name!r} with a {type(spec).__name__}; "
                                        "a policy is a dict (or a callable returning one)")
            add(name, spec, description, {})

        return register_policy

    base = _base_class(kind)

    def register(cls):
        if not isinstance(cls, type):
            raise RegistrationError(
                f"{provider} registered an instance of {type(cls).__name__} as a {kind.singular}; "
                "register the class itself"
            )
        if not issubclass(cls, base):
            raise RegistrationError(f"{provider} registered {cls.__qualname__}, which is not a subclass of "
                                    f"fdcore.{base.__name__}")
        docstring_lines = (cls.__doc__ or "").strip().splitlines()
        add(cls.name, cls, cls.description or (docstring_lines[0] if docstring_lines else ""), {})

    return register


def _build(kind: Kind) -> dict[str, Entry]:
    manager = plugins.load_plugins()
    table: dict[str, Entry] = {}
    hook_caller = getattr(manager.hook, kind.hook)
    # Built-ins first so that a plugin reusing a built-in name is the one refused.
    def builtin(name: str) -> bool:
        record = plugins.record_for(name)
        return bool(record and record.builtin)

    impls = sorted(hook_caller.get_hookimpls(), key=lambda impl: (not builtin(impl.plugin_name), impl.plugin_name))
    for impl in impls:
        record = plugins.record_for(impl.plugin_name)
        staged: dict[str, Entry] = dict(table)
        try:
            impl.function(register=_make_register(kind, staged, impl.plugin_name))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            plugins.report_failure(plugins.PluginFailure(
                impl.plugin_name,
                record.distribution if record else None,
                record.version if record else None,
                kind.hook,
                plugins.format_exception(exc),
            ), exc)
            continue  # all or nothing: a plugin that failed half-way registers none of its names
        table = staged
    return table


def table(kind_name: str) -> dict[str, Entry]:
    if kind_name not in KINDS:
        raise UnknownNameError("kind", kind_name, sorted(KINDS))
    if kind_name not in _tables:
        _tables[kind_name] = _build(KINDS[kind_name])
    return _tables[kind_name]


def load_all() -> None:
    for kind_name in KINDS:
        table(kind_name)


def clear() -> None:
    _tables.clear()


def get(kind_name: str, name: str) -> Any:
    """The registered class (or policy spec) called ``name``; :class:`UnknownNameError` lists the valid ones."""
    entries = table(kind_name)
    if name not in entries:
        raise UnknownNameError(KINDS[kind_name].singular, name, sorted(entries))
    return entries[name].obj


def entry(kind_name: str, name: str) -> Entry:
    entries = table(kind_name)
    if name not in entries:
        raise UnknownNameError(KINDS[kind_name].singular, name, sorted(entries))
    return entries[name]


def names(kind_name: str, pattern: str | None = None) -> list[str]:
    """Registered names, optionally filtered by an fnmatch pattern (``"*blur*"``)."""
    found = sorted(table(kind_name))
    if pattern:
        found = [n for n in found if fnmatch.fnmatch(n, pattern)]
    return found


def registered_by(plugin_name: str) -> dict[str, list[str]]:
    """What one plugin registered, per kind (only kinds already built)."""
    result = {}
    for kind_name, entries in _tables.items():
        mine = sorted(e.name for e in entries.values() if e.plugin == plugin_name)
        if mine:
            result[kind_name] = mine
    return result


def describe(kind_name: str, name: str) -> dict[str, Any]:
    """JSON-ready description: name, provider, description, plus the class's own metadata."""
    item = entry(kind_name, name)
    described = {"name": item.name, "provider": item.provider, "plugin": item.plugin,
                 "description": item.description}
    describe_class = getattr(item.obj, "describe", None)
    if isinstance(item.obj, type) and callable(describe_class):
        for key, value in describe_class().items():
            described.setdefault(key, value)
    elif isinstance(item.obj, dict):
        described["spec"] = item.obj
    return described


# Accessors by kind (exported from ``fdcore``). Classes are looked up here; instances are built on request.

def list_experts(pattern: str | None = None) -> list[str]:
    return names("experts", pattern)


def list_degraders(pattern: str | None = None) -> list[str]:
    return names("degraders", pattern)


def list_distillers(pattern: str | None = None) -> list[str]:
    return names("distillers", pattern)


def list_aggregators(pattern: str | None = None) -> list[str]:
    return names("aggregators", pattern)


def list_policies(pattern: str | None = None) -> list[str]:
    return names("policies", pattern)


def get_expert_class(name: str) -> type:
    return get("experts", name)


def get_expert(name: str, **config: Any):
    """A new expert instance: ``get_expert("clip", backbone="path/or/hub-id")``."""
    return get("experts", name)(**config)


def get_degrader(name: str):
    return get("degraders", name)()


def get_distiller(name: str, teacher=None, **options: Any):
    return get("distillers", name)(teacher, **options)


def get_aggregator(name: str):
    return get("aggregators", name)()


def plugins_info(include_builtins: bool = False) -> list[dict[str, Any]]:
    """Installed plugins (distribution, version, hooks) and the ones that failed, as JSON-ready dicts."""
    load_all()  # registration-time failures are part of the picture
    manager = plugins.load_plugins()
    failures = plugins.failures()
    info = []
    for name, record in sorted(plugins.records().items(), key=lambda item: (item[1].builtin, item[0])):
        if record.builtin and not include_builtins:
            continue
        plugin = manager.get_plugin(name)
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        info.append({
            "name": record.distribution or name,
            "plugin": name,
            "version": record.version,
            "module": record.module,
            "entry_point": record.entry_point,
            "builtin": record.builtin,
            "hooks": hooks,
            "registered": registered_by(name),
            "errors": [f.message() for f in failures if f.plugin == name],
        })
    listed = {(entry["plugin"], entry["name"]) for entry in info}
    for failure in failures:
        key = (failure.plugin, failure.distribution or failure.plugin)
        if key in listed:
            continue
        listed.add(key)
        info.append({
            "name": failure.distribution or failure.plugin,
            "plugin": failure.plugin,
            "version": failure.version,
            "module": None,
            "entry_point": None,
            "builtin": failure.distribution == "fdcore",
            "hooks": [],
            "registered": {},
            "errors": [f.message() for f in failures if f.plugin == failure.plugin
                       and (f.distribution or f.plugin) == key[1]],
        })
    for entry in plugins.declared_only():
        info.append({"name": entry["distribution"], "plugin": entry["plugin"], "version": entry["version"],
                     "module": None, "entry_point": entry["entry_point"], "builtin": False, "hooks": [],
                     "registered": {}, "errors": [], "status": entry["status"]})
    return info


def reset() -> None:
    """Forget every loaded plugin and registry (tests, or after changing FDCORE_* variables)."""
    plugins.forget()
    clear()
