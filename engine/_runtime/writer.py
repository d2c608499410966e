"""The engine-side appender (ENGINE-SPEC §3.4), shared by every task of one invocation.

Holds ``next_seq``; every append uses ``expected_seq`` = the durable head. Appends are serialised by a
lock and are *not* interrupted by task cancellation: a cancelled caller waits for its in-flight
append to land (or fail) before ``CancelledError`` propagates, so the writer's view of the stream
never diverges from the store. The writer also tracks which attempts are open (per state, §0.5).

Batching (issue 12): :meth:`EventWriter.defer` writes events *logically* now (their place in the
stream, their ``ts_millis`` and the open-attempt bookkeeping are fixed at that moment) and *durably*
with the next append, ahead of that append's own events, in one ``EventStore.append`` call. So a
``StateCompleted`` shares the batch of the next ``StateEntered`` (or ``RunCompleted``) without any
change to the order, seqs or payloads of the stream. If such a combined batch fails, the writer falls
back to the unbatched order (the deferred events alone, then the new ones), so a bad new event never
takes down events written before it: the stream stays the one of unbatched appends.

Blobs (issue 12): with a :class:`PendingArtifacts` overlay, every ``defer``/``append`` claims the blobs
created since the last one (a snapshot, fact payloads, transport outputs) and the batch commits them with
its events in one ``UnitOfWork.commit`` (the overlay exists only for a store whose unit of work commits into
the run's artifact store: see ``pending_for``). Deferred events
keep their blobs; blobs of a batch that failed go back to the overlay for the next one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from engine._runtime.clock import Clock
from engine._runtime.pending import PendingArtifacts
from engine._wire import construct
from engine.errors import MfmError
from engine.events import DomainEvent, EventEnvelope, StateCompleted, StateEntered, StateFailed
from engine.ids import ArtifactId, RunId, StateId
from engine.stores import Blob, EngineBatch, EventStore

__all__ = ["EventWriter", "OpenAttempt"]


class OpenAttempt:
    __slots__ = ("attempt", "base_snapshot_id", "entered_seq", "state_id")

    def __init__(self, state_id: StateId, attempt: int, base_snapshot_id: ArtifactId, entered_seq: int) -> None:
        self.state_id = state_id
        self.attempt = attempt
        self.base_snapshot_id = base_snapshot_id
        self.entered_seq = entered_seq


class _Mutex:
    """``asyncio.Lock``'s contract (first come, first served; a waiter cancelled while the lock is handed to it hands
    it on) with no coroutine on the uncontended path: the writer takes it once per append, nearly always free."""

    __slots__ = ("_waiters", "locked")

    def __init__(self) -> None:
        self.locked = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Wait until the lock is handed over (only while it is held)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # it was handed to us as we were cancelled: to the next one
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # handed over: stays locked
                return
        self.locked = False


class EventWriter:
    def __init__(
        self, store: EventStore, run_id: RunId, head: int, clock: Clock, blobs: PendingArtifacts | None = None
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.run_id = run_id
        self.next_seq = head + 1  # logical: deferred events count
        self.clock = clock
        self.open: dict[StateId, OpenAttempt] = {}
        self.appends = 0
        self._durable = head
        self._pending: list[tuple[Any, int]] = []  # deferred (event, ts_millis), in stream order
        self._pending_blobs: list[Blob] = []  # the blobs the deferred events carry
        self._lock = _Mutex()
        self._busy: asyncio.Future[Any] | None = None
        self._deferred: set[asyncio.Future[Any]] = set()

    @property
    def head(self) -> int:
        """The logical head: the last seq written, deferred events included."""
        return self.next_seq - 1

    @property
    def durable_head(self) -> int:
        return self._durable

    @property
    def pending(self) -> bool:
        """Whether deferred events wait for the next append."""
        return bool(self._pending)

    def defer(self, events: Sequence[Any], *, ts: int | None = None) -> None:
        """Write ``events`` logically now and durably with the next :meth:`append` (or :meth:`flush`).

        Only for events nothing durable may wait on before the next append: the caller makes sure
        one follows (the scheduler appends at every boundary, §0.5).
        """
        if not events:
            return
        if ts is None:
            ts = self.clock.now_millis()
        if self.blobs is not None:
            self._pending_blobs += self.blobs.claim()
        pending, track, seq = self._pending, self._track, self.next_seq
        for ev in events:
            pending.append((ev, ts))
            track(ev, seq)
            seq += 1
        self.next_seq = seq

    async def flush(self) -> int:
        """Make the deferred events durable (no-op when there are none); return the new head."""
        return await self.append(())

    async def append(
        self, events: Sequence[Any], *, after: Callable[[], None] | None = None, ts: int | None = None
    ) -> int:
        """Append the deferred events then ``events`` (kernel variants or ``DomainEvent``) as one atomic batch;
        return the new head.

        ``after`` runs right after the store accepted the batch (in-memory bookkeeping that must
        match what is durable). A task cancelled through :meth:`cancel_task` while its batch is in
        the store is cancelled only once the store call returned, so the writer never loses track
        of what is durable.
        """
        if not events and not self._pending:
            return self.head
        lock = self._lock
        if lock.locked:
            await lock.wait()
        else:
            lock.locked = True
        try:
            stamp = self.clock.now_millis() if events and ts is None else ts
            deferred, self._pending = self._pending, []
            deferred_blobs, self._pending_blobs = self._pending_blobs, []
            new_blobs = self.blobs.claim() if self.blobs is not None else []
            self.next_seq += len(events)  # events deferred while this batch is in the store come after it
            task = asyncio.current_task()
            self._busy = task
            try:
                try:
                    head = await self._write(deferred, events, stamp, deferred_blobs + new_blobs)
                    deferred, deferred_blobs, new_blobs = [], [], []
                except MfmError:
                    if not (deferred and events):
                        raise
                    # the unbatched order: what was deferred, alone first (with its blobs)
                    await self._write(deferred, (), None, deferred_blobs)
                    deferred, deferred_blobs = [], []
                    head = await self._write([], events, stamp, new_blobs)
                    new_blobs = []
            except BaseException:
                self._deferred.discard(task)
                self._pending[:0] = deferred  # not durable: still ahead of everything deferred since
                self._pending_blobs[:0] = deferred_blobs
                if self.blobs is not None:
                    self.blobs.unclaim(new_blobs)
                self.next_seq = self._durable + 1 + len(self._pending)
                raise
            finally:
                self._busy = None
            if after is not None:
                after()
            if task is not None and task in self._deferred:
                self._deferred.discard(task)
                task.cancel()
            return head
        finally:
            lock.release()

    async def _write(
        self, deferred: list[tuple[Any, int]], new: Sequence[Any], stamp: int | None, blobs: list[Blob]
    ) -> int:
        """One durable store operation: ``blobs`` and the events ``deferred`` (each with its ``ts_millis``) then
        ``new`` (stamped ``stamp``), seqs from the durable head."""
        run_id = self.run_id
        seq = durable = self._durable
        envs = EngineBatch()  # made here: the store checks only what came from outside (clock, plan)
        for ev, t in deferred:
            seq += 1
            envs.append(construct(EventEnvelope, run_id=run_id, seq=seq, ts_millis=t, event=ev))
        for ev in new:
            seq += 1
            envs.append(construct(EventEnvelope, run_id=run_id, seq=seq, ts_millis=stamp, event=ev))
        if blobs and self.blobs is not None:
            head = await self.blobs.unit.commit(run_id, durable, envs, blobs)  # paired when made
            self.blobs.settle(blobs)
        else:
            head = await self.store.append(run_id, durable, envs)
        self.appends += 1
        seq = durable + len(deferred)  # deferred events were tracked when deferred
        self._durable = head
        track = self._track
        for ev in new:
            seq += 1
            track(ev, seq)
        return head

    def _track(self, ev: Any, seq: int) -> None:
        t = type(ev)
        if t is StateEntered:
            self.open[ev.state_id] = OpenAttempt(ev.state_id, ev.attempt, ev.base_snapshot_id, seq)
            return
        if t is StateCompleted or t is StateFailed:
            self.open.pop(ev.state_id, None)
            return
        if isinstance(ev, DomainEvent):
            return
        if isinstance(ev, StateEntered):
            self.open[ev.state_id] = OpenAttempt(ev.state_id, ev.attempt, ev.base_snapshot_id, seq)
        elif isinstance(ev, StateCompleted | StateFailed):
            self.open.pop(ev.state_id, None)

    def cancel_task(self, task: asyncio.Future[Any]) -> None:
        """Cancel ``task`` now, or right after its in-flight store append if it is inside one."""
        if task is self._busy:
            self._deferred.add(task)
        else:
            task.cancel()
