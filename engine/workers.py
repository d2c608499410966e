"""Detached worker processes, run leases, and the start/resume/cancel/replay actions.

A run executes in a **worker process**, detached from the terminal that asked for it (its own
session, stdin from ``/dev/null``, stdout/stderr appended to ``runs/<id>/worker.log``), so closing
the TUI or losing an SSH connection never stops a run::

    python -m engine.workers --store STORE [--ops MODULE …] run --run-id ID --manifest MANIFEST_ID
    python -m engine.workers --store STORE [--ops MODULE …] resume RUN_ID
    python -m engine.workers --store STORE [--ops MODULE …] replay SOURCE_RUN_ID --replay-run-id ID
    python -m engine.workers --store STORE [--ops MODULE …] recover FAILED_RUN_ID --recovery-run-id ID

(``mfm worker …`` is the same entry point.)

**Database stores** (``--store postgresql://…``): nothing is spawned. The actions below QUEUE the run
(``engine.pool``: a ``mfm_run_queue`` row) and ``mfm worker serve`` processes on any number of hosts
claim and execute it; the lease is that row (:func:`lease_state` reads it), cancel requests travel
through the store's control table::

    python -m engine.workers --store postgresql://… [--ops MODULE …] serve [--concurrency N] [--host-name NAME]

**Lease.** A worker holds its run's lease: an exclusive ``fcntl.flock`` on ``runs/<id>/lease``, with
its pid, host and start time written inside. A second worker for the same run refuses (exit 4,
code ``lease_held``). Liveness is decided by the *lock*, never by the pid (a dead worker can
linger as an unreaped zombie whose pid still answers ``kill -0`` while its lock is released):
:func:`lease_state` says ``HELD`` (lock taken), ``STALE`` (file present, lock free, run not
finished: "worker lost") or ``NONE``. The process that spawns a worker takes the lease *first* and
hands the locked descriptor to the child (``--lease-fd``), so two ``mfm resume`` racing for one run
see exactly one winner, and the loser learns it before returning.

**Cancel.** ``cancel_run`` records a request in the store's control plane; the worker's engine polls
it every ``cancel_poll_interval`` seconds. SIGTERM (or SIGINT) to a worker cancels cooperatively
through the ``CancelToken``. SIGKILL loses nothing: ``resume`` picks up from the stream.

The shared actions (:func:`start_run`, :func:`resume_run`, :func:`cancel_run`, :func:`replay_run`)
are used by both the command line and the TUI.
"""

from __future__ import annotations

import sys

from engine._workers_actions import ResumeOutcome, cancel_run, read_verdict, replay_run, resume_run, start_run
from engine._workers_actions import _write_pending as _write_pending
from engine._workers_actions import verdict_path as verdict_path
from engine._workers_base import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    RunFolders,
    WorkerError,
    exit_code_for,
    is_pooled,
)
from engine._workers_lease import Lease, LeaseInfo, LeaseState, lease_state, run_finished
from engine._workers_main import main
from engine._workers_main import open_store as open_store
from engine._workers_run import _verdict_json as _verdict_json
from engine._workers_run import run_worker as run_worker
from engine._workers_spawn import spawn_worker

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "Lease",
    "LeaseInfo",
    "LeaseState",
    "ResumeOutcome",
    "RunFolders",
    "WorkerError",
    "cancel_run",
    "exit_code_for",
    "is_pooled",
    "lease_state",
    "main",
    "read_verdict",
    "replay_run",
    "resume_run",
    "run_finished",
    "spawn_worker",
    "start_run",
]


if __name__ == "__main__":
    sys.exit(main())
