"""Event-file checks for ``mfm doctor``: one run's ``events.jsonl`` scanned line by line (committed batches,
damage, torn tails), its history checked (``RunStarted`` first, the attempt-envelope rule, nothing after
``RunCompleted``), its lease probed."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine._doctor_artifacts import _collect_refs
from engine._doctor_findings import (
    _CHUNK,
    _CLOEXEC,
    _NOFOLLOW,
    APPEND_LOCK_FILE,
    EVENTS_FILE,
    LEASE_FILE,
    PENDING_FILE,
    DoctorReport,
    Finding,
)
from engine._doctor_walk import _lease_held
from engine._runtime.envelopes import EnvelopeViolation, analyze
from engine.errors import StorageError
from engine.events import EventEnvelope, RunCompleted, RunStarted, decode_envelope
from engine.ids import ArtifactId, RunId


@dataclass(slots=True)
class _Scan:
    envelopes: list[EventEnvelope] = field(default_factory=list)
    committed_end: int = 0
    size: int = 0
    first_bad: tuple[int, int, str, str] | None = None
    """(offset, line number, code, reason) of the first line that is not a committed envelope."""
    valid_after: int = 0
    """Complete, decodable lines of this run after the first bad one (damage in the middle)."""


def _lines(fd: int) -> Iterator[bytes]:
    buf = b""
    while True:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            yield buf[start : nl + 1]
            start = nl + 1
        buf = buf[start:]


def _scan_events(fd: int, run_id: RunId) -> _Scan:
    s = _Scan()
    pending: list[EventEnvelope] = []
    pos = 0
    lineno = 0
    batch_start = 0
    for line in _lines(fd):
        start = pos
        pos += len(line)
        lineno += 1
        complete = line.endswith(b"\n")
        if s.first_bad is not None:
            if complete:
                try:
                    env = decode_envelope(line[:-1])
                except StorageError:
                    continue
                if env.run_id == run_id:
                    s.valid_after += 1
            continue
        if not complete:
            s.first_bad = (start, lineno, "torn_tail", "the last line is incomplete")
            continue
        body = line[:-1]
        try:
            env = decode_envelope(body)
        except StorageError as exc:
            s.first_bad = (start, lineno, "event_line_undecodable", exc.message)
            continue
        expected = len(s.envelopes) + len(pending) + 1
        if env.run_id != run_id:
            s.first_bad = (start, lineno, "event_run_id_mismatch", f"the envelope names run {env.run_id}")
            continue
        if env.seq != expected:
            s.first_bad = (start, lineno, "event_seq_gap", f"seq {env.seq} where {expected} was expected")
            continue
        if not pending:
            batch_start = start
        pending.append(env)
        if not body.endswith(b" "):
            s.envelopes.extend(pending)
            pending.clear()
            s.committed_end = pos
    s.size = pos
    if s.first_bad is None and pending:
        s.first_bad = (batch_start, 0, "torn_tail", "a batch ends without its final line")
    return s


def _rescan_quiet(root: Path, run_id: RunId) -> _Scan | None:
    """Scan again under a shared append lock taken without waiting; ``None`` while an append is in progress."""
    lock_path = root / "runs" / run_id / APPEND_LOCK_FILE
    try:
        lock_fd = os.open(lock_path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        lock_fd = -1
    except OSError:
        return None
    try:
        if lock_fd >= 0:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return None
        fd = os.open(root / "runs" / run_id / EVENTS_FILE, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            return _scan_events(fd, run_id)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)


def _check_run(
    report: DoctorReport, root: Path, run_id: RunId, referenced: dict[ArtifactId, tuple[str, int, str, int]]
) -> None:
    report.runs_checked += 1
    rel = f"runs/{run_id}/{EVENTS_FILE}"
    path = root / rel
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        # no events yet: either a worker is about to write RunStarted, or it died first (its start.json says
        # which manifest to start again; `mfm resume` does that)
        if _lease_held(root, run_id) is False and os.path.exists(root / "runs" / run_id / PENDING_FILE):
            report.add(
                Finding(
                    "stale_lease",
                    "warning",
                    f"the worker died before RunStarted; `mfm resume {run_id[:8]}` starts the run again",
                    path=f"runs/{run_id}/{LEASE_FILE}",
                    run_id=run_id,
                )
            )
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            report.add(Finding("symlink_in_store", "error", "a symbolic link where the event file should be", path=rel))
        else:
            report.add(Finding("store_unreadable", "error", f"cannot read: {exc.strerror}", path=rel, run_id=run_id))
        return
    try:
        scan = _scan_events(fd, run_id)
    except OSError as exc:
        report.add(Finding("store_unreadable", "error", f"cannot read: {exc.strerror}", path=rel, run_id=run_id))
        return
    finally:
        os.close(fd)
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
    held = _lease_held(root, run_id)
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
    _collect_refs(envs, run_id, referenced)
    finished = any(isinstance(e.event, RunCompleted) for e in envs)
    if held is False and not finished:
        report.add(
            Finding(
                "stale_lease",
                "warning",
                f"no worker holds this unfinished run (worker lost); `mfm resume {run_id[:8]}` continues it",
                path=f"runs/{run_id}/{LEASE_FILE}",
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
