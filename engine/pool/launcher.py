"""``QueueLauncher``: the launcher of a database store (``engine.workers.Launcher``): actions queue their runs in
``mfm_run_queue`` instead of spawning workers, and :func:`lease_info` reads a run's lease from its queue row (see
:mod:`engine.pool`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from engine.events import RunCompleted
from engine.ids import ArtifactId, RunId
from engine.runtime import request_cancel
from engine.workers.base import (
    LeaseInfo,
    LeaseState,
    PendingRun,
    ResumeOutcome,
    WorkerError,
    WorkerLease,
    already_recovered,
    ended_failed,
    require_run,
)
from engine.workers.pending import redact_log_line

if TYPE_CHECKING:
    from engine.pool.queue import RunQueue
    from engine.pool.store import PostgresPoolStore

__all__ = ["QueueLauncher", "lease_info"]


class QueueLauncher:
    """A database store's launcher: a queue row per run, executed by ``mfm worker serve`` processes."""

    def __init__(self, store: PostgresPoolStore) -> None:
        self.store = store

    @property
    def queue(self) -> RunQueue:
        return self.store.queue

    async def launch(
        self,
        action: str,
        run_id: RunId,
        *,
        manifest_id: ArtifactId | None = None,
        source_run_id: RunId | None = None,
        ops_modules: Sequence[str] = (),
        again: bool = False,
    ) -> None:
        """Queue ``run_id`` for the worker pool (``again``: a finished row is queued anew)."""
        await self.queue.enqueue(
            run_id,
            action,
            manifest_id=manifest_id,
            source_run_id=source_run_id,
            args={"ops": list(ops_modules)},
            again=again,
        )

    async def resume(self, run_id: RunId, *, ops_modules: Sequence[str] = ()) -> ResumeOutcome:
        """Queue the resume (or a recovery run for a failed run); a queued or held run → ``lease_held``.

        A run whose worker was lost needs nothing: the pool takes it over once its lease expires."""
        store = self.store
        queue = self.queue
        row = await queue.get(run_id)
        args = {"ops": list(ops_modules)}
        if await store.stores.events.head_seq(run_id) == 0:
            if row is None or row.manifest_id is None:
                raise WorkerError.new("run_not_found", f"run {run_id} not found")
            if not row.done:
                if row.owned and not row.lease_live:
                    return ResumeOutcome(run_id, None, False)  # died before RunStarted: the pool takes it over
                raise _held(run_id, row)
            await queue.enqueue(run_id, "start", manifest_id=ArtifactId(row.manifest_id), args=args, again=True)
            return ResumeOutcome(run_id, None, False)
        if await _finished_remote(store, run_id):
            if not await ended_failed(store, run_id):
                return ResumeOutcome(run_id, None, True)
            return await self._recover(run_id, args)
        if row is not None and not row.done:
            if row.owned and not row.lease_live:
                return ResumeOutcome(run_id, None, False)  # worker lost: the pool takes it over by itself
            raise _held(run_id, row)
        if row is None:
            await queue.enqueue(run_id, "resume", args=args)
        else:
            await queue.enqueue(run_id, row.action if row.action != "start" else "resume", args=args, again=True)
        return ResumeOutcome(run_id, None, False)

    async def _recover(self, run_id: RunId, args: dict[str, Any]) -> ResumeOutcome:
        """Queue THE recovery run of failed run ``run_id``: ``run_already_recovered`` (naming it) if one was queued
        before, unless that one gave up without ever starting (then it is queued again, same id)."""
        queue = self.queue
        existing = await queue.recovery_of(run_id)
        if existing is not None:
            recovery_id, done = existing
            if not done or await self.store.stores.events.head_seq(recovery_id) > 0:
                raise already_recovered(run_id, recovery_id)
            if not await queue.enqueue(recovery_id, "recover", source_run_id=run_id, args=args, again=True):
                raise already_recovered(run_id, recovery_id)  # another resume queued it again just now
            return ResumeOutcome(run_id, None, True, recovery_id)
        recovery_id = RunId.new_v4()
        queued = await queue.enqueue_recovery(recovery_id, run_id, args)
        if queued != recovery_id:
            raise already_recovered(run_id, queued)
        return ResumeOutcome(run_id, None, True, recovery_id)

    async def cancel(self, run_id: RunId, reason: str, *, ops_modules: Sequence[str] = ()) -> bool:
        """Record a cancel request; queue a resume that carries it out when nobody will pick the run up."""
        store = self.store
        row = await self.queue.get(run_id)
        if row is None or row.manifest_id is None or await store.stores.events.head_seq(run_id) > 0:
            await require_run(store, run_id)
        if await _finished_remote(store, run_id):
            raise WorkerError.new("run_already_finished", f"run {run_id} has already finished")
        await request_cancel(store.stores, run_id, reason)
        if row is None or row.done:  # nobody will pick it up: queue a resume that carries the cancel out
            action = "start" if row is not None and row.manifest_id is not None else "resume"
            manifest = None if row is None or row.manifest_id is None else ArtifactId(row.manifest_id)
            return bool(await self.queue.enqueue(run_id, action, manifest_id=manifest, again=True))
        return False

    async def read_verdict(self, replay_run_id: RunId) -> dict[str, Any] | None:
        row = await self.queue.get(replay_run_id)
        return None if row is None else row.result

    def lease_state(self, run_id: RunId) -> LeaseInfo:
        return lease_info(self.store, run_id)

    async def leases(self) -> list[WorkerLease]:
        out = []
        for run_id, action, owned, host, pid, claimed, live, age in await self.queue.leases():
            if not owned:
                out.append(WorkerLease(run_id, LeaseState.HELD, None, None, None, None, "queued"))
                continue
            state = LeaseState.HELD if live else LeaseState.STALE
            out.append(WorkerLease(run_id, state, pid, host, claimed, age, action))
        return out

    async def pending_runs(self, exclude: Collection[RunId] = ()) -> list[PendingRun]:
        """Queue rows whose run has no events yet: queued, being started, or whose worker died first."""
        out = []
        for run_id, manifest_id, enqueued in await self.queue.unstarted():
            if run_id in exclude:
                continue
            row = await self.queue.get(run_id)
            note = None if row is None or not row.last_error else redact_log_line(row.last_error)
            out.append(PendingRun(run_id, manifest_id, lease_info(self.store, run_id), enqueued, note))
        return out

    async def discard(self, run_id: RunId) -> str:
        """Mark the queue row of a run that never started done (``outcome = 'discarded'``)."""
        row = await self.queue.get(run_id)
        if row is None:
            raise WorkerError.new("run_not_found", f"run {run_id} not found")
        if await self.store.stores.events.head_seq(run_id) > 0:
            raise WorkerError.new(
                "run_already_started", f"run {run_id} has events: only a run that never started can be discarded"
            )
        if not await self.queue.discard(run_id):
            raise _held(run_id, row)
        return f"its queue row (outcome 'discarded', schema {self.store.schema})"

    async def log_tail(self, run_id: RunId, lines: int) -> list[str]:
        """What the queue row says: no worker log lives in the database (each `mfm worker serve` logs to its own
        output), only the last error and outcome its workers recorded."""
        row = await self.queue.get(run_id)
        if row is None or lines <= 0:
            return []
        said = [ln for ln in (row.last_error or "").splitlines() if ln.strip()]
        if row.outcome:
            said.append(f"queue row outcome: {row.outcome} after {row.claims} claim(s)")
        return [redact_log_line(ln) for ln in said[-lines:]]


def _held(run_id: RunId, row: Any) -> WorkerError:
    where = f"held by pid {row.pid} on {row.host}" if row.owned else "queued for the worker pool"
    return WorkerError.new(
        "lease_held",
        f"run {run_id} is {where}; wait for it or `mfm cancel {run_id}`",
        {"pid": row.pid, "host": row.host},
    )


async def _finished_remote(store: PostgresPoolStore, run_id: RunId) -> bool:
    head = await store.stores.events.head_seq(run_id)
    if head == 0:
        return False
    last = await store.stores.events.read_range(run_id, head, head)
    return bool(last) and isinstance(last[-1].event, RunCompleted)


# ---------------------------------------------------------------------------------------------
# Lease probe (the database implementation behind engine.workers.lease_state)
# ---------------------------------------------------------------------------------------------


def lease_info(store: PostgresPoolStore, run_id: RunId) -> LeaseInfo:
    """The run's lease as ``engine.workers.LeaseInfo``, read from its queue row (never waits on a lock)."""
    row = store.queue.row_sync(run_id)
    if row is None:
        return LeaseInfo(LeaseState.NONE)
    if row.done:
        return LeaseInfo(LeaseState.NONE, row.pid, row.host, row.claimed_at_millis, row.action)
    if not row.owned:
        return LeaseInfo(LeaseState.HELD, None, None, None, "queued")
    state = LeaseState.HELD if row.lease_live else LeaseState.STALE
    return LeaseInfo(state, row.pid, row.host, row.claimed_at_millis, row.action)
