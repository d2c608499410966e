"""A pool worker's lease on one run (``RunLease``) and the event store that checks it before each append
(``LeasedEventStore``); see :mod:`engine.pool`, "One writer at a time"."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from engine.errors import StorageError
from engine.events import EventEnvelope
from engine.ids import RunId
from engine.pool._sql import Claim
from engine.stores import Blob, ChangeBatch
from engine.stores.postgres import PostgresArtifactStore, PostgresEventStore

__all__ = ["LeasedEventStore", "RunLease"]


class RunLease:
    """This worker's claim on one run: valid while ``monotonic() < sent + ttl - margin`` of the last successful
    claim/heartbeat; once invalid, invalid for good (see the module docstring)."""

    def __init__(self, claim: Claim, sent_at: float, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.claim = claim
        self.ttl = ttl
        self.margin = ttl / 5
        self._clock = clock
        self._valid_until = sent_at + ttl - self.margin
        self.lost_reason: str | None = None

    def renewed(self, sent_at: float) -> None:
        if self.lost_reason is None:
            self._valid_until = max(self._valid_until, sent_at + self.ttl - self.margin)

    def lose(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason

    def check(self) -> None:
        if self.lost_reason is None and self._clock() >= self._valid_until:
            self.lose("lease not renewed in time")
        if self.lost_reason is not None:
            raise StorageError.other(
                "lease_lost", f"run {self.claim.run_id}: this worker lost its lease ({self.lost_reason}); not writing"
            )


class LeasedEventStore:
    """The event store as seen by a pool worker's engine: every append first checks the run's lease."""

    def __init__(self, inner: PostgresEventStore, lease: RunLease) -> None:
        self._inner = inner
        self._lease = lease

    @property
    def artifact_store(self) -> PostgresArtifactStore | None:
        """Where :meth:`commit` puts blobs: the inner store's (so the engine pairs it with the pool's artifacts)."""
        return self._inner.artifact_store

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        self._lease.check()
        return await self._inner.append(run_id, expected_seq, events)

    async def commit(
        self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope], blobs: Sequence[Blob]
    ) -> int:
        """The inner store's unit of work (blobs + events in one statement), after the same lease check."""
        self._lease.check()
        return await self._inner.commit(run_id, expected_seq, events, blobs)

    async def head_seq(self, run_id: RunId) -> int:
        return await self._inner.head_seq(run_id)

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        return await self._inner.read_range(run_id, from_seq, to_seq)

    async def list_runs(self) -> list[RunId]:
        return await self._inner.list_runs()

    async def changes_since(self, cursor: int | None) -> ChangeBatch:
        return await self._inner.changes_since(cursor)
