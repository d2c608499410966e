"""The engine-side appender (ENGINE-SPEC §3.4), shared by every task of one invocation.

Holds ``next_seq``; every append uses ``expected_seq = next_seq - 1``. Appends are serialised by a
lock and are *not* interrupted by task cancellation: a cancelled caller waits for its in-flight
append to land (or fail) before ``CancelledError`` propagates, so the writer's view of the stream
never diverges from the store. The writer also tracks which attempts are open (per state, §0.5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from engine._runtime.clock import Clock
from engine._wire import construct
from engine.events import DomainEvent, EventEnvelope, StateCompleted, StateEntered, StateFailed
from engine.ids import ArtifactId, RunId, StateId
from engine.stores import EventStore

__all__ = ["EventWriter", "OpenAttempt"]


class OpenAttempt:
    __slots__ = ("attempt", "base_snapshot_id", "entered_seq", "state_id")

    def __init__(self, state_id: StateId, attempt: int, base_snapshot_id: ArtifactId, entered_seq: int) -> None:
        self.state_id = state_id
        self.attempt = attempt
        self.base_snapshot_id = base_snapshot_id
        self.entered_seq = entered_seq


class EventWriter:
    def __init__(self, store: EventStore, run_id: RunId, head: int, clock: Clock) -> None:
        self.store = store
        self.run_id = run_id
        self.next_seq = head + 1
        self.clock = clock
        self.open: dict[StateId, OpenAttempt] = {}
        self.appends = 0
        self._lock = asyncio.Lock()
        self._busy: asyncio.Future[Any] | None = None
        self._deferred: set[asyncio.Future[Any]] = set()

    @property
    def head(self) -> int:
        return self.next_seq - 1

    async def append(
        self, events: Sequence[Any], *, after: Callable[[], None] | None = None, ts: int | None = None
    ) -> int:
        """Append ``events`` (kernel variants or ``DomainEvent``) as one atomic batch; return the new head.

        ``after`` runs right after the store accepted the batch (in-memory bookkeeping that must
        match what is durable). A task cancelled through :meth:`cancel_task` while its batch is in
        the store is cancelled only once the store call returned, so the writer never loses track
        of what is durable.
        """
        if not events:
            return self.head
        async with self._lock:
            if ts is None:
                ts = self.clock.now_millis()
            first = self.next_seq
            envs = [
                construct(EventEnvelope, run_id=self.run_id, seq=first + i, ts_millis=ts, event=ev)
                for i, ev in enumerate(events)
            ]
            task = asyncio.current_task()
            self._busy = task
            try:
                head = await self.store.append(self.run_id, first - 1, envs)
            except BaseException:
                self._deferred.discard(task)
                raise
            finally:
                self._busy = None
            self.appends += 1
            self.next_seq = head + 1
            for env in envs:
                ev = env.event
                if isinstance(ev, DomainEvent):
                    continue
                if isinstance(ev, StateEntered):
                    self.open[ev.state_id] = OpenAttempt(ev.state_id, ev.attempt, ev.base_snapshot_id, env.seq)
                elif isinstance(ev, StateCompleted | StateFailed):
                    self.open.pop(ev.state_id, None)
            if after is not None:
                after()
            if task is not None and task in self._deferred:
                self._deferred.discard(task)
                task.cancel()
            return head

    def cancel_task(self, task: asyncio.Future[Any]) -> None:
        """Cancel ``task`` now, or right after its in-flight store append if it is inside one."""
        if task is self._busy:
            self._deferred.add(task)
        else:
            task.cancel()
