"""Walking the store for ``mfm doctor``: modes, symlinks, leftover temporary files, run folders, lease probes."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from engine.doctor._findings import TEMP_NAME, DoctorReport, Finding, add_if_any, check_mode, is_run_id, relative
from engine.ids import RunId
from engine.stores.fs import framing

__all__ = ["lease_held", "list_runs", "temp_finding", "walk_store_files"]


def walk_store_files(report: DoctorReport, root: Path) -> None:
    """Modes, symlinks and temporary files everywhere but inside ``artifacts/`` (checked separately)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel = relative(root, here)
        if rel == framing.QUARANTINE_DIR or rel.startswith(framing.QUARANTINE_DIR + os.sep):
            dirnames[:] = []
            continue
        if rel == framing.ARTIFACTS_DIR or rel.startswith(framing.ARTIFACTS_DIR + os.sep):
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
                        path=relative(root, path),
                    )
                )
                if name in dirnames:
                    dirnames.remove(name)
                continue
            if here != root or name != framing.QUARANTINE_DIR:
                check_mode(report, root, path, st)
            if stat.S_ISREG(st.st_mode) and TEMP_NAME.search(name):
                add_if_any(report, temp_finding(root, path, st))


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
    runs_dir = root / framing.RUNS_DIR
    try:
        names = sorted(os.listdir(runs_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        report.add(Finding("store_unreadable", "error", f"cannot list runs: {exc.strerror}", path=framing.RUNS_DIR))
        return []
    out: list[RunId] = []
    for name in names:
        path = runs_dir / name
        if TEMP_NAME.search(name):
            continue  # reported by the walk
        if not is_run_id(name):
            if os.path.isdir(path) and not os.path.islink(path):
                report.add(
                    Finding(
                        "run_dir_invalid",
                        "warning",
                        "a folder whose name is not a run id",
                        path=framing.run_folder(name),
                    )
                )
            continue
        if os.path.islink(path) or not os.path.isdir(path):
            continue  # a symlink is reported by the walk
        out.append(RunId(name))
    return out


def lease_held(root: Path, run_id: RunId) -> bool | None:
    """True if a live process holds the run's lease lock, False if the lease is free, None if there is none."""
    return _probe_lock(root / framing.lease_file(run_id))


def _probe_lock(path: Path) -> bool | None:
    """Whether ``flock`` on ``path`` is held by someone (``None``: no such file). Never waits, changes nothing."""
    try:
        fd = os.open(path, framing.RD_FLAGS)
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
