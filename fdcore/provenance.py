"""What produced an output: package versions and the installed plugin set (the one place that collects them)."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Sequence


def package_versions(packages: Sequence[str]) -> dict[str, str]:
    """``{"python": ..., package: version or "not installed"}`` for the named distributions."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def plugin_set(used: dict[str, list[str]] | None = None) -> list[str]:
    """Plugins as sorted ``name==version`` strings (built-ins excluded: they come with fdcore's version).

    With ``used`` (``{kind: [registered names]}``), only the distributions that provide those names: what a result
    depends on, so installing an unrelated plugin does not change it."""
    from fdcore import registry
    from fdcore.registry import plugins_info

    installed = plugins_info(include_builtins=False)
    if used is None:
        return sorted(f"{item['name']}=={item['version']}" for item in installed if "status" not in item)
    providers = {registry.entry(kind, name).provider for kind, names in used.items() for name in names}
    return sorted(f"{item['name']}=={item['version']}" for item in installed if item["name"] in providers)
