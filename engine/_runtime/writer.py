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
from engine.events import DomainEvent, EventEnvelope, StateCompleted, StateEntered, StateFailed
from engine.ids import ArtifactId, RunId, StateId
from engine.stores._base import EventStore

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

    @property
    def head(self) -> int:
        return self.next_seq - 1

    async def append(
        self, events: Sequence[Any], *, after: Callable[[], None] | None = None, ts: int | None = None
    ) -> int:
        """Append ``events`` (kernel variants or ``DomainEvent``) as one atomic batch; return the new head.

        ``after`` runs right after the store accepted the batch, even if the caller was cancelled
        meanwhile (in-memory bookkeeping that must match what is durable).
        """
        if not events:
            return self.head
        task = asyncio.ensure_future(self._append(list(events), after, ts))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                await asyncio.wait({task})
            raise

    async def _append(self, events: list[Any], after: Callable[[], None] | None, ts: int | None) -> int:
        async with self._lock:
            if ts is None:
                ts = self.clock.now_millis()
            first = self.next_seq
            envs = [
                EventEnvelope.model_construct(run_id=self.run_id, seq=first + i, ts_millis=ts, event=ev)
                for i, ev in enumerate(events)
            ]
            head = await self.store.append(self.run_id, first - 1, envs)
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
            return head
