"""The run model's statuses: run/state/lease enums, the urgency rank and the lease probe mapping.

Private to :mod:`mfm_tui.run_model` (which re-exports every public name); pure, no Textual, no IO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum

from engine.events import RunStatus as EngineRunStatus
from engine.ids import RunId

CODE_RUN_CANCELLED = "run_cancelled"


class RunStatus(StrEnum):
    """What a run is doing, as the monitor sees it."""

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
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


_FINAL_STATUS: Mapping[EngineRunStatus, RunStatus] = {
    EngineRunStatus.COMPLETED: RunStatus.COMPLETED,
    EngineRunStatus.FAILED: RunStatus.FAILED,
    EngineRunStatus.CANCELLED: RunStatus.CANCELLED,
}

URGENCY: Mapping[RunStatus, int] = {
    RunStatus.FAILED: 0,
    RunStatus.WORKER_LOST: 1,
    RunStatus.RETRYING: 2,
    RunStatus.CANCELLING: 3,
    RunStatus.RUNNING: 4,
    RunStatus.PENDING: 5,
    RunStatus.CANCELLED: 6,
    RunStatus.COMPLETED: 7,
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
