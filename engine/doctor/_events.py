"""Event-file checks for ``mfm doctor``: one run's ``events.jsonl`` scanned line by line (committed batches,
damage, torn tails: :func:`engine.stores.fs.framing.check_log`), its history checked (``RunStarted`` first, the
attempt-envelope rule, nothing after ``RunCompleted``), its lease probed."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from engine._runtime.envelopes import EnvelopeViolation, analyze
from engine.doctor._artifacts import collect_refs
from engine.doctor._findings import DoctorReport, Finding, relative
from engine.doctor._unstarted import check_unstarted, has_no_events
from engine.doctor._walk import lease_held
from engine.errors import StorageError
from engine.events import EventEnvelope, RunCompleted, RunStarted
from engine.ids import ArtifactId, RunId
from engine.stores.fs import framing, safe_paths
from engine.stores.fs.framing import LogCheck

__all__ = ["check_run"]


def _rescan_quiet(root: Path, run_id: RunId) -> LogCheck | None:
    """Scan again under a shared append lock taken without waiting; ``None`` while an append is in progress."""
    try:
        lock_fd = safe_paths.open_file_below(str(root), framing.append_lock_file(run_id), framing.RD_FLAGS)
    except FileNotFoundError:
        lock_fd = -1
    except (OSError, StorageError):
        return None
    try:
        if lock_fd >= 0:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return None
        fd = safe_paths.open_file_below(str(root), framing.events_file(run_id), framing.RD_FLAGS)
        try:
            return framing.check_log(fd, run_id)
        finally:
            os.close(fd)
    except (OSError, StorageError):
        return None
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)


def _exists(root: Path, rel: str) -> bool:
    try:
        os.close(safe_paths.open_file_below(str(root), rel, framing.RD_FLAGS))
    except (OSError, StorageError):
        return False
    return True


def check_run(
    report: DoctorReport, root: Path, run_id: RunId, referenced: dict[ArtifactId, tuple[str, int, str, int]]
) -> None:
    report.runs_checked += 1
    rel = framing.events_file(run_id)
    if has_no_events(root, run_id):
        # no events yet: a worker is about to write RunStarted, or it died first (its start.json says which
        # manifest to start again), or the start failed before even that (an empty folder)
        check_unstarted(report, root, run_id)
        return
    try:
        fd = safe_paths.open_file_below(str(root), rel, framing.RD_FLAGS)
    except StorageError as err:  # the run folder (or the file) is a symlink, or belongs to someone else
        code = "symlink_in_store" if err.code == safe_paths.SYMLINK else "foreign_owner"
        details = err.info.details
        where = details.get("path") if isinstance(details, dict) else None
        shown = relative(root, Path(where)) if isinstance(where, str) else framing.run_folder(run_id)
        report.add(Finding(code, "error", err.message, path=shown, run_id=run_id))
        return
    except FileNotFoundError:
        return  # removed since (a discarded run)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            report.add(Finding("symlink_in_store", "error", "a symbolic link where the event file should be", path=rel))
        else:
            report.add(Finding("store_unreadable", "error", f"cannot read: {exc.strerror}", path=rel, run_id=run_id))
        return
    try:
        scan = framing.check_log(fd, run_id)
    except OSError as exc:
        report.add(Finding("store_unreadable", "error", f"cannot read: {exc.strerror}", path=rel, run_id=run_id))
        return
    finally:
        os.close(fd)
    for aid in scan.blobs:
        report.blob_records.setdefault(aid, run_id)
    report.artifacts_checked += len(scan.blobs)  # check_log hashed each committed blob record
    if scan.first_bad is not None and not scan.valid_after:
        # an unfinished batch at the end: torn only if no append is in progress (checked under the append lock)
        quiet = _rescan_quiet(root, run_id)
        in_progress = quiet is None or quiet.committed_end != scan.committed_end or quiet.first_bad is None
        if quiet is not None:
            scan = quiet
    else:
        in_progress = False
    envs = scan.envelopes
    report.events_checked += len(envs)
    held = lease_held(root, run_id)
    if scan.first_bad is not None:
        offset, lineno, code, reason = scan.first_bad
        where = f"line {lineno} (byte {offset})" if lineno else f"byte {offset}"
        if scan.valid_after:
            report.add(
                Finding(
                    code if code != "torn_tail" else "event_file_corrupt",
                    "error",
                    f"{where}: {reason}; {scan.valid_after} valid event line(s) follow the damage",
                    path=rel,
                    run_id=run_id,
                    seq=len(envs) + 1,
                    details={"offset": offset, "line": lineno, "valid_after": scan.valid_after},
                )
            )
        elif in_progress:
            pass  # a writer is appending right now: its unfinished batch is not damage
        else:
            tail = scan.size - scan.committed_end
            report.torn_tails[run_id] = scan.committed_end
            report.add(
                Finding(
                    "torn_tail",
                    "warning",
                    f"{tail} byte(s) after the last committed event (seq {len(envs)}) from {where}: {reason} "
                    "(readers ignore it; the next writer quarantines it)",
                    path=rel,
                    run_id=run_id,
                    seq=len(envs) + 1,
                    repairable=True,
                    details={"offset": scan.committed_end, "bytes": tail, "code": code},
                )
            )
    if not envs:
        return
    _check_history(report, rel, run_id, envs)
    collect_refs(envs, run_id, referenced)
    finished = any(isinstance(e.event, RunCompleted) for e in envs)
    damaged = scan.first_bad is not None and bool(scan.valid_after)
    if held is False and not finished and not damaged:  # a damaged log: resume refuses it, the damage is the finding
        report.add(
            Finding(
                "stale_lease",
                "warning",
                f"no worker holds this unfinished run (worker lost); `mfm resume {run_id[:8]}` continues it",
                path=framing.lease_file(run_id),
                run_id=run_id,
            )
        )


def _check_history(report: DoctorReport, rel: str, run_id: RunId, envs: list[EventEnvelope]) -> None:
    if not isinstance(envs[0].event, RunStarted):
        report.add(
            Finding(
                "run_started_missing",
                "error",
                f"the stream begins with {type(envs[0].event).__name__}, not RunStarted",
                path=rel,
                run_id=run_id,
                seq=envs[0].seq,
            )
        )
    try:
        analyze(envs, run_id)
    except EnvelopeViolation as exc:
        report.add(
            Finding(
                "attempt_envelope_invalid",
                "error",
                f"{exc.kind}: {exc}",
                path=rel,
                run_id=run_id,
                seq=exc.seq,
                details={"violation": str(exc.kind), "runtime_code": exc.to_run_error().code},
            )
        )
    for i, e in enumerate(envs):
        if isinstance(e.event, RunCompleted) and i + 1 < len(envs):
            report.add(
                Finding(
                    "events_after_completion",
                    "error",
                    f"{len(envs) - i - 1} event(s) after RunCompleted (seq {e.seq})",
                    path=rel,
                    run_id=run_id,
                    seq=envs[i + 1].seq,
                )
            )
            break
