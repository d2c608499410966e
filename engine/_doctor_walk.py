"""Walking the store for ``mfm doctor``: modes, symlinks, leftover temporary files, run folders, lease probes."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path

from engine._doctor_findings import (
    _CLOEXEC,
    _NOFOLLOW,
    _TEMP,
    LEASE_FILE,
    QUARANTINE_DIR,
    DoctorReport,
    Finding,
    _add,
    _check_mode,
    _is_run_id,
    _rel,
)
from engine.ids import RunId


def _walk_store_files(report: DoctorReport, root: Path) -> None:
    """Modes, symlinks and temporary files everywhere but inside ``artifacts/`` (checked separately)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel = _rel(root, here)
        if rel == QUARANTINE_DIR or rel.startswith(QUARANTINE_DIR + os.sep):
            dirnames[:] = []
            continue
        if rel == "artifacts" or rel.startswith("artifacts" + os.sep):
            continue
        for name in list(dirnames) + filenames:
            path = here / name
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                report.add(
                    Finding(
                        "symlink_in_store",
                        "error",
                        "a symbolic link inside the store (the store never creates one and refuses to follow it)",
                        path=_rel(root, path),
                    )
                )
                if name in dirnames:
                    dirnames.remove(name)
                continue
            if here != root or name != QUARANTINE_DIR:
                _check_mode(report, root, path, st)
            if stat.S_ISREG(st.st_mode) and _TEMP.search(name):
                _add(report, _temp_finding(root, path, st))


_TMP_PID = re.compile(r"^\.tmp-.*-(\d+)-\d+$|^\..*\.(\d+)$")
"""Temp names that carry their writer's pid: the store's ``.tmp-<tag>-<pid>-<n>``, the workers' ``.<name>.<pid>``."""


def _writer_alive(name: str) -> bool:
    """A store temp file ``.tmp-<tag>-<pid>-<n>`` whose process is alive may be a write in progress."""
    m = _TMP_PID.match(name)
    if m is None:
        return False
    try:
        os.kill(int(m.group(1) or m.group(2)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _temp_finding(root: Path, path: Path, st: os.stat_result) -> Finding | None:
    if _writer_alive(path.name):
        return None
    return Finding(
        "temp_file",
        "warning",
        f"leftover temporary file ({st.st_size} bytes) of an interrupted write",
        path=_rel(root, path),
        repairable=True,
        details={"bytes": st.st_size},
    )


def _list_runs(report: DoctorReport, root: Path) -> list[RunId]:
    runs_dir = root / "runs"
    try:
        names = sorted(os.listdir(runs_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        report.add(Finding("store_unreadable", "error", f"cannot list runs: {exc.strerror}", path="runs"))
        return []
    out: list[RunId] = []
    for name in names:
        path = runs_dir / name
        if _TEMP.search(name):
            continue  # reported by the walk
        if not _is_run_id(name):
            if os.path.isdir(path) and not os.path.islink(path):
                report.add(
                    Finding("run_dir_invalid", "warning", "a folder whose name is not a run id", path=f"runs/{name}")
                )
            continue
        if os.path.islink(path) or not os.path.isdir(path):
            continue  # a symlink is reported by the walk
        out.append(RunId(name))
    return out


def _lease_held(root: Path, run_id: RunId) -> bool | None:
    """True if a live process holds the run's lease lock, False if the lease is free, None if there is none."""
    return _probe_lock(root / "runs" / run_id / LEASE_FILE)


def _probe_lock(path: Path) -> bool | None:
    """Whether ``flock`` on ``path`` is held by someone (``None``: no such file). Never waits, changes nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
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
