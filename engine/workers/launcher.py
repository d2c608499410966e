"""How a run gets a worker: the :class:`Launcher` protocol and its filesystem implementation,
:class:`DetachedLauncher` (``python -m engine.workers …`` in its own session, logging to ``runs/<id>/worker.log``,
with the run's lease handed over). The database implementation, ``engine.pool.QueueLauncher``, comes with the
PostgreSQL store itself (:class:`LaunchingStore`), so choosing one never imports the pool. See
:mod:`engine.workers`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, cast, runtime_checkable

from engine.engine import Stores
from engine.ids import ArtifactId, RunId
from engine.process_groups import describe_all
from engine.runtime import request_cancel
from engine.stores.fs import framing
from engine.workers.base import (
    LeaseInfo,
    LeaseState,
    PendingRun,
    ResumeOutcome,
    RunFolders,
    WorkerError,
    WorkerLease,
    already_recovered,
    ended_failed,
    require_run,
)
from engine.workers.lease import (
    Lease,
    RecoveryRecord,
    open_run_file,
    probe_lease,
    read_pending,
    read_verdict_file,
    run_finished,
    write_pending,
)
from engine.workers.pending import fs_discard, fs_leased_runs, fs_log_tail, fs_pending_runs

__all__ = ["DetachedLauncher", "Launcher", "LaunchingStore", "launcher_for"]

_WORKER_ACTIONS: Final = {"start": "run", "resume": "resume", "replay": "replay", "recover": "recover"}
"""Launch action → the worker's sub-command (and the action its lease records)."""


class Launcher(Protocol):
    """Hands runs of one store to workers, and reads back what those workers leave for the others.

    ``action`` is ``start`` (``manifest_id``: a new run), ``resume``, ``replay`` or ``recover`` (``source_run_id``:
    the run replayed or recovered; ``run_id`` is then the NEW run). ``again``: the run was launched before and never
    started (its ``start.json`` or queue row exists already).
    """

    async def launch(
        self,
        action: str,
        run_id: RunId,
        *,
        manifest_id: ArtifactId | None = None,
        source_run_id: RunId | None = None,
        ops_modules: Sequence[str] = (),
        again: bool = False,
    ) -> int | None:
        """Give ``run_id`` to a worker; return the spawned worker's pid (``None``: queued)."""
        ...

    async def resume(self, run_id: RunId, *, ops_modules: Sequence[str] = ()) -> ResumeOutcome: ...

    async def cancel(self, run_id: RunId, reason: str, *, ops_modules: Sequence[str] = ()) -> bool: ...

    async def read_verdict(self, replay_run_id: RunId) -> dict[str, Any] | None: ...

    def lease_state(self, run_id: RunId) -> LeaseInfo: ...

    async def leases(self) -> list[WorkerLease]:
        """Every run a worker holds or lost (not the finished ones): the workers view."""
        ...

    async def pending_runs(self, exclude: Collection[RunId] = ()) -> list[PendingRun]:
        """Runs asked to start that have no events yet (starting, queued, or whose worker died first); ``exclude``:
        runs known to have events (skipped without a look)."""
        ...

    async def discard(self, run_id: RunId) -> str:
        """Remove a run that never started (no events, no live worker); say where it went."""
        ...

    async def log_tail(self, run_id: RunId, lines: int) -> list[str]:
        """The last lines its workers left about the run (secrets withheld)."""
        ...


@runtime_checkable
class LaunchingStore(Protocol):
    """A store that brings its own launcher (``engine.pool.PostgresPoolStore``: runs go to its queue)."""

    @property
    def stores(self) -> Stores: ...

    @property
    def launcher(self) -> Launcher: ...


def launcher_for(store: RunFolders | LaunchingStore) -> Launcher:
    """The store's own launcher, else a :class:`DetachedLauncher` (a filesystem store)."""
    # LaunchingStore told by its two members, as isinstance() against the runtime-checkable Protocol does, without
    # typing's protocol machinery (~50 us a call; `mfm runs` asks twice per run: 1.1 s of 10,000 runs).
    launcher = getattr(store, "launcher", None)
    if launcher is not None and hasattr(store, "stores"):
        return cast(Launcher, launcher)
    return DetachedLauncher(cast(RunFolders, store))


_children: list[subprocess.Popen[bytes]] = []


def _reap_children() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def _store_root(store: RunFolders) -> Path:
    root = getattr(store, "root", None)
    if root is None:
        raise WorkerError.new("store_not_filesystem", "workers need a filesystem store (engine.stores.fs.FsStore)")
    return Path(root).absolute()


def _worker_args(action: str, run_id: RunId, manifest_id: ArtifactId | None, source: RunId | None) -> list[str]:
    if action == "start":
        return ["--run-id", str(run_id), "--manifest", str(manifest_id)]
    if action == "replay":
        return [str(source), "--replay-run-id", str(run_id)]
    if action == "recover":
        return [str(source), "--recovery-run-id", str(run_id)]
    return [str(run_id)]


def _log_notes(log_fd: int, notes: Sequence[str]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for note in notes:
        with contextlib.suppress(OSError):
            os.write(log_fd, f"[{stamp}] launcher {os.getpid()}: {note}\n".encode())


class DetachedLauncher:
    """A filesystem store's launcher: one detached worker process per run, holding the run's lease."""

    def __init__(self, store: RunFolders, *, python: str | None = None) -> None:
        self.store = store
        self.python = python
        self.notes: list[str] = []
        """What launches did on the way (the previous attempt's process groups killed or not checkable), also
        written to the run's ``worker.log``."""

    async def launch(
        self,
        action: str,
        run_id: RunId,
        *,
        manifest_id: ArtifactId | None = None,
        source_run_id: RunId | None = None,
        ops_modules: Sequence[str] = (),
        again: bool = False,
    ) -> int:
        """Take ``run_id``'s lease, then start ``python -m engine.workers … <action> …`` detached; return its pid.

        The locked descriptor is handed to the child (``--lease-fd``) and closed here, so the lease passes from
        this process to the worker without a gap. A new run (``start``, not ``again``) first records its
        ``start.json``. Taking the lease first makes sure the previous attempt's exec process groups are gone
        (:meth:`Lease.acquire`); what that did is noted (:attr:`notes` and the run's ``worker.log``).
        """
        store = self.store
        worker_action = _WORKER_ACTIONS[action]
        lease = Lease.acquire(store, run_id, worker_action, handing_over=True)
        notes = describe_all(lease.previous)
        self.notes += notes
        if action == "start" and not again:
            assert manifest_id is not None
            try:
                write_pending(store, run_id, manifest_id)
            except BaseException:
                lease.release()
                raise
        _reap_children()
        root = _store_root(store)
        cmd = [self.python or sys.executable, "-m", "engine.workers", "--store", str(root)]
        for module in ops_modules:
            cmd += ["--ops", module]
        cmd += [worker_action, *_worker_args(action, run_id, manifest_id, source_run_id)]
        cmd += ["--lease-fd", str(lease.fd)]
        pass_fds = (lease.fd,)
        try:
            log_fd = open_run_file(store, run_id, framing.WORKER_LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        except BaseException:
            lease.release()
            raise
        try:
            _log_notes(log_fd, notes)
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                close_fds=True,
                pass_fds=pass_fds,
            )
            with contextlib.suppress(OSError):
                lease.hand_over(proc.pid)  # a competing command now names the worker, not this process
        finally:
            os.close(log_fd)
            lease.release()
        _children.append(proc)
        return proc.pid

    async def resume(self, run_id: RunId, *, ops_modules: Sequence[str] = ()) -> ResumeOutcome:
        """Spawn a worker that resumes ``run_id``. A live worker → ``lease_held``; a finished run → no-op.

        A run whose worker died before writing ``RunStarted`` is started again from its stored manifest.
        """
        store = self.store
        if await store.stores.events.head_seq(run_id) == 0:
            manifest_id = read_pending(store, run_id)
            if manifest_id is None:
                raise WorkerError.new("run_not_found", f"run {run_id} not found")
            pid = await self.launch("start", run_id, manifest_id=manifest_id, ops_modules=ops_modules, again=True)
            return ResumeOutcome(run_id, pid, False)
        if run_finished(store, run_id):
            if not await ended_failed(store, run_id):
                return ResumeOutcome(run_id, None, True)
            return await self._recover(run_id, ops_modules)
        pid = await self.launch("resume", run_id, ops_modules=ops_modules)
        return ResumeOutcome(run_id, pid, False, notes=tuple(self.notes))

    async def _recover(self, run_id: RunId, ops_modules: Sequence[str]) -> ResumeOutcome:
        """Spawn the recovery run of failed run ``run_id``, once: ``run_already_recovered`` (naming it) if one was
        made already. A recovery run recorded but never started (no events, no live worker) is launched again
        under the same id."""
        store = self.store
        with RecoveryRecord.lock(store, run_id) as record:
            recovery_id = record.recovery_run_id
            if recovery_id is not None and (
                await store.stores.events.head_seq(recovery_id) > 0
                or probe_lease(store, recovery_id).state is LeaseState.HELD
            ):
                raise already_recovered(run_id, recovery_id)
            if recovery_id is None:
                recovery_id = RunId.new_v4()
                record.record(recovery_id)
            pid = await self.launch("recover", recovery_id, source_run_id=run_id, ops_modules=ops_modules)
        return ResumeOutcome(run_id, pid, True, recovery_id)

    async def cancel(self, run_id: RunId, reason: str, *, ops_modules: Sequence[str] = ()) -> bool:
        """Record a cancel request; spawn a resume worker to carry it out when no worker holds the run."""
        store = self.store
        if await store.stores.events.head_seq(run_id) == 0 and read_pending(store, run_id) is not None:
            # Started a moment ago: its worker has not written RunStarted yet. The request waits in the control
            # plane and the engine sees it on its first poll; a worker that died before RunStarted is started
            # again (as resume would) so that someone carries the cancel out.
            control = store.stores.control
            if control is None:
                raise WorkerError.new("control_store_missing", "this store has no control plane; cannot cancel")
            await control.request_cancel(run_id, reason)
            if probe_lease(store, run_id).state is LeaseState.STALE:
                await self.resume(run_id, ops_modules=ops_modules)
                return True
            return False
        await require_run(store, run_id)
        await request_cancel(store.stores, run_id, reason)
        if probe_lease(store, run_id).state is LeaseState.STALE:
            try:
                await self.launch("resume", run_id, ops_modules=ops_modules)
            except WorkerError as err:
                if err.code != "lease_held":
                    raise
                return False  # a worker just took it: it will see the request
            return True
        return False

    async def read_verdict(self, replay_run_id: RunId) -> dict[str, Any] | None:
        try:
            value = json.loads(read_verdict_file(self.store, replay_run_id))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def lease_state(self, run_id: RunId) -> LeaseInfo:
        return probe_lease(self.store, run_id)

    async def leases(self) -> list[WorkerLease]:
        out = []
        for run_id in fs_leased_runs(self.store):
            info = probe_lease(self.store, run_id)
            if info.state is not LeaseState.NONE:
                out.append(WorkerLease(run_id, info.state, info.pid, info.host, info.started_at, None, info.action))
        return out

    async def pending_runs(self, exclude: Collection[RunId] = ()) -> list[PendingRun]:
        return fs_pending_runs(self.store, exclude)

    async def discard(self, run_id: RunId) -> str:
        return str(fs_discard(self.store, run_id))

    async def log_tail(self, run_id: RunId, lines: int) -> list[str]:
        return fs_log_tail(self.store, run_id, lines)
