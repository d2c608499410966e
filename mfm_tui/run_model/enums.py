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
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    WORKER_LOST = "worker_lost"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")

    @property
    def is_finished(self) -> bool:
        return self in (RunDisplayStatus.COMPLETED, RunDisplayStatus.FAILED, RunDisplayStatus.CANCELLED)


FINAL_STATUS: Mapping[EngineRunStatus, RunDisplayStatus] = {
    EngineRunStatus.COMPLETED: RunDisplayStatus.COMPLETED,
    EngineRunStatus.FAILED: RunDisplayStatus.FAILED,
    EngineRunStatus.CANCELLED: RunDisplayStatus.CANCELLED,
}

URGENCY: Mapping[RunDisplayStatus, int] = {
    RunDisplayStatus.FAILED: 0,
    RunDisplayStatus.WORKER_LOST: 1,
    RunDisplayStatus.RETRYING: 2,
    RunDisplayStatus.CANCELLING: 3,
    RunDisplayStatus.RUNNING: 4,
    RunDisplayStatus.PENDING: 5,
    RunDisplayStatus.CANCELLED: 6,
    RunDisplayStatus.COMPLETED: 7,
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
    """The run's worker lease: ``STALE`` (file present, lock free) on an unfinished run = worker lost."""

    NONE = "none"
    HELD = "held"
    STALE = "stale"
    UNKNOWN = "unknown"


LeaseProbe = Callable[[RunId], LeaseStatus]
"""Injected: ``run_id -> LeaseStatus`` (wraps ``engine.workers.lease_state`` for a filesystem store)."""


def lease_status_of(info: object) -> LeaseStatus:
    """Map whatever ``engine.workers.lease_state`` returns (an info with ``.state``, an enum, a str)."""
    state = getattr(info, "state", info)
    name = str(getattr(state, "name", None) or getattr(state, "value", None) or state).lower()
    try:
        return LeaseStatus(name)
    except ValueError:
        return LeaseStatus.UNKNOWN
