"""Exit codes, ``WorkerError``, lease and resume outcomes, and the store shapes shared by the worker modules and
the database pool (see :mod:`engine.workers`). Depends on nothing else in ``engine.workers``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from engine.engine import Stores
from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.events import RunCompleted, RunStatus
from engine.ids import RunId

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "HasStores",
    "LeaseInfo",
    "LeaseState",
    "ResumeOutcome",
    "RunFolders",
    "WorkerError",
    "ended_failed",
    "exit_code_for",
    "is_pooled",
    "require_run",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4

_NOT_FOUND_CODES = frozenset(
    {
        "run_not_found",
        "unknown_operation",
        "operation_version_unknown",
        "artifact_not_found",
        "manifest_not_found",
        "run_prefix_unknown",
        "store_not_found",
    }
)
_CONFLICT_CODES = frozenset({"lease_held", "run_already_finished", "worker_alive"})
_FAILED_CODES = frozenset({"worker_lost", "worker_failed"})


def exit_code_for(err: MfmError) -> int:
    """The documented exit code of an error: 3 not found, 4 conflict, 1 run/worker failure, else 2."""
    if err.code in _NOT_FOUND_CODES:
        return EXIT_NOT_FOUND
    if err.code in _CONFLICT_CODES:
        return EXIT_CONFLICT
    if err.code in _FAILED_CODES:
        return EXIT_FAILED
    return EXIT_USAGE


class WorkerError(MfmError):
    """Lease conflicts and worker problems: ``lease_held``, ``worker_lost``, ``run_not_found`` …"""

    @classmethod
    def new(cls, code: str, message: str, details: Any = None) -> WorkerError:
        return cls(ErrorInfo.new(code, message, category=ErrorCategory.UNKNOWN, details=details))


class LeaseState(StrEnum):
    NONE = "none"
    HELD = "held"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """The lease of one run; ``pid``/``host``/``started_at`` describe the last holder, if any."""

    state: LeaseState
    pid: int | None = None
    host: str | None = None
    started_at: int | None = None
    """Milliseconds since the epoch when the holder took the lease."""
    action: str | None = None


@dataclass(frozen=True, slots=True)
class ResumeOutcome:
    run_id: RunId
    spawned_pid: int | None
    """``None`` when the run had already finished (nothing to do)."""
    finished: bool
    recovery_run_id: RunId | None = None
    """Set when ``run_id`` had failed: the new recovery run that carries on (``Engine.recover``)."""


class HasStores(Protocol):
    @property
    def stores(self) -> Stores: ...


class RunFolders(Protocol):
    """What the lease code needs from a filesystem store (``engine.stores.fs.FsStore``)."""

    @property
    def stores(self) -> Stores: ...

    def run_dir(self, run_id: RunId) -> Path: ...

    def events_path(self, run_id: RunId) -> Path: ...

    def open_run_dir(self, run_id: RunId, *, create: bool = False) -> int: ...


def is_pooled(store: Any) -> bool:
    """Whether ``store`` is a database store whose runs go through the worker-pool queue (``engine.pool``)."""
    return getattr(store, "queue", None) is not None and not callable(getattr(store, "run_dir", None))


async def require_run(store: HasStores, run_id: RunId) -> None:
    """``run_not_found`` unless the run has events."""
    if await store.stores.events.head_seq(run_id) == 0:
        raise WorkerError.new("run_not_found", f"run {run_id} not found")


async def ended_failed(store: HasStores, run_id: RunId) -> bool:
    """Whether the run's stream ends with ``RunCompleted{Failed}``."""
    head = await store.stores.events.head_seq(run_id)
    last = await store.stores.events.read_range(run_id, head, head)
    return bool(last) and isinstance(last[0].event, RunCompleted) and last[0].event.status is RunStatus.FAILED
