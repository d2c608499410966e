"""A registry of live transport factories by namespace group (ENGINE-SPEC §11.5).

``register`` rejects empty (after trimming) and duplicate groups, ``resolve`` looks a group up
exactly, ``list`` gives every factory in registration order, and ``router()`` builds the
``LiveIoRouter`` that routes calls by longest matching group.
"""

from __future__ import annotations

import builtins

from engine.errors import IoError
from engine.live_io_router import LiveIoRouter, normalize_group
from engine.transport import LiveTransportFactory

__all__ = ["LiveIoRegistry"]


class LiveIoRegistry:
    def __init__(self) -> None:
        self._factories: dict[str, LiveTransportFactory] = {}

    def register(self, factory: LiveTransportFactory) -> None:
        """Add ``factory`` under its group; ``io_namespace_group_empty`` / ``_duplicate`` on a bad group."""
        group = normalize_group(factory.namespace_group)
        if group in self._factories:
            raise IoError.other(
                "io_namespace_group_duplicate",
                f"duplicate transport namespace group {group!r}: already registered",
                details={"namespace_group": group},
            )
        self._factories[group] = factory

    def resolve(self, group: str) -> LiveTransportFactory | None:
        """The factory registered under exactly ``group`` (trimmed), or ``None``."""
        if not isinstance(group, str):
            return None
        return self._factories.get(group.strip())

    def list(self) -> list[LiveTransportFactory]:
        return list(self._factories.values())

    def groups(self) -> builtins.list[str]:
        return list(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def __contains__(self, group: object) -> bool:
        return isinstance(group, str) and group.strip() in self._factories

    def router(self) -> LiveIoRouter:
        return LiveIoRouter(list(self._factories.values()))
