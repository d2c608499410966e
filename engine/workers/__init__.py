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

**Lease.** A worker holds its run's lease: an exclusive ``fcntl.flock`` on ``runs/<id>/lease``, with its pid, host
and start time written inside, and the process groups of the exec programs it is running (a resume first makes sure
those of the previous attempt are gone: ``engine.workers.lease``, ``engine.process_groups``). A second worker for
the same run refuses (exit 4, code ``lease_held``). Liveness is decided by the *lock*, never by the pid (a dead
worker can linger as an unreaped zombie whose pid still answers ``kill -0`` while its lock is released):
:func:`lease_state` says ``HELD`` (lock taken), ``STALE`` (file present, lock free, run not finished: "worker lost")
or ``NONE``. The process that spawns a worker takes the lease *first* and hands the locked descriptor to the child
(``--lease-fd``), so two ``mfm resume`` racing for one run see exactly one winner, and the loser learns it before
returning (naming the new worker: the spawner writes its pid into the lease before letting go).

**Output.** A worker's stdout and stderr pass the secrets guard before they reach ``worker.log``
(``engine.workers.log_guard``, ENGINE-SPEC §12). A failed run is recovered once: ``runs/<id>/recovery.json`` names
its recovery run, and a second resume says so (``run_already_recovered``).

**Cancel.** ``cancel_run`` records a request in the store's control plane; the worker's engine polls
it every ``cancel_poll_interval`` seconds. SIGTERM (or SIGINT) to a worker cancels cooperatively
through the ``CancelToken``. SIGKILL loses nothing: ``resume`` picks up from the stream.

The shared actions (:func:`start_run`, :func:`resume_run`, :func:`cancel_run`, :func:`replay_run`)
are used by both the command line and the TUI. Each picks the store's :class:`Launcher` once
(:func:`launcher_for`): a :class:`DetachedLauncher` (spawn a worker holding the lease) for a filesystem
store, the store's own ``engine.pool.QueueLauncher`` (insert a queue row) for a database store. The new
run's id is made by the action that needs it first (:func:`start_run`, :func:`replay_run`, a recovery in
:func:`resume_run`) and handed to the worker, which passes it to ``Engine.start``/``replay``/``recover``.

**Runs that never started.** A worker can die before it writes ``RunStarted`` (killed during start-up): the run
has no events, but its start record (``start.json``, or the queue row) makes it a *pending* run
(:func:`pending_runs`, :func:`list_run_ids`): listed, resumable (``resume`` starts it again) and discardable
(:func:`discard_run`).

**Crash loops** (``crash_loop``): consecutive orphan recoveries of one state, counted from the stream by
:class:`OrphanStreakCounter`; after ``K`` (:func:`max_orphan_recoveries`, ``$MFM_MAX_ORPHAN_RECOVERIES``, default
3) the pool stops taking a run over and monitors show it as crash-looping; an explicit resume resets the count
(:func:`reset_crash_loop`). :func:`worker_log_tail` reads what its workers left, through the secrets guard.

Modules: ``base`` (exit codes, errors, ``LeaseInfo``; what ``engine.pool`` builds on), ``lease`` (the
lease and the run-folder files), ``pending`` (runs that never started and worker logs, filesystem side),
``crash_loop``, ``launcher``, ``actions``, ``run`` (the worker itself), ``log_guard`` (its output through the secrets
guard) and ``main`` (the command line; ``__main__`` runs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_names

if TYPE_CHECKING:
    from engine.workers.actions import (
        cancel_children,
        cancel_run,
        discard_run,
        lease_state,
        list_run_ids,
        pending_run,
        pending_runs,
        read_verdict,
        replay_run,
        resume_run,
        start_run,
        worker_leases,
        worker_log_tail,
    )
    from engine.workers.base import (
        EXIT_CONFLICT,
        EXIT_DAMAGED,
        EXIT_FAILED,
        EXIT_NOT_FOUND,
        EXIT_OK,
        EXIT_STORAGE,
        EXIT_USAGE,
        LeaseInfo,
        LeaseState,
        PendingRun,
        ResumeOutcome,
        RunFolders,
        WorkerError,
        WorkerLease,
        exit_code_for,
        is_pooled,
        storage_full,
    )
    from engine.workers.crash_loop import (
        CODE_ORPHAN_RECOVERED,
        DEFAULT_MAX_ORPHAN_RECOVERIES,
        DOMAIN_EVENT_CRASH_LOOP_RESET,
        MAX_ORPHAN_RECOVERIES_ENV,
        OrphanStreak,
        OrphanStreakCounter,
        max_orphan_recoveries,
        orphan_streak,
        reset_crash_loop,
    )
    from engine.workers.launcher import DetachedLauncher, Launcher, LaunchingStore, launcher_for
    from engine.workers.lease import Lease, run_finished, verdict_path, write_pending
    from engine.workers.main import main
    from engine.workers.pending import redact_log_line
    from engine.workers.run import run_worker, verdict_json

# Names resolve on first use (PEP 562): the TUI's runs list needs ``pending``, ``lease`` and ``crash_loop``, not the
# actions and the worker, which import the whole runtime (0.25 s of `mfm tui`'s start, issue 15).
_WHERE: dict[str, str] = {
    "CODE_ORPHAN_RECOVERED": "engine.workers.crash_loop",
    "DEFAULT_MAX_ORPHAN_RECOVERIES": "engine.workers.crash_loop",
    "DOMAIN_EVENT_CRASH_LOOP_RESET": "engine.workers.crash_loop",
    "DetachedLauncher": "engine.workers.launcher",
    "EXIT_CONFLICT": "engine.workers.base",
    "EXIT_DAMAGED": "engine.workers.base",
    "EXIT_FAILED": "engine.workers.base",
    "EXIT_NOT_FOUND": "engine.workers.base",
    "EXIT_OK": "engine.workers.base",
    "EXIT_STORAGE": "engine.workers.base",
    "EXIT_USAGE": "engine.workers.base",
    "Launcher": "engine.workers.launcher",
    "LaunchingStore": "engine.workers.launcher",
    "Lease": "engine.workers.lease",
    "LeaseInfo": "engine.workers.base",
    "LeaseState": "engine.workers.base",
    "MAX_ORPHAN_RECOVERIES_ENV": "engine.workers.crash_loop",
    "OrphanStreak": "engine.workers.crash_loop",
    "OrphanStreakCounter": "engine.workers.crash_loop",
    "PendingRun": "engine.workers.base",
    "ResumeOutcome": "engine.workers.base",
    "RunFolders": "engine.workers.base",
    "WorkerError": "engine.workers.base",
    "WorkerLease": "engine.workers.base",
    "cancel_children": "engine.workers.actions",
    "cancel_run": "engine.workers.actions",
    "discard_run": "engine.workers.actions",
    "exit_code_for": "engine.workers.base",
    "is_pooled": "engine.workers.base",
    "launcher_for": "engine.workers.launcher",
    "lease_state": "engine.workers.actions",
    "list_run_ids": "engine.workers.actions",
    "main": "engine.workers.main",
    "max_orphan_recoveries": "engine.workers.crash_loop",
    "orphan_streak": "engine.workers.crash_loop",
    "pending_run": "engine.workers.actions",
    "pending_runs": "engine.workers.actions",
    "read_verdict": "engine.workers.actions",
    "redact_log_line": "engine.workers.pending",
    "replay_run": "engine.workers.actions",
    "reset_crash_loop": "engine.workers.crash_loop",
    "resume_run": "engine.workers.actions",
    "run_finished": "engine.workers.lease",
    "run_worker": "engine.workers.run",
    "start_run": "engine.workers.actions",
    "storage_full": "engine.workers.base",
    "verdict_json": "engine.workers.run",
    "verdict_path": "engine.workers.lease",
    "worker_leases": "engine.workers.actions",
    "worker_log_tail": "engine.workers.actions",
    "write_pending": "engine.workers.lease",
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())


__all__ = [
    "CODE_ORPHAN_RECOVERED",
    "DEFAULT_MAX_ORPHAN_RECOVERIES",
    "DOMAIN_EVENT_CRASH_LOOP_RESET",
    "EXIT_CONFLICT",
    "EXIT_DAMAGED",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORAGE",
    "EXIT_USAGE",
    "MAX_ORPHAN_RECOVERIES_ENV",
    "DetachedLauncher",
    "Launcher",
    "LaunchingStore",
    "Lease",
    "LeaseInfo",
    "LeaseState",
    "OrphanStreak",
    "OrphanStreakCounter",
    "PendingRun",
    "ResumeOutcome",
    "RunFolders",
    "WorkerError",
    "WorkerLease",
    "cancel_children",
    "cancel_run",
    "discard_run",
    "exit_code_for",
    "is_pooled",
    "launcher_for",
    "lease_state",
    "list_run_ids",
    "main",
    "max_orphan_recoveries",
    "orphan_streak",
    "pending_run",
    "pending_runs",
    "read_verdict",
    "redact_log_line",
    "replay_run",
    "reset_crash_loop",
    "resume_run",
    "run_finished",
    "run_worker",
    "start_run",
    "storage_full",
    "verdict_json",
    "verdict_path",
    "worker_leases",
    "worker_log_tail",
    "write_pending",
]
