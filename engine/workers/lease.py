"""Run leases: an exclusive ``fcntl.flock`` on ``runs/<id>/lease``, liveness decided by the lock; and the other
files a worker keeps in its run folder: ``start.json`` (a run whose worker has not started it yet) and
``verdict.json`` (a replay's verdict). See :mod:`engine.workers`.

**The lease file** is one line of JSON (anything after the first newline is ignored: a rewrite writes the new line
first, then truncates, so a crash in between leaves a readable first line)::

    {"action": "resume", "boot_id": "…", "exec_groups": [[4242, 918273]], "host": "vm", "pid": 4240,
     "pid_ns": "pid:[4026531836]", "started_at": 1765000000000}

``pid``/``host``/``started_at``/``action`` name the holder (``"handing_over": true`` while a launcher holds it for a
worker it is spawning: a competing :meth:`Lease.acquire` waits a moment, then names that worker); ``exec_groups``
lists the process groups of the exec programs its attempt is running (``[pgid, leader start ticks]``, added when a
program starts and removed once it has been reaped: the lease is the run's
:class:`~engine.process_groups.GroupReporter`), and ``boot_id``/``pid_ns`` say where those pids mean something.
Whoever takes the lease next (:meth:`Lease.acquire`: a resume, a cancel that carries itself out) first makes sure
those groups are gone (:func:`engine.process_groups.ensure_gone`): a group still running on this machine is
SIGKILLed, a reused pid never is, a group recorded on another host is reported; a group that survives SIGKILL
refuses the new attempt (``previous_attempt_alive``)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from engine.events import RunCompleted
from engine.ids import ArtifactId, RunId
from engine.process_groups import ExecGroup, GroupCheck, Machine, ensure_gone
from engine.stores.fs import framing, safe_paths
from engine.workers.base import LeaseInfo, LeaseState, RunFolders, WorkerError, previous_attempt_alive

__all__ = [
    "Lease",
    "RecoveryRecord",
    "open_run_file",
    "probe_lease",
    "read_pending",
    "read_verdict_file",
    "run_finished",
    "settle_previous_attempt",
    "verdict_path",
    "write_pending",
    "write_private",
]


_HANDOVER_WAIT_S = 3.0
"""How long a competing :meth:`Lease.acquire` waits for a lease being handed to a new worker (its spawn and start)."""


def _lease_path(store: RunFolders, run_id: RunId) -> Path:
    return Path(store.run_dir(run_id)) / framing.LEASE_FILE


def open_run_file(store: RunFolders, run_id: RunId, name: str, flags: int, *, create_dir: bool = False) -> int:
    """Open ``runs/<id>/<name>`` relative to the run folder's descriptor (``engine.stores.fs.safe_paths``: no symlink
    followed, folders owned by this user); a new file is 0600."""
    dfd = store.open_run_dir(run_id, create=create_dir)
    try:
        return safe_paths.open_file(dfd, name, flags, f"{store.run_dir(run_id)}/{name}", 0o600)
    finally:
        os.close(dfd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 1 << 16, 0).split(b"\n", 1)[0]  # the first line (see the module docstring)
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
        with os.fdopen(open_run_file(store, run_id, framing.EVENTS_FILE, framing.RD_FLAGS), "rb") as f:
            last = framing.last_envelope(f)
    except FileNotFoundError:
        return False
    return last is not None and isinstance(last.event, RunCompleted)


def probe_lease(store: RunFolders, run_id: RunId) -> LeaseInfo:
    """``HELD`` when a live worker holds the lock, ``STALE`` when the lease file exists, its lock is
    free and the run is not finished ("worker lost"), else ``NONE``. Never waits."""
    try:
        fd = open_run_file(store, run_id, framing.LEASE_FILE, framing.RD_FLAGS)
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


def settle_previous_attempt(run_id: RunId, holder: dict[str, Any]) -> list[GroupCheck]:
    """Make sure the exec process groups recorded by the lease's previous holder are gone (see the module
    docstring); ``previous_attempt_alive`` if one survives SIGKILL."""
    groups = ExecGroup.list_from_json(holder.get("exec_groups"))
    if not groups:
        return []
    checks = ensure_gone(groups, Machine.from_json(holder))
    alive = [c for c in checks if not c.safe]
    if alive:
        raise previous_attempt_alive(run_id, alive[0])
    return checks


class Lease:
    """An acquired run lease (an open descriptor holding ``LOCK_EX`` on ``runs/<id>/lease``).

    Also the run's :class:`~engine.process_groups.GroupReporter`: the exec groups of the attempt are kept in the
    lease file while they run. ``previous`` holds what :meth:`acquire` found of the previous attempt's groups."""

    def __init__(self, run_id: RunId, path: Path, fd: int) -> None:
        self.run_id = run_id
        self.path = path
        self.fd = fd
        self.previous: list[GroupCheck] = []
        self._holder: dict[str, Any] = {}
        self._groups: dict[int, ExecGroup] = {}

    @classmethod
    def acquire(
        cls, store: RunFolders, run_id: RunId, action: str, *, attempts: int = 5, handing_over: bool = False
    ) -> Lease:
        """Take the lease or raise ``WorkerError`` ``lease_held`` naming the holder.

        A few quick retries absorb a monitor's momentary shared-lock probe (:func:`lease_state`). A lease being handed
        to a new worker (``handing_over`` in the file: a launcher holds it, :meth:`hand_over`) is waited for a
        little longer, so that ``lease_held`` names the worker, not the command that spawned it.
        """
        path = _lease_path(store, run_id)
        fd = open_run_file(store, run_id, framing.LEASE_FILE, os.O_RDWR | os.O_CREAT, create_dir=True)
        handover_deadline = time.monotonic() + _HANDOVER_WAIT_S
        i = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                i += 1
                holder = _read_holder(fd)
                handover = holder.get("handing_over") is True and time.monotonic() < handover_deadline
                if i >= attempts and not handover:
                    info = _holder_info(LeaseState.HELD, holder)
                    os.close(fd)
                    raise WorkerError.new(
                        "lease_held",
                        f"run {run_id} is held by a live worker (pid {info.pid} on {info.host}); "
                        f"wait for it or `mfm cancel {run_id}`",
                        {"pid": info.pid, "host": info.host},
                    ) from None
                time.sleep(0.02)
        try:
            previous = settle_previous_attempt(run_id, _read_holder(fd))
        except BaseException:
            os.close(fd)
            raise
        lease = cls(run_id, path, fd)
        lease.previous = previous
        try:
            lease.write_holder(action, handing_over=handing_over)
        except BaseException:
            lease.release()
            raise
        return lease

    @classmethod
    def adopt(cls, store: RunFolders, run_id: RunId, fd: int, action: str) -> Lease:
        """Take over a descriptor whose lock the spawning process acquired (``--lease-fd``)."""
        path = _lease_path(store, run_id)
        dfd = store.open_run_dir(run_id)
        try:
            st, fst = safe_paths.stat_entry(dfd, framing.LEASE_FILE), os.fstat(fd)
        finally:
            os.close(dfd)
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            raise WorkerError.new("lease_fd_invalid", f"descriptor {fd} is not the lease of run {run_id}")
        os.set_inheritable(fd, False)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # same open file description: already ours
        lease = cls(run_id, path, fd)
        lease.write_holder(action)
        return lease

    def write_holder(self, action: str, *, handing_over: bool = False) -> None:
        machine = Machine.here()
        self._holder = {
            "pid": os.getpid(),
            "host": machine.host,
            "started_at": int(time.time() * 1000),
            "action": action,
            "boot_id": machine.boot_id,
            "pid_ns": machine.pid_ns,
        }
        if handing_over:
            self._holder["handing_over"] = True
        self._groups.clear()
        self._write()

    def hand_over(self, worker_pid: int) -> None:
        """Name the spawned worker as the holder (it inherited the descriptor and rewrites the file when it starts;
        until then a competing command still learns the worker's pid, not this launcher's)."""
        self._holder["pid"] = worker_pid
        self._write()

    def _write(self) -> None:
        holder = {**self._holder, "exec_groups": [g.to_json() for g in self._groups.values()]}
        data = json.dumps(holder, sort_keys=True).encode() + b"\n"
        os.pwrite(self.fd, data, 0)  # the new line first, then the old tail goes: never an unreadable file
        os.ftruncate(self.fd, len(data))

    async def group_started(self, group: ExecGroup) -> None:
        """Record an exec program's process group while it runs (``GroupReporter``)."""
        self._groups[group.pgid] = group
        self._write()

    async def group_ended(self, group: ExecGroup) -> None:
        if self._groups.pop(group.pgid, None) is not None:
            self._write()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor releases the lock
            self.fd = -1

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# start.json and verdict.json
# ---------------------------------------------------------------------------------------------


def _pending_path(store: RunFolders, run_id: RunId) -> Path:
    return Path(store.run_dir(run_id)) / framing.PENDING_FILE


def write_pending(store: RunFolders, run_id: RunId, manifest_id: ArtifactId) -> None:
    """``runs/<id>/start.json``: the manifest of a run whose worker has not written ``RunStarted``
    yet, so a worker that dies before that can still be resumed (it starts the run again)."""
    tmp = f".{framing.PENDING_FILE}.{os.getpid()}"
    data = json.dumps({"manifest_id": str(manifest_id), "run_id": str(run_id)}, sort_keys=True).encode() + b"\n"
    dfd = store.open_run_dir(run_id, create=True)
    try:
        fd = safe_paths.open_file(dfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, str(_pending_path(store, run_id)))
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, framing.PENDING_FILE, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def read_pending(store: RunFolders, run_id: RunId) -> ArtifactId | None:
    try:
        with os.fdopen(open_run_file(store, run_id, framing.PENDING_FILE, framing.RD_FLAGS), "rb") as f:
            value = json.loads(f.read())
        return ArtifactId(value["manifest_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verdict_path(store: RunFolders, replay_run_id: RunId) -> Path:
    return Path(store.run_dir(replay_run_id)) / framing.VERDICT_FILE


def read_verdict_file(store: RunFolders, replay_run_id: RunId) -> bytes:
    with os.fdopen(open_run_file(store, replay_run_id, framing.VERDICT_FILE, framing.RD_FLAGS), "rb") as f:
        return f.read()


def write_private(store: RunFolders, run_id: RunId, name: str, data: bytes) -> None:
    """Write ``runs/<id>/<name>`` owner-only (0600 whatever the umask), never through a planted symlink."""
    fd = open_run_file(store, run_id, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# recovery.json: which run recovers a failed run
# ---------------------------------------------------------------------------------------------


class RecoveryRecord:
    """``runs/<failed>/recovery.json`` (``{"recovery_run_id": …}``), held under an exclusive ``flock`` while a
    resume decides whether the failed run needs a recovery run, so two resumes of one failed run agree: the
    first records its new run, the second finds it ("already recovered as …")."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def lock(cls, store: RunFolders, run_id: RunId, *, timeout_s: float = 10.0) -> RecoveryRecord:
        path = Path(store.run_dir(run_id)) / framing.RECOVERY_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                    os.close(fd)
                    if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise WorkerError.new(
                            "lease_held", f"run {run_id}: another resume is deciding its recovery; try again"
                        ) from None
                    raise
            time.sleep(0.01)

    @property
    def recovery_run_id(self) -> RunId | None:
        value = _read_holder(self.fd)
        try:
            return RunId(value["recovery_run_id"])
        except (KeyError, TypeError, ValueError):
            return None

    def record(self, recovery_run_id: RunId) -> None:
        data = json.dumps({"recovery_run_id": str(recovery_run_id)}, sort_keys=True).encode() + b"\n"
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RecoveryRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
