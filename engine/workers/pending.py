"""Runs that never started, and worker logs, on a filesystem store (see :mod:`engine.workers`).

A run is *pending* while its folder holds a start record (``start.json``, written by the launcher under the run's
lease before the worker is spawned) and no events: its worker is starting (lease held), or it died before writing
``RunStarted`` (lease free: "not started: worker lost"). Such a run is listed (:func:`fs_pending_runs`), resumable
(``resume`` starts it from its start record) and discardable (:func:`fs_discard`: moved into the quarantine folder,
never deleted). :func:`fs_log_tail` reads the last lines of a run's ``worker.log`` through the secrets guard.

The database store's counterparts are ``engine.pool.QueueLauncher``'s; both are reached through the store's
``Launcher`` (``engine.workers.pending_runs``, ``discard_run``, ``worker_log_tail``).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Collection
from pathlib import Path

from engine._secrets import contains_secrets
from engine.ids import ArtifactId, RunId
from engine.stores.fs import framing, safe_paths
from engine.workers.base import PendingRun, RunFolders, WorkerError
from engine.workers.lease import Lease, probe_lease

__all__ = ["LOG_TAIL_BYTES", "fs_discard", "fs_log_tail", "fs_pending_run", "fs_pending_runs", "redact_log_line"]

LOG_TAIL_BYTES = 16 * 1024
"""How much of the end of ``worker.log`` :func:`fs_log_tail` reads."""

_WITHHELD = "[line withheld: it looks like it carries a secret]"


def redact_log_line(line: str, limit: int = 300) -> str:
    """A log line as it may be shown: withheld when it looks secret (ENGINE-SPEC §12.1), cut to ``limit``."""
    line = line.rstrip()
    if contains_secrets(line):
        return _WITHHELD
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _root(store: RunFolders) -> Path:
    root = getattr(store, "root", None)
    if root is None:
        raise WorkerError.new("store_not_filesystem", "this needs a filesystem store (engine.stores.fs.FsStore)")
    return Path(root)


def _has_events(store: RunFolders, run_id: RunId) -> bool:
    try:
        st = os.stat(store.events_path(run_id), follow_symlinks=False)
    except OSError:
        return False
    return st.st_size > 0


def _read_start_record(path: Path) -> tuple[ArtifactId | None, int | None] | None:
    """``(manifest_id, written_millis)`` of a ``start.json``; ``None`` when there is none (or it is not a file)."""
    try:
        fd = os.open(path, framing.RD_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    written = st.st_mtime_ns // 1_000_000
    try:
        value = json.loads(raw)
        return ArtifactId(value["manifest_id"]), written
    except (ValueError, KeyError, TypeError):
        return None, written  # a damaged record still marks a run that was asked to start


def fs_pending_run(store: RunFolders, run_id: RunId) -> PendingRun | None:
    """The run if it has a start record and no events, else ``None``."""
    if _has_events(store, run_id):
        return None
    record = _read_start_record(Path(store.run_dir(run_id)) / framing.PENDING_FILE)
    if record is None:
        return None
    manifest_id, written = record
    return PendingRun(run_id, manifest_id, probe_lease(store, run_id), written)


def fs_pending_runs(store: RunFolders, exclude: Collection[str] = ()) -> list[PendingRun]:
    """Every pending run of the store: one ``scandir`` of ``runs/`` and a ``stat`` or two per run not in ``exclude``
    (runs known to have events, e.g. ``list_runs``'s answer: a monitor's rescan then costs no ``stat`` per run)."""
    runs = _root(store) / framing.RUNS_DIR
    try:
        with os.scandir(runs) as it:
            names = [e.name for e in it if e.name not in exclude and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise WorkerError.new("store_unreadable", f"cannot list {runs}: {exc.strerror or exc}") from None
    out: list[PendingRun] = []
    for name in names:
        try:
            run_id = RunId(name)
        except ValueError:
            continue
        pending = fs_pending_run(store, run_id)
        if pending is not None:
            out.append(pending)
    return out


def fs_leased_runs(store: RunFolders) -> list[RunId]:
    """The runs whose folder has a lease file (held, lost or finished): one ``scandir`` of ``runs/``, a ``stat``
    per run."""
    runs = _root(store) / framing.RUNS_DIR
    try:
        with os.scandir(runs) as it:
            names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise WorkerError.new("store_unreadable", f"cannot list {runs}: {exc.strerror or exc}") from None
    out: list[RunId] = []
    for name in sorted(names):
        try:
            run_id = RunId(name)
        except ValueError:
            continue
        if (runs / name / framing.LEASE_FILE).exists():
            out.append(run_id)
    return out


def fs_discard(store: RunFolders, run_id: RunId) -> Path:
    """Move a run that never started (no events, no live worker) into ``STORE/quarantine/<stamp>-discard/``.

    Takes the run's lease first, so a live worker (or a concurrent resume) wins: ``lease_held``. A run with events
    is refused (``run_already_started``); an unknown one is ``run_not_found``. Returns where the folder went.
    """
    run_dir = Path(store.run_dir(run_id))
    if not stat.S_ISDIR(_lstat_mode(run_dir)):
        raise WorkerError.new("run_not_found", f"run {run_id} not found")
    with Lease.acquire(store, run_id, "discard"):
        if _has_events(store, run_id):
            raise WorkerError.new(
                "run_already_started",
                f"run {run_id} has events: only a run that never started can be discarded",
            )
        root = _root(store)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}-discard"
        qrel = f"{framing.QUARANTINE_DIR}/{stamp}/{framing.RUNS_DIR}"
        dest = root / qrel / run_id
        try:
            # folders created 0700 through folder descriptors: a symlink planted anywhere is refused, never followed
            dst = safe_paths.open_below(str(root), qrel, create=True)
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
        except OSError as exc:
            raise WorkerError.new("discard_failed", f"cannot move {run_dir} to {dest}: {exc.strerror or exc}") from None
    return dest


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def fs_log_tail(store: RunFolders, run_id: RunId, lines: int = 5) -> list[str]:
    """The last ``lines`` non-empty lines of ``runs/<id>/worker.log``, each through :func:`redact_log_line`."""
    path = Path(store.run_dir(run_id)) / framing.WORKER_LOG_FILE
    try:
        fd = os.open(path, framing.RD_FLAGS)
    except OSError:
        return []
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - LOG_TAIL_BYTES)
        data = os.pread(fd, size - start, start)
    except OSError:
        return []
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line read is probably cut
    kept = [ln for ln in text if ln.strip()]
    return [redact_log_line(ln) for ln in kept[-lines:]] if lines > 0 else []
