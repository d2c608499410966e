"""``mfm doctor --repair``: move torn tails and temporary files into ``STORE/quarantine/<timestamp>/``, never
delete."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from engine._doctor_events import _scan_events
from engine._doctor_findings import _CLOEXEC, _NOFOLLOW, APPEND_LOCK_FILE, EVENTS_FILE, Moved, _rel
from engine._doctor_walk import _lease_held
from engine.ids import RunId


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_tail(root: Path, qdir: Path, run_id: RunId, committed_end: int | None) -> Moved | None:
    """Copy the tail past ``committed_end`` into quarantine, then truncate — under the run's locks."""
    if committed_end is None:
        return None
    run_dir = root / "runs" / run_id
    rel = f"runs/{run_id}/{EVENTS_FILE}"
    if _lease_held(root, run_id):
        return None  # a worker holds the run: its store quarantines the tail itself before its next append
    lock_fd = os.open(run_dir / APPEND_LOCK_FILE, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the store's append lock: no append can be half-way now
        fd = os.open(run_dir / EVENTS_FILE, os.O_RDWR | _NOFOLLOW | _CLOEXEC)
        try:
            s = _scan_events(fd, run_id)
            if s.first_bad is None or s.valid_after or s.committed_end != committed_end:
                return None  # changed since the check: leave it
            tail = os.pread(fd, s.size - committed_end, committed_end)
            dest = qdir / "runs" / run_id / f"{EVENTS_FILE}.tail-at-{committed_end}"
            _write_durably(dest, tail)
            os.ftruncate(fd, committed_end)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(lock_fd)  # releases the lock
    return Moved("torn_tail", rel, _rel(root, dest), len(tail))


def _move_file(root: Path, qdir: Path, rel: str) -> Moved | None:
    src = root / rel
    dest = qdir / rel
    try:
        st = os.stat(src, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.path.lexists(dest):
            return None
        os.rename(src, dest)
        _fsync_dir(dest.parent)
        _fsync_dir(src.parent)
    except OSError:
        return None
    return Moved("temp_file", rel, _rel(root, dest), st.st_size)
