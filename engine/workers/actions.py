"""The shared start/resume/cancel/replay actions, used by both the command line and the TUI (see
:mod:`engine.workers`). Each action picks the store's :class:`~engine.workers.launcher.Launcher` once: a detached
worker process for a filesystem store, the run queue for a database store."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from engine.child_runs import request_cancel_children, unfinished_children
from engine.ids import RunId
from engine.operations import OperationRegistry, PreparedRun, prepare_run
from engine.stores import RunLister
from engine.workers.base import (
    LeaseInfo,
    PendingRun,
    ResumeOutcome,
    RunFolders,
    WorkerError,
    WorkerLease,
    require_run,
)
from engine.workers.launcher import LaunchingStore, launcher_for
from engine.workers.pending import fs_pending_run

__all__ = [
    "cancel_children",
    "cancel_run",
    "discard_run",
    "lease_state",
    "list_run_ids",
    "pending_run",
    "pending_runs",
    "read_verdict",
    "replay_run",
    "resume_run",
    "start_run",
    "worker_leases",
    "worker_log_tail",
]


async def start_run(
    store: RunFolders | LaunchingStore,
    registry: OperationRegistry,
    op_id: str,
    raw_params: Any,
    *,
    ops_modules: Sequence[str] = (),
) -> PreparedRun:
    """Validate, store the manifest, take the new run's lease and spawn its worker.

    The new run's id is made here. Invalid input raises ``OperationError`` before anything is written. On a
    database store the run is queued for the worker pool instead.
    """
    launcher = launcher_for(store)
    prepared = await prepare_run(store.stores, registry, op_id, raw_params, run_id=RunId.new_v4())
    await launcher.launch("start", prepared.run_id, manifest_id=prepared.manifest_id, ops_modules=ops_modules)
    return prepared


async def resume_run(
    store: RunFolders | LaunchingStore, run_id: RunId, *, ops_modules: Sequence[str] = ()
) -> ResumeOutcome:
    """Spawn a worker that resumes ``run_id``. A live worker → ``lease_held``; a finished run → no-op.

    A run whose worker died before writing ``RunStarted`` is started again from its stored manifest. A run that
    ended Failed gets a recovery run (``ResumeOutcome.recovery_run_id``). On a database store the resume is queued.
    """
    return await launcher_for(store).resume(run_id, ops_modules=ops_modules)


async def cancel_run(
    store: RunFolders | LaunchingStore,
    run_id: RunId,
    reason: str = "cancelled by operator",
    *,
    ops_modules: Sequence[str] = (),
) -> bool:
    """Record a cancel request (a finished run → ``run_already_finished``; unknown → ``run_not_found``).

    When no worker holds the run (worker lost), a resume worker is spawned to carry the cancel out
    (it sees the request and closes the run as Cancelled). Returns whether one was spawned.
    The parent's unfinished child runs (§16) are asked to cancel too (:func:`cancel_children`).
    """
    launcher = launcher_for(store)
    spawned = await launcher.cancel(run_id, reason, ops_modules=ops_modules)
    children = await request_cancel_children(store.stores, run_id, reason)
    if spawned:  # the parent had no live worker, so neither have its children: each gets one to close it
        for child in children:
            try:
                await launcher.resume(child, ops_modules=ops_modules)
            except WorkerError as err:
                if err.code != "lease_held":
                    raise
    return spawned


async def cancel_children(store: RunFolders | LaunchingStore, run_id: RunId) -> list[RunId]:
    """The children a cancel of ``run_id`` would stop (its unfinished child runs), for confirmations."""
    return await unfinished_children(store.stores, run_id)


async def replay_run(store: RunFolders | LaunchingStore, run_id: RunId, *, ops_modules: Sequence[str] = ()) -> RunId:
    """Spawn a worker that replays ``run_id`` (§0.11) as a new run; return the new run's id.

    The verdict lands in ``runs/<replay_id>/verdict.json`` once the replay run has finished.
    """
    launcher = launcher_for(store)
    await require_run(store, run_id)
    replay_id = RunId.new_v4()
    await launcher.launch("replay", replay_id, source_run_id=run_id, ops_modules=ops_modules)
    return replay_id


async def read_verdict(store: RunFolders | LaunchingStore, replay_run_id: RunId) -> dict[str, Any] | None:
    """The replay verdict once written (``verdict.json``, or the queue row's result on a database store)."""
    return await launcher_for(store).read_verdict(replay_run_id)


def lease_state(store: RunFolders | LaunchingStore, run_id: RunId) -> LeaseInfo:
    """``HELD`` when a live worker holds the lock, ``STALE`` when the lease file exists, its lock is
    free and the run is not finished ("worker lost"), else ``NONE``. Never waits.

    On a database store the same answer comes from the run's queue row (``engine.pool.lease_info``): a queued
    run not claimed yet is ``HELD`` with ``action='queued'``."""
    return launcher_for(store).lease_state(run_id)


async def pending_runs(store: RunFolders | LaunchingStore, *, exclude: Collection[RunId] = ()) -> list[PendingRun]:
    """Runs asked to start that have no events yet, so ``list_runs`` does not know them: starting (a live worker),
    not started (their worker died before ``RunStarted``: resume or discard them) or, on a database store, queued.
    A store without workers (``engine.stores.memory``) has none. ``exclude``: runs known to have events (a
    monitor passes ``list_runs``'s answer, so a rescan does not look at each run again)."""
    if not _has_workers(store):
        return []
    return await launcher_for(store).pending_runs(exclude)


def _has_workers(store: object) -> bool:
    """A database store (its own launcher) or a filesystem store (run folders under a ``root``)."""
    return isinstance(store, LaunchingStore) or getattr(store, "root", None) is not None


async def pending_run(store: RunFolders | LaunchingStore, run_id: RunId) -> PendingRun | None:
    """``run_id`` if it is one of :func:`pending_runs`."""
    if not _has_workers(store):
        return None
    if not isinstance(store, LaunchingStore):
        return fs_pending_run(store, run_id)
    return next((p for p in await pending_runs(store) if p.run_id == run_id), None)


async def list_run_ids(store: RunFolders | LaunchingStore) -> list[RunId]:
    """Every run a monitor lists: those with events (``list_runs``) and the pending ones, in no particular order."""
    events = store.stores.events
    if not isinstance(events, RunLister):
        raise WorkerError.new("store_cannot_list", f"{type(events).__name__} cannot list its runs")
    listed = list(await events.list_runs())
    return listed + [p.run_id for p in await pending_runs(store, exclude=frozenset(listed))]


async def discard_run(store: RunFolders | LaunchingStore, run_id: RunId) -> str:
    """Remove a run that never started: refused for a run with events (``run_already_started``) or a live worker
    (``lease_held``). A filesystem store moves its folder into ``quarantine/``; a database store marks its queue
    row done (``outcome = 'discarded'``). Returns where it went."""
    return await launcher_for(store).discard(run_id)


async def worker_log_tail(store: RunFolders | LaunchingStore, run_id: RunId, lines: int = 5) -> list[str]:
    """The last lines of the run's worker log (``runs/<id>/worker.log``; on a database store, what its queue row
    says), each through the secrets guard: a line that looks secret is withheld."""
    return await launcher_for(store).log_tail(run_id, lines)


async def worker_leases(store: RunFolders | LaunchingStore) -> list[WorkerLease]:
    """Every run a worker holds, or held and lost (stale), with pid, host and (database pool) heartbeat age; a
    database store also lists the runs queued for its pool. Finished runs are left out. Never waits on a lock."""
    return await launcher_for(store).leases()
