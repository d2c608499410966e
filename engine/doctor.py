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
``run_dir_invalid``         warning   a folder under ``runs/`` whose name is not a run id
``event_line_undecodable``  error     a committed event line is not a wire-form envelope
``event_seq_gap``           error     seqs are not 1, 2, 3 … (a line is missing or repeated)
``event_run_id_mismatch``   error     an envelope names another run than its folder
``event_file_corrupt``      error     damage in the middle of an event file (valid events follow it)
``torn_tail``               warning   an unfinished batch at the end of an event file (a crash), no
                                      writer alive: readers ignore it, the next writer quarantines it
``attempt_envelope_invalid`` error    the stream breaks the attempt-envelope rule (ENGINE-SPEC §4.3)
``run_started_missing``     error     the stream does not begin with ``RunStarted``
``events_after_completion`` error     events after ``RunCompleted``
``artifact_missing``        error     an event refers to an artifact the store does not hold
``artifact_hash_mismatch``  error     an artifact's bytes do not hash to its name
``artifact_name_invalid``   warning   a file among the artifacts that is not ``<aa>/<64 hex>``
``stale_lease``             warning   a lease whose lock is free while its run is unfinished (worker lost)
``temp_file``               warning   a leftover temporary file of an interrupted write
``permissions_too_open``    warning   a store folder or file readable by others than its owner
==========================  ========  ==================================================================

The stream analysis is the runtime's own (:func:`engine._runtime.envelopes.analyze`), the lease probe is the
workers' (:func:`engine.workers.lease_state`). :func:`repair_store` only MOVES damaged tails and temporary files into
``STORE/quarantine/<timestamp>/`` (a tail is copied there and fsynced before the event file is truncated to its
committed end, under the run's writer lock); it never deletes anything.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine._runtime.envelopes import EnvelopeViolation, analyze
from engine.errors import StorageError
from engine.events import (
    DOMAIN_EVENT_FACT_RECORDED,
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
    decode_envelope,
)
from engine.ids import ArtifactId, RunId

__all__ = [
    "QUARANTINE_DIR",
    "DoctorReport",
    "Finding",
    "Moved",
    "check_store",
    "repair_store",
    "resolve_runs",
]

Severity = Literal["error", "warning"]

QUARANTINE_DIR = "quarantine"
EVENTS_FILE = "events.jsonl"
LEASE_FILE = "lease"
APPEND_LOCK_FILE = "events.lock"
PENDING_FILE = "start.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TEMP = re.compile(r"(^\.)|(\.tmp\b)|(\.tmp$)|(^tmp)|(\.part$)|(~$)")
"""Names of temporary files (a dot file, ``*.tmp*``, ``tmp*``, ``*.part``, ``*~``)."""
_ARTIFACT_SIDECARS = (".kind",)
_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    message: str
    path: str | None = None
    """Relative to the store root."""
    run_id: str | None = None
    seq: int | None = None
    repairable: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "path": self.path,
            "run_id": self.run_id,
            "seq": self.seq,
            "repairable": self.repairable,
            "details": self.details,
        }

    def one_line(self) -> str:
        where = self.path or ""
        if self.seq is not None:
            where += f" seq {self.seq}"
        return f"{self.severity}[{self.code}] {where.strip()}: {self.message}"


@dataclass(frozen=True, slots=True)
class Moved:
    """One thing ``--repair`` moved (paths relative to the store root)."""

    what: Literal["torn_tail", "temp_file"]
    source: str
    destination: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "source": self.source, "destination": self.destination, "bytes": self.size}


@dataclass(slots=True)
class DoctorReport:
    root: str
    findings: list[Finding] = field(default_factory=list)
    runs_checked: int = 0
    events_checked: int = 0
    artifacts_checked: int = 0
    moved: list[Moved] = field(default_factory=list)
    torn_tails: dict[str, int] = field(default_factory=dict)
    """Run id → committed end offset, for every run with a torn tail (what ``repair`` truncates to)."""

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.root,
            "ok": self.ok,
            "runs_checked": self.runs_checked,
            "events_checked": self.events_checked,
            "artifacts_checked": self.artifacts_checked,
            "errors": len(self.errors),
            "warnings": len(self.findings) - len(self.errors),
            "findings": [f.to_json() for f in self.findings],
            "moved": [m.to_json() for m in self.moved],
        }


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def resolve_runs(root: str | os.PathLike[str], texts: Sequence[str]) -> list[RunId]:
    """Full run ids or unique prefixes (as ``git`` does) → run ids; reads folder names only."""
    runs_dir = Path(root) / "runs"
    try:
        names = sorted(n for n in os.listdir(runs_dir) if _is_run_id(n))
    except FileNotFoundError:
        names = []
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
    try:
        st = os.stat(root_path, follow_symlinks=False)
    except FileNotFoundError:
        raise StorageError.not_found("store_not_found", f"no store at {root_path}") from None
    except OSError as exc:
        raise StorageError.other("store_unreadable", f"cannot read {root_path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError.other("store_unreadable", f"{root_path} is not a folder")
    _check_mode(report, root_path, root_path, st)
    present: dict[ArtifactId, bool] = {}
    referenced: dict[ArtifactId, tuple[str, int, str, int]] = {}
    if runs is None:
        _walk_store_files(report, root_path)
        run_ids = _list_runs(report, root_path)
        _check_all_artifacts(report, root_path, present)
    else:
        run_ids = list(runs)
    for run_id in run_ids:
        _check_run(report, root_path, run_id, referenced)
    for aid, (ref_run, seq, what, count) in sorted(referenced.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        ok = present.get(aid)
        if ok is None:
            ok = _check_artifact_file(report, root_path, aid)
            present[aid] = ok
        if not ok and not _artifact_exists(root_path, aid):
            report.add(
                Finding(
                    "artifact_missing",
                    "error",
                    f"{what} {aid} is not in the store ({count} reference(s) in this run's events)",
                    path=f"runs/{ref_run}/{EVENTS_FILE}",
                    run_id=ref_run,
                    seq=seq,
                    details={"artifact_id": str(aid), "field": what, "references": count},
                )
            )
    return report


def repair_store(root: str | os.PathLike[str], report: DoctorReport) -> list[Moved]:
    """Move every repairable finding of ``report`` (torn tails, temp files) into the quarantine folder.

    Returns (and records in ``report.moved``) what was moved. A run whose writer lock is taken is left alone.
    """
    root_path = Path(root)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    qdir = root_path / QUARANTINE_DIR / stamp
    moved: list[Moved] = []
    for f in report.findings:
        if not f.repairable or f.path is None:
            continue
        if f.code == "torn_tail" and f.run_id is not None:
            m = _move_tail(root_path, qdir, RunId(f.run_id), report.torn_tails.get(f.run_id))
        elif f.code == "temp_file":
            m = _move_file(root_path, qdir, f.path)
        else:
            m = None
        if m is not None:
            moved.append(m)
    report.moved.extend(moved)
    return moved


# ---------------------------------------------------------------------------------------------
# Walking the store
# ---------------------------------------------------------------------------------------------


def _is_run_id(name: str) -> bool:
    try:
        RunId(name)
    except ValueError:
        return False
    return True


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _check_mode(report: DoctorReport, root: Path, path: Path, st: os.stat_result) -> None:
    if st.st_mode & 0o077:
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
        report.add(
            Finding(
                "permissions_too_open",
                "warning",
                f"{kind} mode {stat.S_IMODE(st.st_mode):o} lets others read it (expected "
                f"{'700' if kind == 'folder' else '600'})",
                path=_rel(root, path) or ".",
            )
        )


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


def _add(report: DoctorReport, finding: Finding | None) -> None:
    if finding is not None:
        report.add(finding)


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


def _artifact_path(root: Path, aid: str) -> Path:
    return root / "artifacts" / aid[:2] / aid


def _artifact_exists(root: Path, aid: str) -> bool:
    return os.path.lexists(_artifact_path(root, aid))


def _check_all_artifacts(report: DoctorReport, root: Path, present: dict[ArtifactId, bool]) -> None:
    adir = root / "artifacts"
    try:
        fans = sorted(os.listdir(adir))
    except FileNotFoundError:
        return
    except OSError as exc:
        report.add(Finding("store_unreadable", "error", f"cannot list artifacts: {exc.strerror}", path="artifacts"))
        return
    for fan in fans:
        fan_path = adir / fan
        try:
            st = os.stat(fan_path, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            report.add(
                Finding("symlink_in_store", "error", "a symbolic link among the artifacts", path=_rel(root, fan_path))
            )
            continue
        if not stat.S_ISDIR(st.st_mode):
            if stat.S_ISREG(st.st_mode) and _TEMP.search(fan):
                _add(report, _temp_finding(root, fan_path, st))
            else:
                report.add(
                    Finding(
                        "artifact_name_invalid",
                        "warning",
                        "an unexpected file among the artifact folders",
                        path=_rel(root, fan_path),
                    )
                )
            continue
        _check_mode(report, root, fan_path, st)
        try:
            names = sorted(os.listdir(fan_path))
        except OSError as exc:
            report.add(Finding("store_unreadable", "error", f"cannot list: {exc.strerror}", path=_rel(root, fan_path)))
            continue
        for name in names:
            path = fan_path / name
            if _HEX64.fullmatch(name) and name[:2] == fan:
                present[ArtifactId(name)] = _check_artifact_file(report, root, ArtifactId(name))
                continue
            try:
                fst = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(fst.st_mode):
                report.add(
                    Finding("symlink_in_store", "error", "a symbolic link among the artifacts", path=_rel(root, path))
                )
                continue
            base = name
            for suffix in _ARTIFACT_SIDECARS:
                if name.endswith(suffix):
                    base = name[: -len(suffix)]
            if base != name and _HEX64.fullmatch(base) and base[:2] == fan:
                _check_mode(report, root, path, fst)
                continue
            if stat.S_ISREG(fst.st_mode) and _TEMP.search(name):
                _add(report, _temp_finding(root, path, fst))
                continue
            report.add(
                Finding(
                    "artifact_name_invalid",
                    "warning",
                    "a file among the artifacts whose name is not its 64-hex content address",
                    path=_rel(root, path),
                )
            )


def _check_artifact_file(report: DoctorReport, root: Path, aid: ArtifactId) -> bool:
    """Hash one artifact; report damage. True when present and intact."""
    path = _artifact_path(root, aid)
    rel = _rel(root, path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            report.add(Finding("symlink_in_store", "error", "a symbolic link where an artifact should be", path=rel))
        else:
            report.add(Finding("store_unreadable", "error", f"cannot read artifact: {exc.strerror}", path=rel))
        return False
    try:
        st = os.fstat(fd)
        _check_mode(report, root, path, st)
        h = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
    except OSError as exc:
        report.add(Finding("store_unreadable", "error", f"cannot read artifact: {exc.strerror}", path=rel))
        return False
    finally:
        os.close(fd)
    report.artifacts_checked += 1
    actual = h.hexdigest()
    if actual != aid:
        report.add(
            Finding(
                "artifact_hash_mismatch",
                "error",
                f"content hashes to {actual[:16]}…, not to its name",
                path=rel,
                details={"artifact_id": str(aid), "actual": actual},
            )
        )
        return False
    return True


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


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


def _refs(env: EventEnvelope) -> Iterable[tuple[str, str | None]]:
    ev = env.event
    if isinstance(ev, RunStarted):
        yield "RunStarted.manifest_id", ev.manifest_id
        yield "RunStarted.initial_snapshot_id", ev.initial_snapshot_id
    elif isinstance(ev, StateEntered):
        yield "StateEntered.base_snapshot_id", ev.base_snapshot_id
    elif isinstance(ev, StateCompleted):
        yield "StateCompleted.context_snapshot_id", ev.context_snapshot_id
    elif isinstance(ev, StateFailed):
        yield "StateFailed.failure_snapshot_id", ev.failure_snapshot_id
    elif isinstance(ev, RunCompleted):
        yield "RunCompleted.final_snapshot_id", ev.final_snapshot_id
    elif isinstance(ev, DomainEvent):
        yield "DomainEvent.payload_ref", ev.payload_ref
        if ev.name == DOMAIN_EVENT_FACT_RECORDED and isinstance(ev.payload, dict):
            pid = ev.payload.get("payload_id")
            yield "fact_recorded.payload_id", pid if isinstance(pid, str) else None


def _collect_refs(envs: list[EventEnvelope], run_id: RunId, out: dict[ArtifactId, tuple[str, int, str, int]]) -> None:
    for env in envs:
        for what, value in _refs(env):
            if value is None or not _HEX64.fullmatch(value):
                continue
            aid = ArtifactId(value)
            first = out.setdefault(aid, (run_id, env.seq, what, 0))
            out[aid] = (*first[:3], first[3] + 1)


# ---------------------------------------------------------------------------------------------
# Repair: move, never delete
# ---------------------------------------------------------------------------------------------


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
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
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_tail(root: Path, qdir: Path, run_id: RunId, committed_end: int | None) -> Moved | None:
    """Copy the tail past ``committed_end`` into quarantine, then truncate — under the run's locks."""
    if committed_end is None:
        return None
    run_dir = root / "runs" / run_id
    rel = f"runs/{run_id}/{EVENTS_FILE}"
    if _lease_held(root, run_id):
        return None  # a worker holds the run: its store quarantines the tail itself before its next append
    lock_fd = os.open(run_dir / APPEND_LOCK_FILE, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the store's append lock: no append can be half-way now
        fd = os.open(run_dir / EVENTS_FILE, os.O_RDWR | _NOFOLLOW | _CLOEXEC)
        try:
            s = _scan_events(fd, run_id)
            if s.first_bad is None or s.valid_after or s.committed_end != committed_end:
                return None  # changed since the check: leave it
            tail = os.pread(fd, s.size - committed_end, committed_end)
            dest = qdir / "runs" / run_id / f"{EVENTS_FILE}.tail-at-{committed_end}"
            _write_durably(dest, tail)
            os.ftruncate(fd, committed_end)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(lock_fd)  # releases the lock
    return Moved("torn_tail", rel, _rel(root, dest), len(tail))


def _move_file(root: Path, qdir: Path, rel: str) -> Moved | None:
    src = root / rel
    dest = qdir / rel
    try:
        st = os.stat(src, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.path.lexists(dest):
            return None
        os.rename(src, dest)
        _fsync_dir(dest.parent)
        _fsync_dir(src.parent)
    except OSError:
        return None
    return Moved("temp_file", rel, _rel(root, dest), st.st_size)
