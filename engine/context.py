"""Context traits (the seed's ``context`` module) and the plain JSON-object context."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import TypeAdapter, ValidationError

from engine._wire import copy_json
from engine.errors import ContextError
from engine.hashing import CanonicalJsonError, canonical_json_bytes
from engine.ids import ContextKey

__all__ = ["DynContext", "JsonContext", "TypedContextExt", "read_typed", "write_typed"]

T = TypeVar("T")


@runtime_checkable
class DynContext(Protocol):
    """Dynamic context: raw JSON reads and writes; ``dump()`` is the full snapshot."""

    def read(self, key: str) -> Any | None: ...

    def write(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...

    def dump(self) -> dict[str, Any]: ...


class TypedContextExt:
    """The seed's typed convenience extension, for any context with ``read`` and ``write``.

    ``read_typed`` validates the stored JSON as ``type_`` (a pydantic model, a dataclass or any type
    pydantic can validate); ``write_typed`` serialises ``value`` to JSON (pydantic's JSON mode) and
    writes it. Errors are ``ContextError`` ``context_deserialize_failed`` / ``context_serialize_failed``.
    """

    def read(self, key: str) -> Any | None:
        raise NotImplementedError

    def write(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def read_typed(self, key: str, type_: type[T]) -> T | None:
        return read_typed(self, key, type_)

    def write_typed(self, key: str, value: object) -> None:
        write_typed(self, key, value)


class JsonContext(TypedContextExt):
    """An ordered map key → JSON value (the engine's base context, ENGINE-SPEC §10.2)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        if data is not None and (not isinstance(data, dict) or not all(isinstance(k, str) for k in data)):
            raise ContextError.serialization("context_snapshot_not_object", "context snapshot is not a JSON object")
        self._data: dict[str, Any] = {str(ContextKey(k)): v for k, v in (data or {}).items()}

    def read(self, key: str) -> Any | None:
        value = self._data.get(ContextKey(key))
        return copy_json(value) if isinstance(value, (dict, list)) else value

    def write(self, key: str, value: Any) -> None:
        # Keys are stored as plain ``str`` so that ``dump()`` is plain JSON (canonical encoding
        # rejects non-``str`` object keys).
        self._data[str(ContextKey(key))] = copy_json(value) if isinstance(value, (dict, list)) else value

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def dump(self) -> dict[str, Any]:
        return copy_json(self._data)  # type: ignore[no-any-return]


def read_typed(ctx: DynContext | TypedContextExt, key: str, type_: type[T]) -> T | None:
    """Read ``key`` and validate it as ``type_`` (``context_deserialize_failed`` on mismatch)."""
    value = ctx.read(key)
    if value is None:
        return None
    try:
        return TypeAdapter(type_).validate_python(value)
    except ValidationError:
        raise ContextError.serialization("context_deserialize_failed", "context value deserialization failed") from None


def write_typed(ctx: DynContext | TypedContextExt, key: str, value: object) -> None:
    """Serialise ``value`` to JSON and write it (``context_serialize_failed`` on failure).

    Canonical on write: a value the snapshot could not encode as canonical JSON (a float, an integer outside the
    I-JSON range, ENGINE-SPEC §2.1) is refused here, where the handler can see it, not at the end of the attempt."""
    try:
        raw = TypeAdapter(type(value)).dump_python(value, mode="json")
    except Exception:
        raise ContextError.serialization("context_serialize_failed", "context value serialization failed") from None
    try:
        canonical_json_bytes(raw)
    except CanonicalJsonError as exc:
        if not exc.is_secret:  # secret-looking content is the snapshot's business (§12), as for ``write``
            raise ContextError.serialization(
                "context_serialize_failed", f"context value is not canonical JSON: {exc}"
            ) from None
    ctx.write(key, raw)
