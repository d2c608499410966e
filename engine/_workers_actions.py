"""The shared start/resume/cancel/replay actions, used by both the command line and the TUI (see
:mod:`engine.workers`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from engine._workers_base import RunFolders, WorkerError, _HasStores, is_pooled
from engine._workers_lease import Lease, LeaseState, lease_state, run_finished
from engine._workers_spawn import spawn_worker
from engine.events import RunCompleted, RunStatus
from engine.ids import ArtifactId, RunId
from engine.operations import OperationRegistry, PreparedRun, prepare_run

if TYPE_CHECKING:
    from engine.pool import PostgresPoolStore

__all__ = [
    "ResumeOutcome",
    "_require_run",
    "_write_pending",
    "cancel_run",
    "read_verdict",
    "replay_run",
    "resume_run",
    "start_run",
    "verdict_path",
]


async def start_run(
    store: RunFolders | PostgresPoolStore,
    registry: OperationRegistry,
    op_id: str,
    raw_params: Any,
    *,
    ops_modules: Sequence[str] = (),
) -> PreparedRun:
    """Validate, store the manifest, take the new run's lease and spawn its worker.

    Invalid input raises ``OperationError`` before anything is written. On a database store the run is
    queued for the worker pool instead.
    """
    prepared = await prepare_run(store.stores, registry, op_id, raw_params)
    if is_pooled(store):
        await _queue(store).enqueue(
            prepared.run_id, "start", manifest_id=prepared.manifest_id, args={"ops": list(ops_modules)}
        )
        return prepared
    store = cast(RunFolders, store)
    lease = Lease.acquire(store, prepared.run_id, "run")
    try:
        _write_pending(store, prepared.run_id, prepared.manifest_id)
    except BaseException:
        lease.release()
        raise
    _spawn_run(store, prepared.run_id, prepared.manifest_id, ops_modules, lease)
    return prepared


def _queue(store: Any) -> Any:
    return store.queue


def _spawn_run(
    store: RunFolders, run_id: RunId, manifest_id: ArtifactId, ops_modules: Sequence[str], lease: Lease
) -> int:
    return spawn_worker(
        store,
        "run",
        run_id,
        args=["--run-id", str(run_id), "--manifest", str(manifest_id)],
        ops_modules=ops_modules,
        lease=lease,
    )


def _pending_path(store: RunFolders, run_id: RunId) -> Path:
    return Path(store.run_dir(run_id)) / "start.json"


def _write_pending(store: RunFolders, run_id: RunId, manifest_id: ArtifactId) -> None:
    """``runs/<id>/start.json``: the manifest of a run whose worker has not written ``RunStarted``
    yet, so a worker that dies before that can still be resumed (it starts the run again)."""
    path = _pending_path(store, run_id)
    tmp = path.with_name(f".start.json.{os.getpid()}")
    data = json.dumps({"manifest_id": str(manifest_id), "run_id": str(run_id)}, sort_keys=True).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_pending(store: RunFolders, run_id: RunId) -> ArtifactId | None:
    try:
        value = json.loads(_pending_path(store, run_id).read_text())
        return ArtifactId(value["manifest_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class ResumeOutcome:
    run_id: RunId
    spawned_pid: int | None
    """``None`` when the run had already finished (nothing to do)."""
    finished: bool
    recovery_run_id: RunId | None = None
    """Set when ``run_id`` had failed: the new recovery run that carries on (``Engine.recover``)."""


async def _require_run(store: _HasStores, run_id: RunId) -> None:
    if await store.stores.events.head_seq(run_id) == 0:
        raise WorkerError.new("run_not_found", f"run {run_id} not found")


async def resume_run(
    store: RunFolders | PostgresPoolStore, run_id: RunId, *, ops_modules: Sequence[str] = ()
) -> ResumeOutcome:
    """Spawn a worker that resumes ``run_id``. A live worker → ``lease_held``; a finished run → no-op.

    A run whose worker died before writing ``RunStarted`` is started again from its stored manifest.
    """
    if is_pooled(store):
        return await _resume_pooled(store, run_id, ops_modules)
    store = cast(RunFolders, store)
    if await store.stores.events.head_seq(run_id) == 0:
        manifest_id = _read_pending(store, run_id)
        if manifest_id is None:
            raise WorkerError.new("run_not_found", f"run {run_id} not found")
        lease = Lease.acquire(store, run_id, "run")
        return ResumeOutcome(run_id, _spawn_run(store, run_id, manifest_id, ops_modules, lease), False)
    if run_finished(store, run_id):
        if not await _ended_failed(store, run_id):
            return ResumeOutcome(run_id, None, True)
        recovery_id = RunId.new_v4()
        lease = Lease.acquire(store, recovery_id, "recover")
        pid = spawn_worker(
            store,
            "recover",
            recovery_id,
            args=[str(run_id), "--recovery-run-id", str(recovery_id)],
            ops_modules=ops_modules,
            lease=lease,
        )
        return ResumeOutcome(run_id, pid, True, recovery_id)
    lease = Lease.acquire(store, run_id, "resume")
    pid = spawn_worker(store, "resume", run_id, args=[str(run_id)], ops_modules=ops_modules, lease=lease)
    return ResumeOutcome(run_id, pid, False)


async def _resume_pooled(store: Any, run_id: RunId, ops_modules: Sequence[str]) -> ResumeOutcome:
    """Database store: queue the resume (or a recovery run for a failed run); a queued or held run → ``lease_held``.

    A run whose worker was lost needs nothing: the pool takes it over once its lease expires."""
    queue = _queue(store)
    row = await queue.get(run_id)
    args = {"ops": list(ops_modules)}
    if await store.stores.events.head_seq(run_id) == 0:
        if row is None or row.manifest_id is None:
            raise WorkerError.new("run_not_found", f"run {run_id} not found")
        if not row.done:
            raise _held(run_id, row)
        await queue.enqueue(run_id, "start", manifest_id=ArtifactId(row.manifest_id), args=args, again=True)
        return ResumeOutcome(run_id, None, False)
    if await _finished_remote(store, run_id):
        if not await _ended_failed(store, run_id):
            return ResumeOutcome(run_id, None, True)
        recovery_id = RunId.new_v4()
        await queue.enqueue(recovery_id, "recover", source_run_id=run_id, args=args)
        return ResumeOutcome(run_id, None, True, recovery_id)
    if row is not None and not row.done:
        if row.owned and not row.lease_live:
            return ResumeOutcome(run_id, None, False)  # worker lost: the pool takes it over by itself
        raise _held(run_id, row)
    if row is None:
        await queue.enqueue(run_id, "resume", args=args)
    else:
        await queue.enqueue(run_id, row.action if row.action != "start" else "resume", args=args, again=True)
    return ResumeOutcome(run_id, None, False)


def _held(run_id: RunId, row: Any) -> WorkerError:
    where = f"held by pid {row.pid} on {row.host}" if row.owned else "queued for the worker pool"
    return WorkerError.new(
        "lease_held",
        f"run {run_id} is {where}; wait for it or `mfm cancel {run_id}`",
        {"pid": row.pid, "host": row.host},
    )


async def _finished_remote(store: Any, run_id: RunId) -> bool:
    head = await store.stores.events.head_seq(run_id)
    if head == 0:
        return False
    last = await store.stores.events.read_range(run_id, head, head)
    return bool(last) and isinstance(last[-1].event, RunCompleted)


async def _ended_failed(store: _HasStores, run_id: RunId) -> bool:
    head = await store.stores.events.head_seq(run_id)
    last = await store.stores.events.read_range(run_id, head, head)
    return bool(last) and isinstance(last[0].event, RunCompleted) and last[0].event.status is RunStatus.FAILED


async def cancel_run(
    store: RunFolders | PostgresPoolStore,
    run_id: RunId,
    reason: str = "cancelled by operator",
    *,
    ops_modules: Sequence[str] = (),
) -> bool:
    """Record a cancel request (a finished run → ``run_already_finished``; unknown → ``run_not_found``).

    When no worker holds the run (worker lost), a resume worker is spawned to carry the cancel out
    (it sees the request and closes the run as Cancelled). Returns whether one was spawned.
    """
    from engine.runtime import request_cancel

    if is_pooled(store):
        row = await _queue(store).get(run_id)
        if row is None or row.manifest_id is None or await store.stores.events.head_seq(run_id) > 0:
            await _require_run(store, run_id)
        if await _finished_remote(store, run_id):
            raise WorkerError.new("run_already_finished", f"run {run_id} has already finished")
        await request_cancel(store.stores, run_id, reason)
        if row is None or row.done:  # nobody will pick it up: queue a resume that carries the cancel out
            action = "start" if row is not None and row.manifest_id is not None else "resume"
            manifest = None if row is None or row.manifest_id is None else ArtifactId(row.manifest_id)
            return bool(await _queue(store).enqueue(run_id, action, manifest_id=manifest, again=True))
        return False
    store = cast(RunFolders, store)
    if await store.stores.events.head_seq(run_id) == 0 and _read_pending(store, run_id) is not None:
        # Started a moment ago: its worker has not written RunStarted yet. The request waits in the control
        # plane and the engine sees it on its first poll; a worker that died before RunStarted is started
        # again (as resume would) so that someone carries the cancel out.
        control = store.stores.control
        if control is None:
            raise WorkerError.new("control_store_missing", "this store has no control plane; cannot cancel")
        await control.request_cancel(run_id, reason)
        if lease_state(store, run_id).state is LeaseState.STALE:
            await resume_run(store, run_id, ops_modules=ops_modules)
            return True
        return False
    await _require_run(store, run_id)
    await request_cancel(store.stores, run_id, reason)
    if lease_state(store, run_id).state is LeaseState.STALE:
        try:
            lease = Lease.acquire(store, run_id, "resume")
        except WorkerError:
            return False  # a worker just took it: it will see the request
        spawn_worker(store, "resume", run_id, args=[str(run_id)], ops_modules=ops_modules, lease=lease)
        return True
    return False


async def replay_run(store: RunFolders | PostgresPoolStore, run_id: RunId, *, ops_modules: Sequence[str] = ()) -> RunId:
    """Spawn a worker that replays ``run_id`` (§0.11) as a new run; return the new run's id.

    The verdict lands in ``runs/<replay_id>/verdict.json`` once the replay run has finished.
    """
    await _require_run(store, run_id)
    replay_id = RunId.new_v4()
    if is_pooled(store):
        await _queue(store).enqueue(replay_id, "replay", source_run_id=run_id, args={"ops": list(ops_modules)})
        return replay_id
    store = cast(RunFolders, store)
    lease = Lease.acquire(store, replay_id, "replay")
    spawn_worker(
        store,
        "replay",
        replay_id,
        args=[str(run_id), "--replay-run-id", str(replay_id)],
        ops_modules=ops_modules,
        lease=lease,
    )
    return replay_id


def verdict_path(store: RunFolders, replay_run_id: RunId) -> Path:
    return Path(store.run_dir(replay_run_id)) / "verdict.json"


async def read_verdict(store: RunFolders | PostgresPoolStore, replay_run_id: RunId) -> dict[str, Any] | None:
    """The replay verdict once written (``verdict.json``, or the queue row's result on a database store)."""
    if is_pooled(store):
        row = await _queue(store).get(replay_run_id)
        return None if row is None else cast("dict[str, Any] | None", row.result)
    store = cast(RunFolders, store)
    try:
        value = json.loads(verdict_path(store, replay_run_id).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
