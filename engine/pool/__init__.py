"""The database worker pool: runs on a PostgreSQL store are queued and executed by ``mfm worker serve`` processes
on any number of hosts.

**Queue and lease.** One table next to the store's, ``mfm_run_queue`` (created on first use)::

    run_id uuid PRIMARY KEY        the run to execute (for replay/recover: the NEW run)
    action text                    start | resume | replay | recover
    manifest_id text               start: the stored manifest
    source_run_id uuid             replay/recover: the run replayed/recovered
    args text                      JSON object (free-form extras, e.g. the operation modules of the requester)
    enqueued_at timestamptz
    owner_token uuid               the current claim (NULL: queued, or done)
    owner_host text, owner_pid int the holder (kept after the run is done: ``mfm runs`` shows HOST)
    claimed_at, heartbeat_at, lease_expires_at timestamptz
    claims int                     how many times it was claimed (> 1: a worker was lost and another took over)
    done_at timestamptz, outcome text, result text, last_error text
    exec_groups text               JSON: the holder's running exec process groups and its machine (see below)

Starting a run on a database store (``engine.workers.start_run``) stores its manifest and inserts a row; it does
not spawn anything: the store's launcher (``PostgresPoolStore.launcher``, a :class:`QueueLauncher`) queues the run
where a filesystem store's launcher would spawn a worker.

A worker claims rows with ``SELECT … FOR UPDATE SKIP LOCKED`` (never blocking on a row another worker is claiming),
ordered by ``enqueued_at``, whose ``owner_token`` is NULL or whose lease expired. The claim sets a fresh
``owner_token`` and ``lease_expires_at = clock_timestamp() + ttl``; the worker's heartbeat renews all its leases in
one statement every ``heartbeat`` seconds (``WHERE owner_token = ANY(…)``). All times are the database server's
clock, so hosts with skewed clocks agree. A run whose worker died (SIGKILL, host down) is claimed again once its
lease has expired and is resumed from its stream (``Engine.resume``: §13) — unless its stream shows ``K``
consecutive orphan recoveries of one state (``engine.workers.crash_loop``): such a takeover *parks* the run instead
(``outcome = 'crash_looping'``, ``last_error`` says where), until an explicit ``resume`` queues it again (that claim
is not a takeover: it resets the count). The claim says which it is (``Claim.taken_over``: the row still had an
owner whose lease expired). Before a takeover executes anything, it makes sure the exec process groups the previous
holder recorded in ``exec_groups`` are gone (``engine.process_groups``: SIGKILLed when on this machine and still the
same processes, never a reused pid; a group on another host cannot be killed from here and is logged). The table
gains columns through ``ALTER TABLE … ADD COLUMN IF NOT EXISTS`` when a store made by an older version is opened.

**One writer at a time.** Two guards:

1. *The lease, checked before each append.* The worker remembers, on its own monotonic clock, when it SENT the
   claim/heartbeat that last succeeded; the database's expiry is at least ``ttl`` after that. An append is made only
   while ``now < sent + ttl - margin`` (``margin`` = ``ttl / 5``), and a heartbeat that finds its token replaced
   marks the lease lost. Once a check fails the lease stays lost for that execution: every later append (including
   the engine's attempt to record a failure) is refused with ``StorageError`` ``lease_lost``, the run's task ends
   without writing, and the claim is released. So a worker stops writing BEFORE another can claim the run.
2. *The event store's optimistic concurrency.* An append already in flight when the lease runs out could still land
   after another worker has read the head; then one of the two appends of the same ``seq`` fails with
   ``event_store_concurrency`` (the ``(run_id, seq)`` primary key) and that worker's execution stops (its claim is
   released and the run is picked up again). A stream is therefore never forked, whatever the timing.

**Cancel** goes through the store's control table (``mfm_cancels``): the owning worker's engine polls it every
``cancel_poll`` seconds. ``SIGTERM``/``SIGINT`` to ``mfm worker serve`` stops claiming, abandons its runs without
writing and releases their claims, so other workers resume them at once (no lease wait).

:func:`lease_info` is the database implementation behind ``engine.workers.lease_state`` (same ``LeaseInfo``):
``HELD`` while a worker holds an unexpired lease or the run waits in the queue (``action`` is ``queued``),
``STALE`` when the lease expired (worker lost; another worker will take the run over), else ``NONE``.

This package builds on ``engine.workers.base`` (errors, ``LeaseInfo``, ``ResumeOutcome``); ``engine.workers`` never
imports it (the launcher comes with the store; only ``mfm worker serve`` imports :func:`serve`, because psycopg is
an optional dependency). Modules: ``_sql`` (table, queries, row types), ``queue``, ``lease``, ``launcher``, ``store``
and ``worker``.
"""

from __future__ import annotations

from engine.pool._sql import ACTIONS, DEFAULT_HEARTBEAT, DEFAULT_LEASE_TTL, MAX_CLAIMS, Claim, QueueRow
from engine.pool.launcher import QueueLauncher, lease_info
from engine.pool.lease import LeasedEventStore, RunLease
from engine.pool.queue import RunQueue
from engine.pool.store import PostgresPoolStore
from engine.pool.worker import WorkerPool, serve

__all__ = [
    "ACTIONS",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_LEASE_TTL",
    "MAX_CLAIMS",
    "Claim",
    "LeasedEventStore",
    "PostgresPoolStore",
    "QueueLauncher",
    "QueueRow",
    "RunLease",
    "RunQueue",
    "WorkerPool",
    "lease_info",
    "serve",
]
