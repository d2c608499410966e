"""Routing Live IO calls to transports by namespace (ENGINE-SPEC §11.5).

A call's namespace ``N`` matches a factory's group ``g`` when ``N == g`` or ``N`` starts with
``g + "."``; the longest matching group wins. No match → ``IoError.other`` ``io_unknown_namespace``
(the request is never echoed). ``LiveIoRouter`` is itself a transport factory: ``make(context)``
returns a transport that routes each call and makes the matched factory's per-attempt transport
lazily, once per attempt.

``UnimplementedTransportFactory`` is the default when nothing is configured: every call fails
with ``io_unimplemented``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from engine._secrets import contains_secrets
from engine.errors import IoError
from engine.transport import LiveTransport, LiveTransportFactory, TransportContext

__all__ = [
    "ALL_NAMESPACES",
    "LiveIoRouter",
    "RoutedTransport",
    "UnimplementedTransport",
    "UnimplementedTransportFactory",
    "namespace_matches",
    "normalize_group",
]

ALL_NAMESPACES = "*"
"""The ``namespace_group`` of factories that take every namespace (a router, the default factory).

Inside a router such a factory is the fallback for namespaces no other group matches, so a
nested router or an ``UnimplementedTransportFactory`` keeps its meaning when wrapped."""

_NAMESPACE_SHOWN_MAX = 128


def normalize_group(group: object) -> str:
    """The trimmed group; an empty (after trimming) or non-string group raises ``io_namespace_group_empty``."""
    if not isinstance(group, str) or not group.strip():
        raise IoError.other(
            "io_namespace_group_empty", f"transport namespace group must be a non-empty string (got {group!r})"
        )
    return group.strip()


def namespace_matches(namespace: str, group: str) -> bool:
    """``namespace == group`` or ``namespace`` starts with ``group + "."``."""
    return namespace == group or namespace.startswith(group + ".")


def _shown(namespace: str) -> str:
    if contains_secrets(namespace):
        return "<redacted>"
    return namespace if len(namespace) <= _NAMESPACE_SHOWN_MAX else namespace[:_NAMESPACE_SHOWN_MAX] + "…"


def _checked_groups(factories: Iterable[LiveTransportFactory]) -> list[tuple[str, LiveTransportFactory]]:
    routes: list[tuple[str, LiveTransportFactory]] = []
    seen: set[str] = set()
    for factory in factories:
        group = normalize_group(factory.namespace_group)
        if group in seen:
            raise IoError.other(
                "io_namespace_group_duplicate",
                f"duplicate transport namespace group {group!r}",
                details={"namespace_group": group},
            )
        seen.add(group)
        routes.append((group, factory))
    return routes


class UnimplementedTransport:
    async def call(self, namespace: str, request: Any) -> Any:
        raise IoError.other(
            "io_unimplemented",
            f"no live IO transport is configured (namespace {_shown(namespace)!r})",
            details={"namespace": _shown(namespace)},
        )


class UnimplementedTransportFactory:
    """The default factory: every call fails ``io_unimplemented``."""

    @property
    def namespace_group(self) -> str:
        return ALL_NAMESPACES

    def make(self, context: TransportContext) -> LiveTransport:
        return UnimplementedTransport()


class RoutedTransport:
    """One attempt's routing transport; per-group transports are made on first use and reused."""

    def __init__(self, router: LiveIoRouter, context: TransportContext) -> None:
        self._router = router
        self._context = context
        self._made: dict[str, LiveTransport] = {}

    async def call(self, namespace: str, request: Any) -> Any:
        group, factory = self._router.route(namespace)
        transport = self._made.get(group)
        if transport is None:
            transport = factory.make(self._context)
            self._made[group] = transport
        return await transport.call(namespace, request)


class LiveIoRouter:
    """Routes by longest matching namespace group; built from a list of factories.

    A factory whose group is ``*`` (``ALL_NAMESPACES``) takes the namespaces no group matches.

    Raises ``IoError.other`` ``io_namespace_group_empty`` / ``io_namespace_group_duplicate`` when a
    group is empty after trimming or appears twice.
    """

    def __init__(self, factories: Sequence[LiveTransportFactory] = ()) -> None:
        routes = _checked_groups(factories)
        self._fallback: LiveTransportFactory | None = next((f for g, f in routes if g == ALL_NAMESPACES), None)
        # Longest group first, so the first match is the longest one.
        self._routes: tuple[tuple[str, LiveTransportFactory], ...] = tuple(
            sorted(((g, f) for g, f in routes if g != ALL_NAMESPACES), key=lambda route: len(route[0]), reverse=True)
        )

    @property
    def namespace_group(self) -> str:
        return ALL_NAMESPACES

    @property
    def groups(self) -> tuple[str, ...]:
        """The registered groups, sorted (``*`` included when a fallback factory is set)."""
        fallback = (ALL_NAMESPACES,) if self._fallback is not None else ()
        return tuple(sorted([*(group for group, _ in self._routes), *fallback]))

    def route(self, namespace: str) -> tuple[str, LiveTransportFactory]:
        """The ``(group, factory)`` serving ``namespace``; ``io_unknown_namespace`` if none."""
        if isinstance(namespace, str):
            for group, factory in self._routes:
                if namespace_matches(namespace, group):
                    return group, factory
            if self._fallback is not None:
                return ALL_NAMESPACES, self._fallback
        shown = _shown(namespace) if isinstance(namespace, str) else "<not a string>"
        raise IoError.other(
            "io_unknown_namespace",
            f"no live IO transport registered for namespace {shown!r}",
            details={"namespace": shown},
        )

    def make(self, context: TransportContext) -> LiveTransport:
        return RoutedTransport(self, context)
