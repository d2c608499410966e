"""Exit codes, ``WorkerError`` and the store shapes shared by the worker modules (see :mod:`engine.workers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from engine.engine import Stores
from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.ids import RunId

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "RunFolders",
    "WorkerError",
    "_HasStores",
    "exit_code_for",
    "is_pooled",
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


class RunFolders(Protocol):
    """What the lease code needs from a filesystem store (``engine.stores.fs.FsStore``)."""

    @property
    def stores(self) -> Stores: ...

    def run_dir(self, run_id: RunId) -> Path: ...

    def events_path(self, run_id: RunId) -> Path: ...


class _HasStores(Protocol):
    @property
    def stores(self) -> Stores: ...


def is_pooled(store: Any) -> bool:
    """Whether ``store`` is a database store whose runs go through the worker-pool queue (``engine.pool``)."""
    return getattr(store, "queue", None) is not None and not callable(getattr(store, "run_dir", None))
