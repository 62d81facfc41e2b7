"""Lazy module attributes (PEP 562): a package lists public names and the modules defining them, and a name's
module is imported on first access only, so importing the package stays cheap."""

import importlib


def lazy_exports(package_globals: dict, mapping: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a package whose names ``mapping`` maps to their defining modules."""
    package = package_globals["__name__"]

    def __getattr__(name):
        module_name = mapping.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        package_globals[name] = value
        return value

    def __dir__():
        return sorted(set(package_globals) | set(mapping))

    return __getattr__, __dir__
