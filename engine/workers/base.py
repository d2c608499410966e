"""Exit codes, ``WorkerError``, lease and resume outcomes, and the store shapes shared by the worker modules and
the database pool (see :mod:`engine.workers`). Depends on nothing else in ``engine.workers``."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from engine.engine import Stores
from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.events import RunCompleted, RunStatus
from engine.ids import ArtifactId, RunId
from engine.process_groups import GroupCheck

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_DAMAGED",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORAGE",
    "EXIT_USAGE",
    "HasStores",
    "LeaseInfo",
    "LeaseState",
    "PendingRun",
    "ResumeOutcome",
    "RunFolders",
    "WorkerError",
    "WorkerLease",
    "already_recovered",
    "ended_failed",
    "exit_code_for",
    "is_pooled",
    "previous_attempt_alive",
    "require_run",
    "storage_full",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_STORAGE = 5
EXIT_DAMAGED = 6

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
_CONFLICT_CODES = frozenset(
    {
        "lease_held",
        "run_already_finished",
        "worker_alive",
        "run_already_started",
        "previous_attempt_alive",
        "run_already_recovered",
    }
)
_FAILED_CODES = frozenset({"worker_lost", "worker_failed"})


_STORAGE_CODES = frozenset({"storage_full"})
_DAMAGED_CODES = frozenset(
    {"run_log_corrupt", "artifact_corruption", "machine_event_decode_failed", "event_store_corruption"}
)
"""Data errors: what the store holds is damaged (a run log, an artifact), not what was asked."""
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def exit_code_for(err: MfmError) -> int:
    """The documented exit code of an error: 3 not found, 4 conflict, 5 storage full, 6 damaged data, 1 run/worker
    failure, else 2."""
    if err.code in _STORAGE_CODES:
        return EXIT_STORAGE
    if err.code in _DAMAGED_CODES:
        return EXIT_DAMAGED
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


def storage_full(exc: BaseException) -> WorkerError | None:
    """``storage_full`` (exit 5) when ``exc`` is, or was caused by, a full device or quota (ENOSPC, EDQUOT),
    whichever layer reported it (an ``OSError``, or a store's error naming the errno); else None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
            where = f" ({cause.filename})" if cause.filename else ""
            return _full(f"{cause.strerror or 'no space left on device'}{where}")
        if isinstance(cause, MfmError):
            details = cause.info.details
            if cause.code in _STORAGE_CODES:
                return None  # already says so
            if isinstance(details, dict) and details.get("errno") in ("ENOSPC", "EDQUOT"):
                return _full(cause.info.message)
        cause = cause.__cause__ or cause.__context__
    return None


def _full(what: str) -> WorkerError:
    return WorkerError.new(
        "storage_full", f"the store's device is full: {what}; free some space, then retry (`mfm doctor` checks it)"
    )


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
class WorkerLease:
    """A run a worker holds (or held, and lost): the workers view's row (``engine.workers.worker_leases``)."""

    run_id: RunId
    state: LeaseState
    """``HELD`` (a live worker; on a database store also ``action == "queued"``) or ``STALE`` (worker lost)."""
    pid: int | None
    host: str | None
    started_at: int | None
    """Milliseconds since the epoch when the holder took the lease."""
    heartbeat_age_millis: int | None
    """Database pool: time since the holder's last heartbeat (the server's clock). Filesystem store: ``None``,
    its liveness is the lease file's ``flock``, checked at the time of the call."""
    action: str | None = None

    @property
    def stale(self) -> bool:
        return self.state is LeaseState.STALE


@dataclass(frozen=True, slots=True)
class PendingRun:
    """A run that was asked to start and has no events yet: its worker is starting, died first ("not started:
    worker lost"), or (database store) it waits in the queue. ``engine.workers.pending_runs`` lists them."""

    run_id: RunId
    manifest_id: ArtifactId | None
    lease: LeaseInfo
    requested_millis: int | None = None
    """When the start was asked for (``start.json`` written, or the queue row inserted)."""
    note: str | None = None
    """What the store knows about why it did not start (a database queue row's ``last_error``), secrets withheld."""


@dataclass(frozen=True, slots=True)
class ResumeOutcome:
    run_id: RunId
    spawned_pid: int | None
    """``None`` when the run had already finished (nothing to do)."""
    finished: bool
    recovery_run_id: RunId | None = None
    """Set when ``run_id`` had failed: the new recovery run that carries on (``Engine.recover``)."""
    notes: tuple[str, ...] = ()
    """What the launcher did on the way, for the operator (e.g. a previous attempt's process group it killed)."""


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


def already_recovered(run_id: RunId, recovery_run_id: RunId) -> WorkerError:
    """``run_already_recovered``: the failed run ``run_id`` has its recovery run already (resume that one)."""
    return WorkerError.new(
        "run_already_recovered",
        f"run {run_id} already recovered as {recovery_run_id}; `mfm resume {recovery_run_id[:8]}` continues that run",
        {"recovery_run_id": str(recovery_run_id)},
    )


def previous_attempt_alive(run_id: RunId, check: GroupCheck) -> WorkerError:
    """``previous_attempt_alive``: an exec process group of the run's previous attempt survived SIGKILL."""
    return WorkerError.new(
        "previous_attempt_alive",
        f"run {run_id}: {check.describe()}; not starting another attempt beside it",
        {"pgid": check.group.pgid, "pids": list(check.pids)},
    )


async def require_run(store: HasStores, run_id: RunId) -> None:
    """``run_not_found`` unless the run has events."""
    if await store.stores.events.head_seq(run_id) == 0:
        raise WorkerError.new("run_not_found", f"run {run_id} not found")


async def ended_failed(store: HasStores, run_id: RunId) -> bool:
    """Whether the run's stream ends with ``RunCompleted{Failed}``."""
    head = await store.stores.events.head_seq(run_id)
    last = await store.stores.events.read_range(run_id, head, head)
    return bool(last) and isinstance(last[0].event, RunCompleted) and last[0].event.status is RunStatus.FAILED
