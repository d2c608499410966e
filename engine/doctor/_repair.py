"""``mfm doctor --repair``: move torn tails and temporary files into ``STORE/quarantine/<timestamp>/``, never
delete."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from engine.doctor._findings import Moved, relative
from engine.doctor._walk import lease_held
from engine.ids import RunId
from engine.stores.fs import framing
from engine.stores.fs.framing import CLOEXEC, DIR_MODE, DIRECTORY, FILE_MODE, NOFOLLOW

__all__ = ["move_file", "move_tail"]


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, FILE_MODE)
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
    fd = os.open(path, os.O_RDONLY | DIRECTORY | CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_tail(root: Path, qdir: Path, run_id: RunId, committed_end: int | None) -> Moved | None:
    """Copy the tail past ``committed_end`` into quarantine, then truncate — under the run's locks."""
    if committed_end is None:
        return None
    rel = framing.events_file(run_id)
    if lease_held(root, run_id):
        return None  # a worker holds the run: its store quarantines the tail itself before its next append
    lock_fd = os.open(root / framing.append_lock_file(run_id), os.O_RDWR | os.O_CREAT | NOFOLLOW | CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the store's append lock: no append can be half-way now
        fd = os.open(root / rel, os.O_RDWR | NOFOLLOW | CLOEXEC)
        try:
            s = framing.check_log(fd, run_id)
            if s.first_bad is None or s.valid_after or s.committed_end != committed_end:
                return None  # changed since the check: leave it
            tail = os.pread(fd, s.size - committed_end, committed_end)
            dest = qdir / framing.quarantined_tail_file(run_id, committed_end)
            _write_durably(dest, tail)
            os.ftruncate(fd, committed_end)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(lock_fd)  # releases the lock
    return Moved("torn_tail", rel, relative(root, dest), len(tail))


def move_file(root: Path, qdir: Path, rel: str) -> Moved | None:
    src = root / rel
    dest = qdir / rel
    try:
        st = os.stat(src, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None
        dest.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if os.path.lexists(dest):
            return None
        os.rename(src, dest)
        _fsync_dir(dest.parent)
        _fsync_dir(src.parent)
    except OSError:
        return None
    return Moved("temp_file", rel, relative(root, dest), st.st_size)
