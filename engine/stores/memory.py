"""In-memory stores (tests, fixtures). Same contract as the filesystem store."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence

from engine._kinds import ArtifactKind
from engine.engine import Stores
from engine.errors import StorageError
from engine.events import EventEnvelope
from engine.hashing import artifact_id_for_bytes
from engine.ids import ArtifactId, RunId
from engine.stores._base import (
    CODE_CONCURRENCY,
    Blob,
    CancelRequest,
    ChangeBatch,
    RetryNowRequest,
    check_artifact_id,
    check_run_id,
    validate_batch,
)

__all__ = ["MemoryArtifactStore", "MemoryEventStore", "MemoryStore"]


class MemoryEventStore:
    """Event streams in a dict; also the monitor's ``RunLister``, the ``ControlStore`` and, paired with an
    artifact store (as in :class:`MemoryStore`), a ``UnitOfWork``."""

    def __init__(self, artifact_store: MemoryArtifactStore | None = None) -> None:
        self.artifact_store = artifact_store
        self._streams: dict[RunId, list[EventEnvelope]] = {}
        self._journal: list[RunId] = []
        self._cancels: dict[RunId, CancelRequest] = {}
        self._retry_nows: dict[tuple[RunId, str, int], RetryNowRequest] = {}
        self._lock = asyncio.Lock()

    async def head_seq(self, run_id: RunId) -> int:
        run_id = check_run_id(run_id)
        return len(self._streams.get(run_id, ()))

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        return await self.commit(run_id, expected_seq, events, ())

    async def commit(
        self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope], blobs: Sequence[Blob]
    ) -> int:
        """The unit of work: every check first, then blobs and events land in one step (no ``await`` between)."""
        if type(run_id) is not RunId:
            run_id = check_run_id(run_id)
        validate_batch(run_id, expected_seq, events)  # the stores' shared validation; nothing to encode
        events = list(events)
        stream = self._streams.get(run_id, [])
        if len(stream) != expected_seq:
            raise StorageError.concurrency(
                CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {len(stream)}"
            )
        added: list[ArtifactId] = []
        if blobs:
            if self.artifact_store is None:
                raise StorageError.other(
                    "unit_of_work_unpaired", "this memory event store has no artifact store to commit blobs into"
                )
            added = self.artifact_store.put_many(
                blobs if _made_by_blob_of(blobs) else [_checked_blob(b) for b in blobs]
            )
        try:
            self._land(run_id, stream, events)
        except BaseException:
            if self.artifact_store is not None:
                self.artifact_store.forget(added)  # all or nothing
            raise
        return expected_seq + len(events)

    def _land(self, run_id: RunId, stream: list[EventEnvelope], events: list[EventEnvelope]) -> None:
        if events:
            self._streams.setdefault(run_id, stream).extend(events)
            self._journal.append(run_id)

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        run_id = check_run_id(run_id)
        stream = self._streams.get(run_id, [])
        lo = max(from_seq, 1) - 1
        hi = len(stream) if to_seq is None else max(min(to_seq, len(stream)), lo)
        return stream[lo:hi]

    async def list_runs(self) -> list[RunId]:
        return [r for r, s in self._streams.items() if s]

    async def changes_since(self, cursor: int | None) -> ChangeBatch:
        end = len(self._journal)
        start = end if cursor is None else min(max(cursor, 0), end)
        return ChangeBatch(cursor=end, runs=frozenset(self._journal[start:end]))

    async def request_cancel(self, run_id: RunId, reason: str = "") -> CancelRequest:
        run_id = check_run_id(run_id)
        req = CancelRequest(run_id=run_id, requested_at_millis=int(time.time() * 1000), reason=reason)
        self._cancels.setdefault(run_id, req)
        return self._cancels[run_id]

    async def cancel_request(self, run_id: RunId) -> CancelRequest | None:
        return self._cancels.get(check_run_id(run_id))

    async def request_retry_now(self, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest:
        run_id = check_run_id(run_id)
        key = (run_id, str(state_id), int(attempt))
        req = RetryNowRequest(run_id, key[1], key[2], int(time.time() * 1000))
        return self._retry_nows.setdefault(key, req)

    async def retry_now_request(self, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest | None:
        return self._retry_nows.get((check_run_id(run_id), str(state_id), int(attempt)))


class MemoryArtifactStore:
    """Content-addressed blobs in a dict; ``kinds`` records the kind given at first put."""

    def __init__(self) -> None:
        self._blobs: dict[ArtifactId, bytes] = {}
        self.kinds: dict[ArtifactId, ArtifactKind] = {}

    async def ids_with_prefix(self, prefix: str, limit: int) -> list[ArtifactId]:
        return sorted(a for a in self._blobs if a.startswith(prefix))[: max(limit, 0)]

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        data = bytes(data)
        aid = artifact_id_for_bytes(data)
        self._blobs.setdefault(aid, data)
        self.kinds.setdefault(aid, kind)
        return aid

    async def get(self, artifact_id: ArtifactId) -> bytes:
        aid = check_artifact_id(artifact_id)
        try:
            return self._blobs[aid]
        except KeyError:
            raise StorageError.not_found("artifact_not_found", f"artifact not found: {aid}") from None

    async def exists(self, artifact_id: ArtifactId) -> bool:
        try:
            aid = ArtifactId(artifact_id)
        except ValueError:
            return False
        return aid in self._blobs

    def put_many(self, blobs: Sequence[Blob]) -> list[ArtifactId]:
        """Store checked blobs (``MemoryEventStore.commit``); first kind wins, as with ``put``. Returns the ids that
        were new."""
        added = []
        for b in blobs:
            if b.artifact_id not in self._blobs:
                self._blobs[b.artifact_id] = b.data
                self.kinds[b.artifact_id] = b.kind
                added.append(b.artifact_id)
        return added

    def forget(self, ids: Sequence[ArtifactId]) -> None:
        """Undo :meth:`put_many` (a unit of work that failed after it)."""
        for aid in ids:
            self._blobs.pop(aid, None)
            self.kinds.pop(aid, None)

    def all_bytes(self) -> list[bytes]:
        """Every stored blob (tests scan them for secrets)."""
        return list(self._blobs.values())


class MemoryStore:
    """Both in-memory stores, with ``.stores`` as an ``engine.Stores``."""

    def __init__(self) -> None:
        self.artifacts = MemoryArtifactStore()
        self.events = MemoryEventStore(self.artifacts)

    @property
    def stores(self) -> Stores:
        return Stores(events=self.events, artifacts=self.artifacts, control=self.events)


def _made_by_blob_of(blobs: Sequence[Blob]) -> bool:
    """Every blob is one ``Blob.of`` made (its id hashed there from its bytes): nothing to check (the common case,
    one blob per state: the snapshot)."""
    for b in blobs:
        if type(b) is not Blob or not b.hashed or type(b.data) is not bytes or not isinstance(b.kind, ArtifactKind):
            return False
    return True


def _checked_blob(blob: Blob) -> Blob:
    """A blob whose id is its content's hash (what ``put`` would have returned) and whose kind is a kind."""
    if (
        type(blob) is Blob
        and type(blob.data) is bytes
        and isinstance(blob.kind, ArtifactKind)
        and (blob.hashed or hashlib.sha256(blob.data).hexdigest() == blob.artifact_id)
    ):
        return blob  # the common case: made by Blob.of (hashed there), else one hash
    if not isinstance(blob, Blob) or not isinstance(blob.kind, ArtifactKind):
        raise StorageError.other("unit_of_work_blob_invalid", "a unit of work carries a record that is not a Blob")
    data = bytes(blob.data)
    aid = artifact_id_for_bytes(data)
    if str(aid) != str(blob.artifact_id):
        raise StorageError.corruption(
            "artifact_put_id_mismatch",
            f"blob {blob.artifact_id} of kind {blob.kind} has content hash {aid}",
            {"expected": str(blob.artifact_id), "actual": str(aid)},
        )
    return Blob(aid, blob.kind, data)
