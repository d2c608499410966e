"""Context runtime (ENGINE-SPEC §10): staged attempt context, snapshot load and write.

A ``StagedContext`` overlays an attempt's writes and deletes (tombstones) on a base object that it
never mutates. On success the overlay is the attempt's *delta*: sequential runs apply it to the
base (same thing), fan-out applies it to the checkpoint current at completion (§0.5).
"""

from __future__ import annotations

import copy
from typing import Any

from engine._artifacts import read_canonical_json, verified_put_bytes
from engine._kinds import ArtifactKind
from engine.errors import ContextError, StorageError
from engine.hashing import CanonicalJsonError, canonical_json_bytes
from engine.ids import ArtifactId
from engine.stores._base import ArtifactStore

__all__ = ["SnapshotCache", "StagedContext", "encode_snapshot"]

_TOMBSTONE: Any = object()


def _copy(value: Any) -> Any:
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


class StagedContext:
    """The ``DynContext`` a handler sees: overlay of writes/tombstones on a read-only base."""

    __slots__ = ("_base", "_overlay")

    def __init__(self, base: dict[str, Any]) -> None:
        self._base = base
        self._overlay: dict[str, Any] = {}

    def read(self, key: str) -> Any | None:
        if key in self._overlay:
            v = self._overlay[key]
            return None if v is _TOMBSTONE else _copy(v)
        return _copy(self._base.get(key))

    def write(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise ContextError.serialization("context_serialize_failed", "context keys must be strings")
        self._overlay[key] = _copy(value)

    def delete(self, key: str) -> None:
        self._overlay[key] = _TOMBSTONE

    def dump(self) -> dict[str, Any]:
        return copy.deepcopy(apply_delta(self._base, self._overlay))

    @property
    def delta(self) -> dict[str, Any]:
        return self._overlay

    @property
    def touched_keys(self) -> list[str]:
        return list(self._overlay)


def apply_delta(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the overlay applied (shallow: values are shared, never mutated)."""
    if not delta:
        return base
    out = dict(base)
    for k, v in delta.items():
        if v is _TOMBSTONE:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def encode_snapshot(value: Any) -> bytes:
    """Canonical bytes of a snapshot (§10.3): secrets → Context(Other), floats → Context(Serialization)."""
    try:
        return canonical_json_bytes(value)
    except CanonicalJsonError as exc:
        if exc.is_secret:
            raise ContextError.other(
                "secrets_detected", "context snapshot contains secret-looking content and was not written"
            ) from None
        raise ContextError.serialization(
            "context_snapshot_not_canonical", f"context snapshot is not canonical JSON: {exc}"
        ) from None


class SnapshotCache:
    """Snapshots this invocation wrote or verified, by id (content addressed, so never stale).

    Values are shared read-only objects: staged contexts copy on read and never mutate the base.
    """

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._by_id: dict[ArtifactId, dict[str, Any]] = {}

    async def load(self, snapshot_id: ArtifactId) -> dict[str, Any]:
        cached = self._by_id.get(snapshot_id)
        if cached is not None:
            return cached
        value = await read_canonical_json(self.store, snapshot_id)
        if not isinstance(value, dict):
            raise ContextError.serialization(
                "context_snapshot_not_object", f"context snapshot {snapshot_id} is not a JSON object"
            )
        self._by_id[snapshot_id] = value
        return value

    async def write(self, value: dict[str, Any]) -> ArtifactId:
        data = encode_snapshot(value)
        aid = await verified_put_bytes(self.store, ArtifactKind.CONTEXT_SNAPSHOT, data)
        self._by_id.setdefault(aid, value)
        return aid

    def remember(self, snapshot_id: ArtifactId, value: dict[str, Any]) -> None:
        self._by_id.setdefault(snapshot_id, value)


def storage_or_context(exc: Exception) -> bool:
    return isinstance(exc, StorageError | ContextError)
