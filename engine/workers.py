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

import argparse
import asyncio
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from engine.engine import RunPhase, Stores
from engine.errors import ErrorCategory, ErrorInfo, MfmError, StorageError
from engine.events import RunCompleted, RunStatus, decode_envelope
from engine.ids import ArtifactId, RunId
from engine.operations import OperationEnv, OperationRegistry, PreparedRun, load_registry, load_start_run, prepare_run

if TYPE_CHECKING:
    from engine.pool import PostgresPoolStore

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


# ---------------------------------------------------------------------------------------------
# Leases
# ---------------------------------------------------------------------------------------------


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


def _lease_path(store: RunFolders, run_id: RunId) -> Path:
    return Path(store.run_dir(run_id)) / "lease"


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder_info(state: LeaseState, holder: dict[str, Any]) -> LeaseInfo:
    def _int(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def _str(v: Any) -> str | None:
        return v if isinstance(v, str) else None

    return LeaseInfo(
        state=state,
        pid=_int(holder.get("pid")),
        host=_str(holder.get("host")),
        started_at=_int(holder.get("started_at")),
        action=_str(holder.get("action")),
    )


def run_finished(store: RunFolders, run_id: RunId) -> bool:
    """Whether the run's stream ends with ``RunCompleted`` (reads only the file's tail; a torn last
    line is skipped)."""
    try:
        with open(store.events_path(run_id), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            chunk = 65536
            while True:
                start = max(0, size - chunk)
                f.seek(start)
                data = f.read(size - start)
                lines = data.split(b"\n")[:-1]  # what follows the last newline is not a complete line
                if start > 0:
                    lines = lines[1:]  # possibly cut in the middle
                for line in reversed(lines):
                    if not line.strip():
                        continue
                    try:
                        env = decode_envelope(line)
                    except StorageError:
                        continue  # torn tail
                    return isinstance(env.event, RunCompleted)
                if start == 0:
                    return False
                chunk *= 4
    except FileNotFoundError:
        return False


def is_pooled(store: Any) -> bool:
    """Whether ``store`` is a database store whose runs go through the worker-pool queue (``engine.pool``)."""
    return getattr(store, "queue", None) is not None and not callable(getattr(store, "run_dir", None))


def lease_state(store: RunFolders | PostgresPoolStore, run_id: RunId) -> LeaseInfo:
    """``HELD`` when a live worker holds the lock, ``STALE`` when the lease file exists, its lock is
    free and the run is not finished ("worker lost"), else ``NONE``. Never waits.

    On a database store (:func:`is_pooled`) the same answer comes from the run's queue row
    (``engine.pool.lease_info``): a queued run not claimed yet is ``HELD`` with ``action='queued'``."""
    if is_pooled(store):
        from engine.pool import lease_info

        return lease_info(cast("PostgresPoolStore", store), run_id)
    store = cast(RunFolders, store)
    path = _lease_path(store, run_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return LeaseInfo(LeaseState.NONE)
    except OSError:
        return LeaseInfo(LeaseState.NONE)
    try:
        holder = _read_holder(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _holder_info(LeaseState.HELD, holder)
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if run_finished(store, run_id):
        return _holder_info(LeaseState.NONE, holder)
    return _holder_info(LeaseState.STALE, holder)


class Lease:
    """An acquired run lease (an open descriptor holding ``LOCK_EX`` on ``runs/<id>/lease``)."""

    def __init__(self, run_id: RunId, path: Path, fd: int) -> None:
        self.run_id = run_id
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, store: RunFolders, run_id: RunId, action: str, *, attempts: int = 5) -> Lease:
        """Take the lease or raise ``WorkerError`` ``lease_held`` naming the holder.

        A few quick retries absorb a monitor's momentary shared-lock probe (:func:`lease_state`).
        """
        run_dir = Path(store.run_dir(run_id))
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = run_dir / "lease"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        for i in range(max(1, attempts)):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if i == attempts - 1:
                    info = _holder_info(LeaseState.HELD, _read_holder(fd))
                    os.close(fd)
                    raise WorkerError.new(
                        "lease_held",
                        f"run {run_id} is held by a live worker (pid {info.pid} on {info.host}); "
                        f"wait for it or `mfm cancel {run_id}`",
                        {"pid": info.pid, "host": info.host},
                    ) from None
                time.sleep(0.02)
        lease = cls(run_id, path, fd)
        lease.write_holder(action)
        return lease

    @classmethod
    def adopt(cls, store: RunFolders, run_id: RunId, fd: int, action: str) -> Lease:
        """Take over a descriptor whose lock the spawning process acquired (``--lease-fd``)."""
        path = _lease_path(store, run_id)
        st, fst = os.stat(path, follow_symlinks=False), os.fstat(fd)
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            raise WorkerError.new("lease_fd_invalid", f"descriptor {fd} is not the lease of run {run_id}")
        os.set_inheritable(fd, False)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # same open file description: already ours
        lease = cls(run_id, path, fd)
        lease.write_holder(action)
        return lease

    def write_holder(self, action: str) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": int(time.time() * 1000),
            "action": action,
        }
        data = json.dumps(holder, sort_keys=True).encode() + b"\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor releases the lock
            self.fd = -1

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# Spawning detached workers
# ---------------------------------------------------------------------------------------------

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


def spawn_worker(
    store: RunFolders,
    action: str,
    run_id: RunId,
    *,
    args: Sequence[str] = (),
    ops_modules: Sequence[str] = (),
    lease: Lease | None = None,
    python: str | None = None,
) -> int:
    """Start ``python -m engine.workers … <action> …`` detached; return its pid.

    With ``lease``, the locked descriptor is handed to the child (``--lease-fd``) and closed here,
    so the lease passes from this process to the worker without a gap.
    """
    _reap_children()
    root = _store_root(store)
    cmd = [python or sys.executable, "-m", "engine.workers", "--store", str(root)]
    for module in ops_modules:
        cmd += ["--ops", module]
    cmd += [action, *args]
    pass_fds: tuple[int, ...] = ()
    if lease is not None:
        cmd += ["--lease-fd", str(lease.fd)]
        pass_fds = (lease.fd,)
    run_dir = Path(store.run_dir(run_id))
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_fd = os.open(
        run_dir / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
        )
    finally:
        os.close(log_fd)
        if lease is not None:
            lease.release()
    _children.append(proc)
    return proc.pid


# ---------------------------------------------------------------------------------------------
# The shared actions (CLI and TUI)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The worker itself
# ---------------------------------------------------------------------------------------------


def _phase_exit(phase: RunPhase) -> int:
    return EXIT_OK if phase is RunPhase.COMPLETED else EXIT_FAILED


def _make_engine(store: RunFolders, registry: OperationRegistry, run_id: RunId, poll: float) -> Any:
    from engine.exec_transport import ExecTransportFactory
    from engine.runtime import Engine

    return Engine(
        plan_resolver=registry.plan_resolver(OperationEnv(artifacts=store.stores.artifacts)),
        transports=[ExecTransportFactory()],
        run_ids=lambda: run_id,
        cancel_poll_interval=poll,
    )


def _install_signal_handlers(token: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, token.cancel, f"worker received {signal.Signals(sig).name}")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _say(message: str) -> None:
    print(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] worker {os.getpid()}: {message}", flush=True)


async def run_worker(
    store: RunFolders,
    registry: OperationRegistry,
    action: str,
    run_id: RunId,
    *,
    manifest_id: ArtifactId | None = None,
    replay_run_id: RunId | None = None,
    lease_fd: int | None = None,
    cancel_poll_interval: float = 0.1,
) -> int:
    """Execute one run in this process while holding its lease; return the exit code."""
    from engine.runtime import CancelToken

    lease_run = replay_run_id if action in ("replay", "recover") and replay_run_id is not None else run_id
    if lease_fd is not None:
        lease = Lease.adopt(store, lease_run, lease_fd, action)
    else:
        lease = Lease.acquire(store, lease_run, action)
    with lease:
        token = CancelToken()
        _install_signal_handlers(token)
        stores = store.stores
        engine = _make_engine(store, registry, lease_run, cancel_poll_interval)
        if action == "run":
            if manifest_id is None:
                raise WorkerError.new("usage", "worker run needs --manifest")
            if await stores.events.head_seq(run_id) > 0:
                _say(f"run {run_id} already has events; resuming it")
                action = "resume"
            else:
                start = await load_start_run(stores, registry, manifest_id)
                _say(f"starting run {run_id} ({start.manifest.op_id})")
                result = await engine.start(stores, start, cancel=token)
                _say(f"run {run_id} {result.phase.value}")
                return _phase_exit(result.phase)
        if action == "resume":
            await _require_run(store, run_id)
            _say(f"resuming run {run_id}")
            result = await engine.resume(stores, run_id, cancel=token)
            _say(f"run {run_id} {result.phase.value}")
            return _phase_exit(result.phase)
        if action == "replay":
            await _require_run(store, run_id)
            _say(f"replaying run {run_id} as {lease_run}")
            verdict = await engine.replay(stores, run_id, cancel=token)
            payload = _verdict_json(verdict)
            _write_private(verdict_path(store, lease_run), (json.dumps(payload, sort_keys=True) + "\n").encode())
            _say(f"replay verdict: {payload['verdict']}")
            return EXIT_OK if payload["verdict"] == "deterministic" else EXIT_FAILED
        if action == "recover":
            _say(f"recovering failed run {run_id} as {lease_run}")
            result = await engine.recover(stores, run_id, cancel=token, new_run_id=lease_run)
            _say(f"run {lease_run} {result.phase.value}")
            return _phase_exit(result.phase)
        raise WorkerError.new("usage", f"unknown worker action {action!r}")


def _write_private(path: Path, data: bytes) -> None:
    """Write a store file owner-only (0600 whatever the umask), never through a planted symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _verdict_json(verdict: Any) -> dict[str, Any]:
    result = getattr(verdict, "result", None)
    phase = getattr(result, "phase", None)
    diverged = getattr(verdict, "diverged_state", None)
    return {
        "source_run_id": str(verdict.source_run_id),
        "replay_run_id": str(verdict.replay_run_id),
        "verdict": str(getattr(verdict, "verdict", "")),
        "diverged_state": None if diverged is None else str(diverged),
        "phase": None if phase is None else str(getattr(phase, "value", phase)),
        "source_final": _opt_str(getattr(verdict, "source_final", None)),
        "replay_final": _opt_str(getattr(verdict, "replay_final", None)),
    }


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def open_store(root: str | os.PathLike[str]) -> Any:
    """The filesystem store at ``root`` (created on first use), or the database store of a ``postgresql://``
    URL (``engine.stores.open.open_store``)."""
    from engine.stores.open import open_store as _open

    return _open(root)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfm worker", description="Execute one run (normally spawned detached).")
    p.add_argument("--store", required=True)
    p.add_argument("--ops", action="append", default=[])
    p.add_argument("--no-entry-points", action="store_true")
    p.add_argument("--cancel-poll", type=float, default=0.1)
    sub = p.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run")
    run.add_argument("--run-id", required=True)
    run.add_argument("--manifest", required=True)
    run.add_argument("--lease-fd", type=int)
    res = sub.add_parser("resume")
    res.add_argument("run_id")
    res.add_argument("--lease-fd", type=int)
    rep = sub.add_parser("replay")
    rep.add_argument("run_id")
    rep.add_argument("--replay-run-id", required=True)
    rep.add_argument("--lease-fd", type=int)
    rec = sub.add_parser("recover")
    rec.add_argument("run_id")
    rec.add_argument("--recovery-run-id", required=True)
    rec.add_argument("--lease-fd", type=int)
    srv = sub.add_parser("serve", description="Execute queued runs of a database store (any number of hosts).")
    srv.add_argument("--store", dest="serve_store", help="postgresql://… (overrides the global --store)")
    srv.add_argument("--concurrency", type=int, default=4, help="runs executed at once (default 4)")
    srv.add_argument("--host-name", default=None, help="shown as HOST by `mfm runs` (default: this host's name)")
    srv.add_argument("--lease-ttl", type=float, default=5.0, help="seconds before a silent worker's runs move on")
    srv.add_argument("--heartbeat", type=float, default=1.0, help="seconds between lease renewals")
    srv.add_argument("--poll", type=float, default=0.25, help="seconds between queue polls when idle")
    srv.add_argument("--exit-when-idle", action="store_true", help="stop once the queue is empty")
    return p


def _serve(ns: argparse.Namespace) -> int:
    from engine.pool import serve
    from engine.stores.open import display_location, is_database_url

    location = ns.serve_store or ns.store
    if not is_database_url(location):
        raise WorkerError.new(
            "store_not_database",
            f"`worker serve` needs a postgresql:// store, not {display_location(location)!r} "
            "(filesystem stores spawn one worker per run)",
        )
    if ns.concurrency < 1:
        raise WorkerError.new("usage", "--concurrency must be at least 1")
    store = open_store(location)
    registry = load_registry(ns.ops, entry_points=not ns.no_entry_points)
    return asyncio.run(
        serve(
            store,
            registry,
            concurrency=ns.concurrency,
            host=ns.host_name,
            ttl=ns.lease_ttl,
            heartbeat=ns.heartbeat,
            poll=ns.poll,
            cancel_poll=ns.cancel_poll,
            exit_when_idle=ns.exit_when_idle,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point: one line ``error[code]: message`` on stderr for any contract error."""
    ns = _parser().parse_args(argv)
    try:
        if ns.action == "serve":
            return _serve(ns)
        store = open_store(ns.store)
        registry = load_registry(ns.ops, entry_points=not ns.no_entry_points)
        run_id = RunId(ns.run_id)
        return asyncio.run(
            run_worker(
                store,
                registry,
                ns.action,
                run_id,
                manifest_id=ArtifactId(ns.manifest) if ns.action == "run" else None,
                replay_run_id=(
                    RunId(ns.replay_run_id)
                    if ns.action == "replay"
                    else RunId(ns.recovery_run_id)
                    if ns.action == "recover"
                    else None
                ),
                lease_fd=ns.lease_fd,
                cancel_poll_interval=ns.cancel_poll,
            )
        )
    except MfmError as err:
        print(err.one_line(), file=sys.stderr, flush=True)
        return exit_code_for(err)
    except ValueError as err:
        print(f"error[usage]: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
