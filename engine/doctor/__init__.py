"""``mfm doctor``: check a filesystem store without changing it, and (on request) quarantine debris.

:func:`check_store` reads a store folder (the layout of ``engine.stores.fs``: ``runs/<id>/events.jsonl``,
``runs/<id>/lease``, ``artifacts/<aa>/<id>``) and returns a :class:`DoctorReport` of :class:`Finding` s, each with
a stable ``code``:

==========================  ========  ==================================================================
code                        severity  meaning
==========================  ========  ==================================================================
``store_not_found``         error     the store folder does not exist (nothing was created)
``store_unreadable``        error     a folder or file of the store cannot be read
``symlink_in_store``        error     a symbolic link where the store keeps its own files
``foreign_owner``           error     a folder or file owned by another user than the store's (refused)
``run_dir_invalid``         warning   a folder under ``runs/`` whose name is not a run id
``event_line_undecodable``  error     a committed event line is not a wire-form envelope
``event_seq_gap``           error     seqs are not 1, 2, 3 … (a line is missing or repeated)
``event_run_id_mismatch``   error     an envelope names another run than its folder
``event_file_corrupt``      error     damage in the middle of an event file (valid events follow it)
``record_checksum_mismatch`` error    a version-2 record whose checksum does not match its bytes
``record_malformed``        error     a line of a version-2 run log that is not a record
``artifact_copy_bad``       warning   a damaged copy of a blob a run log holds: ``--repair`` moves it into
                                      quarantine and rebuilds it
``torn_tail``               warning   an unfinished batch at the end of an event file (a crash), no
                                      writer alive: readers ignore it, the next writer quarantines it
``attempt_envelope_invalid`` error    the stream breaks the attempt-envelope rule (ENGINE-SPEC §4.3)
``run_started_missing``     error     the stream does not begin with ``RunStarted``
``events_after_completion`` error     events after ``RunCompleted``
``artifact_missing``        error     an event refers to an artifact the store does not hold
``artifact_hash_mismatch``  error     an artifact's bytes do not hash to its name
``artifact_name_invalid``   warning   a file among the artifacts that is not ``<aa>/<64 hex>``
``stale_lease``             warning   a lease whose lock is free while its run is unfinished (worker lost, also
                                      before ``RunStarted``: ``mfm resume`` starts it, ``mfm discard`` removes it)
``run_dir_empty``           warning   a run folder with no events and no start record (a start that failed, e.g.
                                      on a full disk): ``--repair`` removes it, or quarantines it if it holds data
``temp_file``               warning   a leftover temporary file of an interrupted write
``permissions_too_open``    warning   a store folder or file readable by others than its owner
==========================  ========  ==================================================================

The store layout and the framing of its event files are :mod:`engine.stores.fs.framing`'s (the doctor reads event
files with :func:`~engine.stores.fs.framing.check_log`), the stream analysis is the runtime's own
(:func:`engine._runtime.envelopes.analyze`); the lease probe is a non-blocking shared ``flock`` on the lease file,
as :func:`engine.workers.lease_state` does. :func:`repair_store` only MOVES damaged tails, temporary files and the run
folders of failed starts into ``STORE/quarantine/<timestamp>/`` (a tail is copied there and fsynced before the event
file is truncated to its committed end, under the run's writer lock); the one thing it deletes is a failed start's
run folder whose files are all empty (nothing in it holds data), under that run's lease. The doctor walks the store
by folder descriptors (:mod:`engine.stores.fs.safe_paths`): no symlink is followed, and ``--repair`` refuses a
symlinked ``quarantine`` (``store_symlink``) and creates its folders 0700 whatever the umask.

This module holds the entry points; the checks live in private modules: ``_findings`` (finding, report, shared
helpers), ``_walk`` (modes, symlinks, temp files, run folders, lease probes), ``_artifacts``, ``_events`` (one run's
event file and history), ``_repair`` (the quarantine moves) and ``_migrate`` (:func:`migrate_store`, ``mfm doctor
--migrate``: a version-1 store to version 2, crash-safe).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from engine.doctor._artifacts import artifact_exists, check_all_artifacts, check_artifact_file
from engine.doctor._events import check_run
from engine.doctor._findings import DoctorReport, Finding, Moved, Severity, check_mode, is_run_id
from engine.doctor._migrate import MigrateReport, migrate_store
from engine.doctor._repair import move_file, move_tail
from engine.doctor._unstarted import clear_empty_run_dir
from engine.doctor._walk import list_runs, walk_store_files
from engine.errors import StorageError
from engine.ids import ArtifactId, RunId
from engine.stores.fs import FsStore, framing, safe_paths
from engine.stores.fs.framing import QUARANTINE_DIR

__all__ = [
    "QUARANTINE_DIR",
    "DoctorReport",
    "Finding",
    "MigrateReport",
    "Moved",
    "Severity",
    "check_store",
    "migrate_store",
    "repair_store",
    "resolve_runs",
]


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def resolve_runs(root: str | os.PathLike[str], texts: Sequence[str]) -> list[RunId]:
    """Full run ids or unique prefixes (as ``git`` does) → run ids; reads folder names only."""
    try:
        runs_fd = safe_paths.open_below(os.fspath(root), framing.RUNS_DIR)
    except FileNotFoundError:
        names = []
    else:
        try:
            names = sorted(e.name for e in safe_paths.list_dir(runs_fd) if is_run_id(e.name))
        finally:
            os.close(runs_fd)
    out: list[RunId] = []
    for text in texts:
        prefix = text.strip().lower()
        matches = [n for n in names if n.startswith(prefix)] if prefix else []
        if prefix in names:
            matches = [prefix]
        if not matches:
            raise StorageError.not_found("run_not_found", f"no run matches {text!r} in {root}")
        if len(matches) > 1:
            raise StorageError.other("run_id_ambiguous", f"{text!r} matches {len(matches)} runs")
        out.append(RunId(matches[0]))
    return out


def check_store(root: str | os.PathLike[str], runs: Sequence[RunId] | None = None) -> DoctorReport:
    """Check the store at ``root`` (every run, or only ``runs``) without changing anything."""
    root_path = Path(root)
    report = DoctorReport(root=str(root_path))
    try:  # the root may be reached through a symlink (the user's path); nothing below it is
        fd = safe_paths.open_root(str(root_path))
    except FileNotFoundError:
        raise StorageError.not_found("store_not_found", f"no store at {root_path}") from None
    except NotADirectoryError:
        raise StorageError.other("store_unreadable", f"{root_path} is not a folder") from None
    except OSError as exc:
        raise StorageError.other("store_unreadable", f"cannot read {root_path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    check_mode(report, root_path, root_path, st)
    present: dict[ArtifactId, bool] = {}
    referenced: dict[ArtifactId, tuple[str, int, str, int]] = {}
    if runs is None:
        walk_store_files(report, root_path)
        run_ids = list_runs(report, root_path)
        check_all_artifacts(report, root_path, present)
    else:
        run_ids = list(runs)
    for run_id in run_ids:
        check_run(report, root_path, run_id, referenced)
    for aid, (ref_run, seq, what, count) in sorted(referenced.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        ok = present.get(aid)
        if ok is None:
            ok = check_artifact_file(report, root_path, aid)
            present[aid] = ok
        if not ok and aid in report.blob_records:
            continue  # a missing or bad copy of a blob a run log holds: rebuildable (below)
        if not ok and not artifact_exists(root_path, aid) and not _in_a_log(root_path, aid):
            report.add(
                Finding(
                    "artifact_missing",
                    "error",
                    f"{what} {aid} is not in the store ({count} reference(s) in this run's events)",
                    path=framing.events_file(ref_run),
                    run_id=ref_run,
                    seq=seq,
                    details={"artifact_id": str(aid), "field": what, "references": count},
                )
            )
    _rebuildable_copies(report, root_path)
    return report


def _in_a_log(root: Path, aid: ArtifactId) -> bool:
    """Whether a committed blob record of some run log (one not checked here) holds ``aid`` (nothing is written)."""
    try:
        with FsStore(root, create=False) as store:
            return store.artifacts.record(aid) is not None
    except StorageError:
        return False


def _rebuildable_copies(report: DoctorReport, root: Path) -> None:
    """A bad copy (``artifact_hash_mismatch``) of a blob whose record a run log holds is a repairable warning,
    ``artifact_copy_bad``: ``--repair`` rebuilds it from the log. A missing copy is normal (the store writes a
    blob's copy when a read first needs it, not at its commit)."""
    kept: list[Finding] = []
    bad: set[str] = set()
    for f in report.findings:
        aid = f.details.get("artifact_id") if f.code == "artifact_hash_mismatch" else None
        if isinstance(aid, str) and aid in report.blob_records:
            bad.add(aid)
            kept.append(
                Finding(
                    "artifact_copy_bad",
                    "warning",
                    f"the cached copy of blob {aid} is damaged; run {report.blob_records[aid]}'s log holds its bytes "
                    "(`--repair` moves the copy into quarantine/ and rebuilds it)",
                    path=f.path,
                    run_id=report.blob_records[aid],
                    repairable=True,
                    details={"artifact_id": aid},
                )
            )
        else:
            kept.append(f)
    report.findings[:] = kept  # a missing copy is no finding: copies are written by the first read that needs one


def _rebuild_copy(root: Path, qdir: str, f: Finding) -> Moved | None:
    aid = f.details.get("artifact_id")
    if not isinstance(aid, str) or f.path is None:
        return None
    moved = move_file(root, qdir, f.path) if f.code == "artifact_copy_bad" else None
    with FsStore(root, create=False) as store:
        data = store.artifacts.rebuild(ArtifactId(aid))
    if data is None:
        return moved
    return Moved("artifact_copy_rebuilt", framing.events_file(f.run_id or ""), f.path, len(data))


def repair_store(root: str | os.PathLike[str], report: DoctorReport) -> list[Moved]:
    """Move every repairable finding of ``report`` (torn tails, temp files, run folders left by a failed start) into
    the quarantine folder (a run folder whose files are all empty is removed instead).

    Returns (and records in ``report.moved``) what was moved. A run whose writer lock is taken is left alone.
    """
    root_path = Path(root)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    qdir = f"{QUARANTINE_DIR}/{stamp}"
    moved: list[Moved] = []
    for f in report.findings:
        if not f.repairable or f.path is None:
            continue
        if f.code == "torn_tail" and f.run_id is not None:
            m = move_tail(root_path, qdir, RunId(f.run_id), report.torn_tails.get(f.run_id))
        elif f.code == "temp_file":
            m = move_file(root_path, qdir, f.path)
        elif f.code == "artifact_copy_bad":
            m = _rebuild_copy(root_path, qdir, f)
        elif f.code == "run_dir_empty" and f.run_id is not None:
            m = clear_empty_run_dir(root_path, qdir, RunId(f.run_id))
        else:
            m = None
        if m is not None:
            moved.append(m)
    report.moved.extend(moved)
    return moved
