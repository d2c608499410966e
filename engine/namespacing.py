"""SDK-level context key namespacing (ENGINE-SPEC §10.4).

The engine hands every state the raw staged context, whose keys are global within a run. The SDK
layer wraps each planned state so that its handler sees a *namespaced view* for its op path ``P``
(``<machine>.<step>``, e.g. ``m.step1``):

* a key with an explicit slot (``in.x``, ``out.x``, ``work.x``) is written and deleted at
  ``P.<key>``; reading ``in.x`` resolves through the import map (the exporter's qualified key),
  else ``P.in.x``; reading ``out.x`` / ``work.x`` reads ``P.<key>``;
* a bare key ``k`` that is one of the op's export ports lives at ``P.out.k``; otherwise a read of an
  imported ``k`` resolves to the exporter's qualified key, and everything else lives at ``P.work.k``;
* :meth:`NamespacedContext.dump` returns only the keys under ``P.``, with the prefix stripped.

``legacy=True`` gives the older SDK layout with no slots: every key lives at ``P.<key>`` (imports
still resolve on read). Example: step ``m.step1`` exporting ``x`` writes ``m.step1.out.x``
(``m.step1.x`` in the legacy layout); a step importing it reads that key.

This module is pure: it never touches a store, only the :class:`~engine.context.DynContext` it wraps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.context import DynContext
from engine.errors import ContextError
from engine.ids import ContextKey, IdValidationError, OpPath

__all__ = ["SLOTS", "NamespacedContext", "export_key", "import_map"]

SLOTS: tuple[str, ...] = ("in", "out", "work")

CODE_INVALID_OP_PATH = "namespace_invalid_op_path"
CODE_INVALID_PORT = "namespace_invalid_port"


def _op_path(op_path: str) -> OpPath:
    try:
        return OpPath(op_path)
    except IdValidationError as exc:
        raise ContextError.other(CODE_INVALID_OP_PATH, str(exc), {"op_path": str(op_path)[:200]}) from None


def _port(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ContextError.other(CODE_INVALID_PORT, f"{what} port names must be non-empty strings: {name!r}"[:300])
    return name


def export_key(op_path: str, port: str, *, legacy: bool = False) -> ContextKey:
    """The global context key where op ``op_path`` publishes its export ``port``."""
    path = _op_path(op_path)
    _port(port, "export")
    return ContextKey(f"{path}.{port}" if legacy else f"{path}.out.{port}")


def import_map(sources: Mapping[str, tuple[str, str]], *, legacy: bool = False) -> dict[str, ContextKey]:
    """Build an import map from ``{local_name: (exporter_op_path, exporter_port)}``."""
    return {_port(local, "import"): export_key(src, port, legacy=legacy) for local, (src, port) in sources.items()}


class NamespacedContext:
    """A :class:`~engine.context.DynContext` view of ``inner`` scoped to one op path (§10.4).

    ``exports`` names the op's export ports; ``imports`` maps a local port name to the global
    (already qualified) context key it reads from, usually built with :func:`import_map`.
    """

    __slots__ = ("_exports", "_imports", "_inner", "_legacy", "_path", "_prefix")

    def __init__(
        self,
        inner: DynContext,
        op_path: str,
        exports: Iterable[str] = frozenset(),
        imports: Mapping[str, str] | None = None,
        *,
        legacy: bool = False,
    ) -> None:
        self._inner = inner
        self._path = _op_path(op_path)
        self._prefix = f"{self._path}."
        self._exports = frozenset(_port(e, "export") for e in exports)
        self._imports = {_port(k, "import"): ContextKey(_port(v, "import source")) for k, v in (imports or {}).items()}
        self._legacy = legacy

    @property
    def op_path(self) -> OpPath:
        return self._path

    @property
    def inner(self) -> DynContext:
        return self._inner

    @property
    def exports(self) -> frozenset[str]:
        return self._exports

    @property
    def imports(self) -> dict[str, ContextKey]:
        return dict(self._imports)

    @property
    def legacy(self) -> bool:
        return self._legacy

    # -- key resolution (public so tools can show where a handler's key lands) -------------------

    def write_key(self, key: str) -> ContextKey:
        """The global key a write or delete of ``key`` touches."""
        k = ContextKey(key)
        if self._legacy or k.explicit_slot is not None:
            return ContextKey(self._prefix + k)
        if k in self._exports:
            return ContextKey(f"{self._prefix}out.{k}")
        return ContextKey(f"{self._prefix}work.{k}")

    def read_key(self, key: str) -> ContextKey:
        """The global key a read of ``key`` consults."""
        k = ContextKey(key)
        if self._legacy:
            if k not in self._exports and k in self._imports:
                return self._imports[k]
            return ContextKey(self._prefix + k)
        slot = k.explicit_slot
        if slot is not None:
            name, port = slot
            if name == "in" and port in self._imports:
                return self._imports[port]
            return ContextKey(self._prefix + k)
        if k in self._exports:
            return ContextKey(f"{self._prefix}out.{k}")
        if k in self._imports:
            return self._imports[k]
        return ContextKey(f"{self._prefix}work.{k}")

    # -- DynContext ------------------------------------------------------------------------------

    def read(self, key: str) -> Any | None:
        return self._inner.read(self.read_key(key))

    def write(self, key: str, value: Any) -> None:
        self._inner.write(self.write_key(key), value)

    def delete(self, key: str) -> None:
        self._inner.delete(self.write_key(key))

    def dump(self) -> dict[str, Any]:
        """This op's keys only, ``P.`` stripped (the engine persists the full inner dump)."""
        prefix = self._prefix
        n = len(prefix)
        return {k[n:]: v for k, v in self._inner.dump().items() if k.startswith(prefix)}

    def __repr__(self) -> str:
        mode = ", legacy" if self._legacy else ""
        return f"NamespacedContext({self._path!s}{mode}, exports={sorted(self._exports)}, imports={self._imports})"
