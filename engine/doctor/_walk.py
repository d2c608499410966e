"""Walking the store for ``mfm doctor``: modes, symlinks, leftover temporary files, run folders, lease probes."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from engine.doctor._findings import TEMP_NAME, DoctorReport, Finding, add_if_any, check_mode, is_run_id, relative
from engine.errors import StorageError
from engine.ids import RunId
from engine.stores.fs import framing, safe_paths

__all__ = ["lease_held", "list_runs", "refused", "temp_finding", "walk_store_files"]


def walk_store_files(report: DoctorReport, root: Path) -> None:
    """Modes, owners, symlinks and temporary files everywhere but inside ``artifacts/`` (checked separately) and
    ``quarantine/``. Walked by folder descriptors (``engine.stores.fs.safe_paths``): no symlink is followed."""
    root_fd = safe_paths.open_root(str(root))
    try:
        _walk(report, root, root_fd, "")
    finally:
        os.close(root_fd)


def _walk(report: DoctorReport, root: Path, dir_fd: int, rel: str) -> None:
    for entry in sorted(safe_paths.list_dir(dir_fd)):
        name = entry.name
        child = f"{rel}/{name}" if rel else name
        path = root / child
        try:
            st = safe_paths.stat_entry(dir_fd, name)
        except OSError:
            continue
        if not refused(report, child, st):
            continue
        if rel or name != framing.QUARANTINE_DIR:
            check_mode(report, root, path, st)
        if stat.S_ISREG(st.st_mode) and TEMP_NAME.search(name):
            add_if_any(report, temp_finding(root, path, st))
        if stat.S_ISDIR(st.st_mode) and (rel or name not in (framing.QUARANTINE_DIR, framing.ARTIFACTS_DIR)):
            try:
                sub = safe_paths.open_dir(dir_fd, name, str(path))
            except (OSError, StorageError):
                continue  # changed since the stat
            try:
                _walk(report, root, sub, child)
            finally:
                os.close(sub)


def refused(report: DoctorReport, rel: str, st: os.stat_result) -> bool:
    """Report a symlink or an entry owned by another user (the store refuses both); True when it is neither."""
    if stat.S_ISLNK(st.st_mode):
        report.add(
            Finding(
                "symlink_in_store",
                "error",
                "a symbolic link inside the store (the store never creates one and refuses to follow it)",
                path=rel,
            )
        )
        return False
    if st.st_uid != os.geteuid():
        report.add(
            Finding(
                "foreign_owner",
                "error",
                f"owned by uid {st.st_uid}, not by the store's user (uid {os.geteuid()}): the store refuses it",
                path=rel,
                details={"owner_uid": st.st_uid},
            )
        )
        return False
    return True


def _writer_alive(name: str) -> bool:
    """A store temp file ``.tmp-<tag>-<pid>-<n>`` whose process is alive may be a write in progress."""
    pid = framing.temp_writer_pid(name)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def temp_finding(root: Path, path: Path, st: os.stat_result) -> Finding | None:
    if _writer_alive(path.name):
        return None
    return Finding(
        "temp_file",
        "warning",
        f"leftover temporary file ({st.st_size} bytes) of an interrupted write",
        path=relative(root, path),
        repairable=True,
        details={"bytes": st.st_size},
    )


def list_runs(report: DoctorReport, root: Path) -> list[RunId]:
    try:
        runs_fd = safe_paths.open_below(str(root), framing.RUNS_DIR)
    except FileNotFoundError:
        return []
    except (OSError, StorageError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc.message
        report.add(Finding("store_unreadable", "error", f"cannot list runs: {reason}", path=framing.RUNS_DIR))
        return []
    try:
        entries = sorted(safe_paths.list_dir(runs_fd))
    finally:
        os.close(runs_fd)
    out: list[RunId] = []
    for entry in entries:
        name = entry.name
        if TEMP_NAME.search(name):
            continue  # reported by the walk
        if not is_run_id(name):
            if entry.is_dir:
                report.add(
                    Finding(
                        "run_dir_invalid",
                        "warning",
                        "a folder whose name is not a run id",
                        path=framing.run_folder(name),
                    )
                )
            continue
        if not entry.is_dir:
            continue  # a symlink is reported by the walk
        out.append(RunId(name))
    return out


def lease_held(root: Path, run_id: RunId) -> bool | None:
    """True if a live process holds the run's lease lock, False if the lease is free, None if there is none."""
    return _probe_lock(root, framing.lease_file(run_id))


def _probe_lock(root: Path, rel: str) -> bool | None:
    """Whether ``flock`` on ``rel`` is held by someone (``None``: no such file). Never waits, changes nothing."""
    try:
        fd = safe_paths.open_file_below(str(root), rel, framing.RD_FLAGS)
    except (OSError, StorageError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
