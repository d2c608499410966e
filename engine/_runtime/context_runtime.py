"""Context runtime (ENGINE-SPEC §10): staged attempt context, snapshot load and write.

A ``StagedContext`` overlays an attempt's writes and deletes (tombstones) on a base object that it
never mutates. On success the overlay is the attempt's *delta*: sequential runs apply it to the
base (same thing), fan-out applies it to the checkpoint current at completion (§0.5).
"""

from __future__ import annotations

from typing import Any

from engine._kinds import ArtifactKind
from engine._runtime.pending import PendingArtifacts
from engine._wire import copy_json
from engine.artifacts import read_canonical_json, verified_put_bytes
from engine.errors import ContextError
from engine.hashing import MAX_SAFE_INTEGER, CanonicalJsonError, canonical_json_bytes, canonical_members
from engine.ids import ArtifactId
from engine.stores import ArtifactStore

__all__ = ["SnapshotCache", "StagedContext", "encode_snapshot"]

_TOMBSTONE: Any = object()


def _copy(value: Any) -> Any:
    return copy_json(value) if isinstance(value, dict | list) else value


class StagedContext:
    """The ``DynContext`` a handler sees: overlay of writes/tombstones on a read-only base."""

    __slots__ = ("_base", "_overlay", "delta")

    def __init__(self, base: dict[str, Any]) -> None:
        self._base = base
        self._overlay: dict[str, Any] = {}
        self.delta = self._overlay
        """The attempt's writes and deletes (tombstones), as the scheduler applies them on success."""

    def read(self, key: str) -> Any | None:
        if key in self._overlay:
            v = self._overlay[key]
            return None if v is _TOMBSTONE else _copy(v)
        return _copy(self._base.get(key))

    def write(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise ContextError.serialization("context_serialize_failed", "context keys must be strings")
        self._overlay[key] = copy_json(value) if isinstance(value, (dict, list)) else value  # _copy, inline

    def delete(self, key: str) -> None:
        self._overlay[key] = _TOMBSTONE

    def dump(self) -> dict[str, Any]:
        return copy_json(apply_delta(self._base, self._overlay))  # type: ignore[no-any-return]

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


def encode_member(key: str, value: Any) -> bytes:
    """Canonical bytes of one top-level member, ``"key":value`` (same checks as a whole snapshot).

    A scalar without text (an integer in the I-JSON range, a boolean, null) is written after its key's canonical
    prefix ``"key":``, encoded and checked once per key (kept for a bounded number of keys): only the key can be
    secret-looking, and its check is the prefix's."""
    t = type(value)
    if value is None or t is bool or (t is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER):
        prefix = _PREFIXES.get(key) if type(key) is str else None
        if prefix is None:
            prefix = encode_snapshot({key: None})[1:-5]  # '{"key":null}' -> '"key":'
            if type(key) is str and len(_PREFIXES) < _MAX_PREFIXES:
                _PREFIXES[key] = prefix
        if value is None:
            return prefix + b"null"
        if t is bool:
            return prefix + (b"true" if value else b"false")
        return prefix + str(value).encode()
    return encode_snapshot({key: value})[1:-1]


_PREFIXES: dict[str, bytes] = {}  # key -> its canonical member prefix '"key":' (checked)
_MAX_PREFIXES = 65536


def _sort_key(key: str) -> Any:
    return key.encode("utf-16-be")  # byte order of UTF-16BE = RFC 8785 code-unit order


class _Members:
    """A snapshot's top-level members as canonical bytes, in key order (``parts``, aligned with ``order``)."""

    __slots__ = ("ascii", "index", "order", "parts")

    def __init__(self, by_key: dict[str, bytes]) -> None:
        self.ascii = all(k.isascii() for k in by_key)
        self.order = sorted(by_key) if self.ascii else sorted(by_key, key=_sort_key)
        self.index = {k: i for i, k in enumerate(self.order)}  # shared by every snapshot with the same keys
        self.parts = [by_key[k] for k in self.order]

    @property
    def by_key(self) -> dict[str, bytes]:
        return dict(zip(self.order, self.parts, strict=True))

    def apply(self, delta: dict[str, Any]) -> _Members:
        """These members with ``delta`` applied; ``self`` itself when that changes no byte (same keys, and every
        member written encodes as it was: the snapshot, and so its id, are those of the base)."""
        index = self.index
        for k, v in delta.items():
            if (v is _TOMBSTONE) is (k in index):  # a key added or removed: a new order
                by_key = self.by_key
                for k2, v2 in delta.items():
                    if v2 is _TOMBSTONE:
                        by_key.pop(k2, None)
                    else:
                        by_key[k2] = encode_member(k2, v2)
                return _Members(by_key)
        parts: list[bytes] | None = None  # same keys: only the changed members are encoded
        old = self.parts
        for k, v in delta.items():
            if v is not _TOMBSTONE:
                i = index[k]
                part = encode_member(k, v)
                if part != old[i]:
                    if parts is None:
                        parts = old.copy()
                    parts[i] = part
        if parts is None:
            return self
        out = _Members.__new__(_Members)
        out.ascii, out.order, out.index, out.parts = self.ascii, self.order, index, parts
        return out

    def join(self) -> bytes:
        """RFC 8785 is compositional: an object is its members sorted by key (UTF-16 code units), comma-joined."""
        return b"{" + b",".join(self.parts) + b"}"


def _members_of(value: dict[str, Any], encoded: bytes) -> _Members:
    """The members of a checked snapshot: cut from its canonical bytes ``encoded`` (one pass in C), else encoded one
    by one."""
    members = canonical_members(value, encoded)
    if members is None:
        members = {k: encode_member(k, v) for k, v in value.items()}
    return _Members(members)


def join_members(members: dict[str, bytes]) -> bytes:
    return _Members(members).join()


class SnapshotCache:
    """Snapshots this invocation wrote or verified, by id (content addressed, so never stale), the last
    :data:`KEEP_SNAPSHOTS` of them.

    Values are shared read-only objects: staged contexts copy on read and never mutate the base.
    A snapshot written from a delta is encoded incrementally: the canonical bytes of each top-level
    member are kept, so a state that changes one key re-encodes (and secret/float-checks) only that
    key's member and re-joins the rest (``join_members``; proven equal to a full encoding by
    tests/engine/test_runtime_context.py).
    """

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._by_id: dict[ArtifactId, dict[str, Any]] = {}
        self._members: dict[ArtifactId, _Members] = {}

    def cached(self, snapshot_id: ArtifactId) -> dict[str, Any] | None:
        """The snapshot if this invocation wrote or loaded it (no coroutine: the common case of :meth:`load`)."""
        return self._by_id.get(snapshot_id)

    async def load(self, snapshot_id: ArtifactId) -> dict[str, Any]:
        cached = self._by_id.get(snapshot_id)
        if cached is not None:
            return cached
        value = await read_canonical_json(self.store, snapshot_id)
        if not isinstance(value, dict):
            raise ContextError.serialization(
                "context_snapshot_not_object", f"context snapshot {snapshot_id} is not a JSON object"
            )
        _keep(self._by_id, snapshot_id, value)
        return value

    async def _put(self, data: bytes) -> ArtifactId:
        store = self.store
        if type(store) is PendingArtifacts:  # our own overlay: nothing to verify, one hash
            return store.hold(ArtifactKind.CONTEXT_SNAPSHOT, data)
        return await verified_put_bytes(store, ArtifactKind.CONTEXT_SNAPSHOT, data)

    async def write(self, value: dict[str, Any]) -> ArtifactId:
        data = encode_snapshot(value)
        aid = await self._put(data)
        _keep(self._by_id, aid, value)
        if aid not in self._members:
            _keep(self._members, aid, _members_of(value, data))  # the next write_delta re-encodes only what changed
        return aid

    async def write_delta(
        self, base_id: ArtifactId, base_value: dict[str, Any], delta: dict[str, Any]
    ) -> tuple[ArtifactId, dict[str, Any]]:
        """Write ``base`` with ``delta`` applied; return (id, value). A delta that changes nothing (every value
        written as it was, deletes of absent keys) writes nothing: the base's id and value are returned."""
        done = self.write_delta_held(base_id, base_value, delta)
        if done is not None:
            return done
        base_members = self._members_of_base(base_id, base_value)
        members = base_members.apply(delta)
        if members is base_members:
            return base_id, base_value
        value = apply_delta(base_value, delta)
        aid = await self._put(members.join())
        _keep(self._by_id, aid, value)
        _keep(self._members, aid, members)
        return aid, value

    def write_delta_held(
        self, base_id: ArtifactId, base_value: dict[str, Any], delta: dict[str, Any]
    ) -> tuple[ArtifactId, dict[str, Any]] | None:
        """:meth:`write_delta` without a coroutine, when the store is this run's :class:`PendingArtifacts` overlay
        (the snapshot is held there and commits with the next batch); ``None`` for any other store."""
        store = self.store
        if type(store) is not PendingArtifacts:
            return None
        base_members = self._members.get(base_id)
        if base_members is None:
            base_members = self._members_of_base(base_id, base_value)
        members = base_members.apply(delta)
        if members is base_members:
            return base_id, base_value
        value = apply_delta(base_value, delta)
        aid = store.hold(ArtifactKind.CONTEXT_SNAPSHOT, b"{" + b",".join(members.parts) + b"}")  # members.join()
        by_id, by_members = self._by_id, self._members  # _keep, inline
        if aid not in by_id:
            by_id[aid] = value
            if len(by_id) > KEEP_SNAPSHOTS:
                del by_id[next(iter(by_id))]
        if aid not in by_members:
            by_members[aid] = members
            if len(by_members) > KEEP_SNAPSHOTS:
                del by_members[next(iter(by_members))]
        return aid, value

    def _members_of_base(self, base_id: ArtifactId, base_value: dict[str, Any]) -> _Members:
        members = self._members.get(base_id)
        if members is None:
            members = _members_of(base_value, encode_snapshot(base_value))
            _keep(self._members, base_id, members)
        return members


KEEP_SNAPSHOTS = 16
"""How many snapshots (values and members) a :class:`SnapshotCache` keeps, the most recently written or loaded: the
current checkpoint and the bases of attempts still open are among them. An older one is read from the store again
if ever needed. (Keeping every snapshot of a long run made each full garbage collection walk all of them.)"""


def _keep(cache: dict[ArtifactId, Any], key: ArtifactId, value: Any) -> None:
    if key not in cache:
        cache[key] = value
        if len(cache) > KEEP_SNAPSHOTS:
            del cache[next(iter(cache))]
