"""Lazy public names of a package: a module ``__getattr__`` that imports a name's
module on its first access, so importing the package imports nothing else."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    namespace: dict[str, Any], table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package whose ``globals()`` is ``namespace``.

    Args:
        namespace: The package's ``globals()`` (a loaded name is cached there).
        table: Public name -> the module that defines it.
    """
    package = namespace["__name__"]

    def get(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted(namespace["__all__"])

    return get, names
