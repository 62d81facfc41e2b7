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


def plugin_set() -> list[str]:
    """Installed plugins as sorted ``name==version`` strings (built-ins excluded: they come with fdcore's version)."""
    from fdcore.plugins import plugins_info

    return sorted(f"{item['name']}=={item['version']}" for item in plugins_info(include_builtins=False))
