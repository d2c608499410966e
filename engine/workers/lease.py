"""Run leases: an exclusive ``fcntl.flock`` on ``runs/<id>/lease``, liveness decided by the lock; and the other
files a worker keeps in its run folder: ``start.json`` (a run whose worker has not started it yet) and
``verdict.json`` (a replay's verdict). See :mod:`engine.workers`."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from engine.events import RunCompleted
from engine.ids import ArtifactId, RunId
from engine.stores.fs import framing, safe_paths
from engine.workers.base import LeaseInfo, LeaseState, RunFolders, WorkerError

__all__ = [
    "Lease",
    "open_run_file",
    "probe_lease",
    "read_pending",
    "read_verdict_file",
    "run_finished",
    "verdict_path",
    "write_pending",
    "write_private",
]


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
        path = _lease_path(store, run_id)
        fd = open_run_file(store, run_id, framing.LEASE_FILE, os.O_RDWR | os.O_CREAT, create_dir=True)
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
