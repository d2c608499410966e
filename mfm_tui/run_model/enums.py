"""The run model's statuses: run/state/lease enums, the urgency rank and the lease probe mapping.

Part of :mod:`mfm_tui.run_model` (its face re-exports every public name); pure, no Textual, no IO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum

from engine.events import RunStatus as EngineRunStatus
from engine.ids import RunId

__all__ = [
    "CODE_RUN_CANCELLED",
    "FINAL_STATUS",
    "URGENCY",
    "LeaseProbe",
    "LeaseStatus",
    "RunDisplayStatus",
    "StateStatus",
    "lease_status_of",
]

CODE_RUN_CANCELLED = "run_cancelled"


class RunDisplayStatus(StrEnum):
    """What a run is doing, as the monitor sees it (the engine's ``engine.events.RunStatus`` is only how it ended)."""

    PENDING = "pending"
    """No events yet and no worker: queued for a database store's pool (or not probed yet)."""
    STARTING = "starting"
    """No events yet; a live worker holds the run (it is about to write ``RunStarted``)."""
    NOT_STARTED = "not_started"
    """No events and no live worker: the worker died before ``RunStarted`` (resume or discard the run)."""
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    WORKER_LOST = "worker_lost"
    CRASH_LOOPING = "crash_looping"
    """No live worker, and one state's attempts ended in K consecutive orphan recoveries (``engine.workers``)."""

    @property
    def label(self) -> str:
        return _LABELS.get(self.value) or self.value.replace("_", " ")

    @property
    def is_finished(self) -> bool:
        return self in (RunDisplayStatus.COMPLETED, RunDisplayStatus.FAILED, RunDisplayStatus.CANCELLED)


_LABELS: Mapping[str, str] = {"not_started": "not started: worker lost", "crash_looping": "crash-looping"}

FINAL_STATUS: Mapping[EngineRunStatus, RunDisplayStatus] = {
    EngineRunStatus.COMPLETED: RunDisplayStatus.COMPLETED,
    EngineRunStatus.FAILED: RunDisplayStatus.FAILED,
    EngineRunStatus.CANCELLED: RunDisplayStatus.CANCELLED,
}

URGENCY: Mapping[RunDisplayStatus, int] = {
    RunDisplayStatus.FAILED: 0,
    RunDisplayStatus.CRASH_LOOPING: 1,
    RunDisplayStatus.WORKER_LOST: 2,
    RunDisplayStatus.NOT_STARTED: 3,
    RunDisplayStatus.RETRYING: 4,
    RunDisplayStatus.CANCELLING: 5,
    RunDisplayStatus.RUNNING: 6,
    RunDisplayStatus.STARTING: 7,
    RunDisplayStatus.PENDING: 8,
    RunDisplayStatus.CANCELLED: 9,
    RunDisplayStatus.COMPLETED: 10,
}
"""Sort rank, most urgent first (the runs list's default order)."""


class StateStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_done(self) -> bool:
        return self in (StateStatus.COMPLETED, StateStatus.SKIPPED)


class LeaseStatus(StrEnum):
    """The run's worker lease: ``STALE`` (file present, lock free) on an unfinished run = worker lost; ``QUEUED``: a
    database store's run waiting in the queue (held by no worker yet, but nobody has lost it either)."""

    NONE = "none"
    HELD = "held"
    STALE = "stale"
    UNKNOWN = "unknown"
    QUEUED = "queued"

    @property
    def is_live(self) -> bool:
        """A worker holds the run, or the pool will give it one: nothing is lost."""
        return self in (LeaseStatus.HELD, LeaseStatus.QUEUED)


LeaseProbe = Callable[[RunId], LeaseStatus]
"""Injected: ``run_id -> LeaseStatus`` (wraps ``engine.workers.lease_state`` for a filesystem store)."""


def lease_status_of(info: object) -> LeaseStatus:
    """Map whatever ``engine.workers.lease_state`` returns (an info with ``.state``, an enum, a str); a database
    store's queued run (``HELD`` with ``action == 'queued'``) is ``QUEUED``."""
    state = getattr(info, "state", info)
    if str(getattr(state, "value", state)).lower() == "held" and getattr(info, "action", None) == "queued":
        return LeaseStatus.QUEUED
    name = str(getattr(state, "name", None) or getattr(state, "value", None) or state).lower()
    try:
        return LeaseStatus(name)
    except ValueError:
        return LeaseStatus.UNKNOWN
