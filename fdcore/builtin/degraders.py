"""Built-in degradation operators and policy presets (the NTIRE 2026 operators and the extended library)."""

from __future__ import annotations

import importlib
import importlib.util

from fdcore.hookspecs import hookimpl

# Operator modules, in registration order. Every module exports OPERATORS, a tuple of Degrader classes.
OPERATOR_MODULES = (
    "fdcore.degradations.ntire",
    "fdcore.degradations.ops_blur",
    "fdcore.degradations.ops_noise",
    "fdcore.degradations.ops_compression",
    "fdcore.degradations.ops_color",
    "fdcore.degradations.ops_geometric",
    "fdcore.degradations.ops_environmental",
    "fdcore.degradations.ops_sensor",
    "fdcore.degradations.ops_occlusion",
)
# Presets shipped as YAML in fdcore/degradations/policies/, registered under their file names.
POLICY_PRESETS = ("ntire2026", "featdistill", "ntire2026-test-like", "jpeg-recompress")


def operator_classes() -> list[type]:
    """Every built-in Degrader class. A module that is absent is skipped (the library may ship without some
    categories); a module that exists but fails to import raises, because a silently missing operator would
    change what every policy does."""
    classes = []
    for module_name in OPERATOR_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        operators = getattr(module, "OPERATORS", None)
        if not isinstance(operators, tuple):
            raise TypeError(f"{module_name} must export OPERATORS, a tuple of Degrader classes")
        classes.extend(operators)
    return classes


def preset_spec(name: str) -> dict:
    import yaml
    from importlib import resources

    text = resources.files("fdcore.degradations").joinpath("policies").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@hookimpl
def register_degraders(register):
    for cls in operator_classes():
        register(cls)


@hookimpl
def register_policies(register):
    for name in POLICY_PRESETS:
        spec = preset_spec(name)
        register(name, spec, description=" ".join(str(spec.get("description", "")).split()))


def operator_table_markdown() -> str:
    """The operator table of docs/degradations.md, generated from the registry (the docs test compares them)."""
    from fdcore import registry

    lines = ["| operator | category | NTIRE group | moves pixels | changes size | levels 1..5 | description |",
             "|---|---|---|---|---|---|---|"]
    for name in registry.names("degraders"):
        item = registry.describe("degraders", name)
        levels = item.get("levels")
        shown = ", ".join(f"{value:g}" for value in levels) if levels else ""
        lines.append(f"| `{name}` | {item['category']} | {item.get('group', '')} | "
                     f"{'yes' if item['moves_pixels'] else 'no'} | {'yes' if item['changes_size'] else 'no'} | "
                     f"{shown} | {item['description'].replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


TABLE_BEGIN, TABLE_END = "<!-- operator-table:begin -->", "<!-- operator-table:end -->"


def sync_operator_table(path: str = "docs/degradations.md") -> bool:
    """Rewrite the generated operator table in ``path`` between its markers; returns True when it changed.

    ``python -c "from fdcore.builtin.degraders import sync_operator_table; sync_operator_table()"``
    """
    from pathlib import Path

    document = Path(path).read_text(encoding="utf-8")
    head, _, rest = document.partition(TABLE_BEGIN)
    _, _, tail = rest.partition(TABLE_END)
    updated = f"{head}{TABLE_BEGIN}\n{operator_table_markdown()}\n{TABLE_END}{tail}"
    if updated != document:
        Path(path).write_text(updated, encoding="utf-8")
    return updated != document
