"""Package faces whose names are imported on first use (PEP 562).

A package lists each public name's module (``WHERE``) and takes its module ``__getattr__`` and ``__dir__`` from
:func:`lazy_names`: ``from package import X`` and ``package.X`` work as before, but importing the package imports
none of those modules (issue 15: ``engine`` alone cost 0.29 s of the TUI's start). A name is imported once, then kept
in the package's namespace as a plain attribute.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, where: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package ``package`` whose globals are ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # once: later reads are plain module attributes
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
