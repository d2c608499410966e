"""Crash loops: runs whose worker dies in the same state again and again (see :mod:`engine.workers`).

An orphan restart is not bounded by ``max_attempts`` (ENGINE-SPEC §13 step 9), so a handler that kills its own
worker would be taken over for ever by the pool. The stream shows every such death: a resume that finds an open
attempt closes it with ``StateFailed{orphan_attempt_recovered}`` (§13 step 9). :class:`OrphanStreakCounter`
counts, per state, how many of those came in a row (a ``StateCompleted`` or any other ``StateFailed`` of that state
ends its streak), as a pure fold of the stream; the pool (before taking a run over) and the monitor's run model (for
its "crash-looping at S" status) both use it.

**The limit** ``K`` is one setting, the environment variable ``MFM_MAX_ORPHAN_RECOVERIES`` (default 3), read by
:func:`max_orphan_recoveries` in every process that needs it (``mfm worker serve``, ``mfm runs``/``show``, the TUI,
detached workers). A run is crash-looping once a state has ``K`` consecutive orphan recoveries and no worker holds it.

**An explicit resume resets the count.** The operator's ``mfm resume`` of a crash-looping run first appends one
domain event, ``crash_loop_reset`` ``{state_id, orphan_recoveries, limit}`` (:func:`reset_crash_loop`), and the
counter starts again from zero after it. A domain event, not a new kind: ENGINE-SPEC §4.2 allows any non-secret
name and the resume analysis (§4.3) ignores domain events, so the stream stays a valid §13 stream. Without this
marker the count could not both be a function of the stream and be reset by an operator.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from engine.engine import Stores
from engine.events import DomainEvent, EventEnvelope, RunCompleted, StateCompleted, StateFailed
from engine.ids import RunId, StateId
from engine.workers.base import WorkerError

__all__ = [
    "CODE_ORPHAN_RECOVERED",
    "DEFAULT_MAX_ORPHAN_RECOVERIES",
    "DOMAIN_EVENT_CRASH_LOOP_RESET",
    "MAX_ORPHAN_RECOVERIES_ENV",
    "OrphanStreak",
    "OrphanStreakCounter",
    "max_orphan_recoveries",
    "orphan_streak",
    "reset_crash_loop",
]

CODE_ORPHAN_RECOVERED: Final = "orphan_attempt_recovered"
"""The ``StateError`` code of the ``StateFailed`` that closes an orphan attempt on resume (ENGINE-SPEC §13 step 9)."""

DOMAIN_EVENT_CRASH_LOOP_RESET: Final = "crash_loop_reset"
"""The marker an explicit resume of a crash-looping run appends: the streak counts again from zero after it."""

DEFAULT_MAX_ORPHAN_RECOVERIES: Final = 3
MAX_ORPHAN_RECOVERIES_ENV: Final = "MFM_MAX_ORPHAN_RECOVERIES"


def max_orphan_recoveries(environ: Mapping[str, str] | None = None) -> int:
    """``K``: ``$MFM_MAX_ORPHAN_RECOVERIES`` (a positive integer), else 3. Anything else → ``WorkerError`` ``usage``."""
    raw = (os.environ if environ is None else environ).get(MAX_ORPHAN_RECOVERIES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ORPHAN_RECOVERIES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise WorkerError.new(
            "usage", f"{MAX_ORPHAN_RECOVERIES_ENV} must be a positive integer, not {raw[:40]!r}", {"value": raw[:40]}
        )
    return value


@dataclass(frozen=True, slots=True)
class OrphanStreak:
    """``recoveries`` orphan recoveries of ``state_id`` in a row (since its last other outcome and the last reset)."""

    state_id: StateId
    recoveries: int

    def reaches(self, limit: int) -> bool:
        return self.recoveries >= limit


class OrphanStreakCounter:
    """The pure fold behind :func:`orphan_streak`, fed one envelope at a time (the run model folds incrementally).

    Per state: ``StateFailed{orphan_attempt_recovered}`` adds one; ``StateCompleted`` or another ``StateFailed``
    ends the streak; a ``crash_loop_reset`` domain event ends every streak. Envelopes must come in seq order.
    """

    __slots__ = ("_order", "_streaks", "finished")

    def __init__(self) -> None:
        self._streaks: dict[StateId, int] = {}
        self._order: dict[StateId, int] = {}
        self.finished = False
        """The stream ends with ``RunCompleted`` (a finished run is never crash-looping)."""

    @classmethod
    def restore(cls, streaks: Mapping[StateId, tuple[int, int]], *, finished: bool) -> OrphanStreakCounter:
        """A counter resumed from a run summary's ``orphan_streaks`` (state → (recoveries, seq of the latest))."""
        counter = cls()
        for state_id, (recoveries, seq) in streaks.items():
            counter._streaks[state_id] = recoveries
            counter._order[state_id] = seq
        counter.finished = finished
        return counter

    def feed(self, envelope: EventEnvelope) -> None:
        ev = envelope.event
        if isinstance(ev, StateFailed):
            if ev.error.code == CODE_ORPHAN_RECOVERED:
                self._streaks[ev.state_id] = self._streaks.get(ev.state_id, 0) + 1
                self._order[ev.state_id] = envelope.seq
            else:
                self._streaks.pop(ev.state_id, None)
        elif isinstance(ev, StateCompleted):
            self._streaks.pop(ev.state_id, None)
        elif isinstance(ev, DomainEvent):
            if ev.name == DOMAIN_EVENT_CRASH_LOOP_RESET:
                self._streaks.clear()
        elif isinstance(ev, RunCompleted):
            self.finished = True

    def feed_all(self, envelopes: Iterable[EventEnvelope]) -> OrphanStreakCounter:
        for env in envelopes:
            self.feed(env)
        return self

    @property
    def longest(self) -> OrphanStreak | None:
        """The state with the most consecutive orphan recoveries (the latest on a tie), if any."""
        if not self._streaks:
            return None
        state = max(self._streaks, key=lambda s: (self._streaks[s], self._order[s]))
        return OrphanStreak(state, self._streaks[state])

    def crash_loop(self, limit: int) -> OrphanStreak | None:
        """The streak that makes the (unfinished) run crash-looping under ``limit``, else ``None``."""
        streak = self.longest
        if self.finished or streak is None or not streak.reaches(limit):
            return None
        return streak


def orphan_streak(envelopes: Iterable[EventEnvelope]) -> OrphanStreak | None:
    """The longest run of consecutive orphan recoveries of one state in this stream (see the module docstring)."""
    return OrphanStreakCounter().feed_all(envelopes).longest


async def reset_crash_loop(stores: Stores, run_id: RunId, limit: int, *, now_millis: int) -> OrphanStreak | None:
    """For an explicit resume, under the run's lease: if the run is crash-looping, append ``crash_loop_reset``.

    Returns the streak that was reset (``None``: not crash-looping, nothing written)."""
    events = stores.events
    head = await events.head_seq(run_id)
    if head == 0:
        return None
    streak = OrphanStreakCounter().feed_all(await events.read_range(run_id, 1, head)).crash_loop(limit)
    if streak is None:
        return None
    marker = DomainEvent(
        name=DOMAIN_EVENT_CRASH_LOOP_RESET,
        payload={"state_id": str(streak.state_id), "orphan_recoveries": streak.recoveries, "limit": limit},
    )
    await events.append(run_id, head, [EventEnvelope(run_id=run_id, seq=head + 1, ts_millis=now_millis, event=marker)])
    return streak
