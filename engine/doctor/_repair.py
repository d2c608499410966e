"""``mfm doctor --repair``: move torn tails and temporary files into ``STORE/quarantine/<timestamp>/``, never
delete.

Every folder and file is reached from the store's root by folder descriptors (``engine.stores.fs.safe_paths``): a
symlink planted as ``quarantine`` (or anywhere below the root) is refused with ``store_symlink`` and nothing is
written where it points; the quarantine folders are created 0700 whatever the umask."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from engine.doctor._findings import Moved
from engine.doctor._walk import lease_held
from engine.ids import RunId
from engine.stores.fs import framing, safe_paths
from engine.stores.fs.framing import FILE_MODE

__all__ = ["move_file", "move_tail"]


def _write_durably(root: Path, rel: str, data: bytes) -> None:
    """Write the new file ``rel`` (its missing folders created 0700) and make it durable."""
    parent, _, name = rel.rpartition("/")
    dfd = safe_paths.open_below(str(root), parent, create=True)
    try:
        fd = safe_paths.open_file(dfd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, str(root / rel), FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(dfd)
    finally:
        os.close(dfd)


def move_tail(root: Path, qrel: str, run_id: RunId, committed_end: int | None) -> Moved | None:
    """Copy the tail past ``committed_end`` into the quarantine folder ``qrel``, then truncate — under the run's
    locks."""
    if committed_end is None:
        return None
    rel = framing.events_file(run_id)
    if lease_held(root, run_id):
        return None  # a worker holds the run: its store quarantines the tail itself before its next append
    run_fd = safe_paths.open_below(str(root), framing.run_folder(run_id))
    try:
        lock_fd = safe_paths.open_file(
            run_fd, framing.APPEND_LOCK_FILE, os.O_RDWR | os.O_CREAT, str(root / framing.append_lock_file(run_id))
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the store's append lock: no append can be half-way now
            fd = safe_paths.open_file(run_fd, framing.EVENTS_FILE, os.O_RDWR, str(root / rel))
            try:
                s = framing.check_log(fd, run_id)
                if s.first_bad is None or s.valid_after or s.committed_end != committed_end:
                    return None  # changed since the check: leave it
                tail = os.pread(fd, s.size - committed_end, committed_end)
                dest = f"{qrel}/{framing.quarantined_tail_file(run_id, committed_end)}"
                _write_durably(root, dest, tail)
                os.ftruncate(fd, committed_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            os.close(lock_fd)  # releases the lock
    finally:
        os.close(run_fd)
    return Moved("torn_tail", rel, dest, len(tail))


def move_file(root: Path, qrel: str, rel: str) -> Moved | None:
    """Move the file ``rel`` to ``qrel/rel`` (its folders created 0700); ``None`` if it changed or is in the way."""
    parent, _, name = rel.rpartition("/")
    try:
        src = safe_paths.open_below(str(root), parent)
    except OSError:
        return None
    try:
        st = safe_paths.stat_entry(src, name)
        if not stat.S_ISREG(st.st_mode):
            return None
        dst = safe_paths.open_below(str(root), f"{qrel}/{parent}".rstrip("/"), create=True)
        try:
            try:
                safe_paths.stat_entry(dst, name)
                return None  # something is in the way
            except FileNotFoundError:
                pass
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
            os.fsync(dst)
            os.fsync(src)
        finally:
            os.close(dst)
    except OSError:
        return None
    finally:
        os.close(src)
    return Moved("temp_file", rel, f"{qrel}/{rel}", st.st_size)
