"""Run folders without events, for ``mfm doctor``: a run whose worker died before ``RunStarted`` (its start record
says what to start again: ``stale_lease``), and a run folder left by a start that failed before even that record was
written, e.g. on a full disk (``run_dir_empty``: ``--repair`` removes it, or moves it into quarantine if any file in
it holds data)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from engine.doctor._findings import DoctorReport, Finding, Moved
from engine.doctor._walk import lease_held
from engine.ids import RunId
from engine.stores.fs import framing, safe_paths

__all__ = ["check_unstarted", "clear_empty_run_dir", "has_no_events"]


def has_no_events(root: Path, run_id: RunId) -> bool:
    """No ``events.jsonl``, or an empty one (a symlink or another kind of file is for the event checks)."""
    try:
        st = os.stat(root / framing.events_file(run_id), follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def check_unstarted(report: DoctorReport, root: Path, run_id: RunId) -> None:
    """Findings of a run folder with no events (nothing while a live worker holds its lease: it is starting)."""
    if lease_held(root, run_id):
        return
    short = run_id[:8]
    if os.path.lexists(root / framing.pending_file(run_id)):
        report.add(
            Finding(
                "stale_lease",
                "warning",
                f"the worker died before RunStarted; `mfm resume {short}` starts the run again, "
                f"`mfm discard {short}` removes it",
                path=framing.lease_file(run_id),
                run_id=run_id,
            )
        )
        return
    files, data = _contents(root / framing.run_folder(run_id))
    holding = f"; {data} file(s) in it hold data (moved into quarantine/, not deleted)" if data else ""
    report.add(
        Finding(
            "run_dir_empty",
            "warning",
            f"a run folder with no events and no start record: a start that failed before its worker ran "
            f"(e.g. a full disk){holding}",
            path=framing.run_folder(run_id),
            run_id=run_id,
            repairable=True,
            details={"files": files, "files_with_data": data},
        )
    )


def _contents(folder: Path) -> tuple[int, int]:
    """``(files, files holding data)`` under ``folder``; anything that is not a plain file or folder holds data."""
    files = data = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            files += 1
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                data += 1
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > 0:
                data += 1
    return files, data


def clear_empty_run_dir(root: Path, qrel: str, run_id: RunId) -> Moved | None:
    """Remove a ``run_dir_empty`` folder whose files are all empty, else move it into ``qdir`` — under its lease,
    taken without waiting (a worker or launcher holding it wins: nothing is touched). ``None``: left alone.
    ``qrel``: the quarantine folder relative to ``root`` (created 0700 through folder descriptors, no symlink followed).
    """
    rel = framing.run_folder(run_id)
    folder = root / rel
    lease_fd = -1
    try:
        lease_fd = os.open(root / framing.lease_file(run_id), framing.RD_FLAGS)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        if lease_fd >= 0:
            try:
                fcntl.flock(lease_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
        # Checked again under the lock: a start may have written its record (or its first event) meanwhile.
        if not has_no_events(root, run_id) or os.path.lexists(root / framing.pending_file(run_id)):
            return None
        files, data = _contents(folder)
        if data == 0:
            _remove_empty_tree(folder)
            _fsync_dir(folder.parent)
            return Moved("empty_run_dir", rel, "", 0, removed=True)
        dst = safe_paths.open_below(str(root), f"{qrel}/{framing.RUNS_DIR}", create=True)
        try:
            src = safe_paths.open_below(str(root), framing.RUNS_DIR)
            try:
                os.rename(run_id, run_id, src_dir_fd=src, dst_dir_fd=dst)
                os.fsync(dst)
                os.fsync(src)
            finally:
                os.close(src)
        finally:
            os.close(dst)
        return Moved("empty_run_dir", rel, f"{qrel}/{framing.RUNS_DIR}/{run_id}", files)
    except OSError:
        return None
    finally:
        if lease_fd >= 0:
            os.close(lease_fd)


def _remove_empty_tree(folder: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False, followlinks=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | framing.DIRECTORY | framing.CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
