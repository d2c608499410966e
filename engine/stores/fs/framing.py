"""The on-disk layout of a filesystem store and the framing of its run logs: the ONE module that knows them.

The store (:mod:`engine.stores.fs`), ``mfm doctor`` (:mod:`engine.doctor`) and the TUI's log index
(``mfm_tui.log_index``) read and write store files only through the names, paths and functions defined here.

Layout. Paths are relative to the store root (join them with it: ``f"{root}/{events_file(run_id)}"``)::

    store.json                    STORE_META_FILE: {"created_at", "format": STORE_FORMAT, "version": STORE_VERSION}
    changes.log                   JOURNAL_FILE: "<run_id> <new_head>\\n" per successful append (a hint)
    runs/<run_id>/                run_folder()
      events.jsonl                events_file(): the run log (framing below)
      events.lock                 append_lock_file(): flock(LOCK_EX) target of appenders (readers never lock)
      events.jsonl.torn-<o>-<ms>  torn_tail_file(): a torn tail the store copied aside before truncating
      control/cancel.json         cancel_file(): the first cancel request
      control/retry-now-<h>-<n>.json  retry_now_file(): a request to cut the backoff before attempt n of a state
                                  (<h>: the first 32 hex chars of the state id's SHA-256)
      summary.json                summary_file(): a cache of the run's summary (engine.stores.fs._summary)
      lease, start.json, worker.log   lease_file(), pending_file(), WORKER_LOG_FILE: written by engine.workers
      exec.stdout, exec.stderr    EXEC_OUTPUT_FILES: what the run's exec programs print, as they print it, one
                                  "<state>#<attempt> <line>" per line (engine.workers.exec_log; secrets withheld)
      recovery.json               RECOVERY_FILE: a failed run's recovery run (engine.workers)
      verdict.json                VERDICT_FILE: a replay's verdict (engine.workers)
    artifacts/<aa>/<id>           artifact_file(): raw bytes; <aa> = the id's first two hex chars
    artifacts/<aa>/<id>.kind      artifact_kind_file(): the ArtifactKind of the first put (advisory)
    quarantine/<stamp>/...        QUARANTINE_DIR: what ``mfm doctor --repair`` moved aside (same relative paths)
    .tmp-<tag>-<pid>-<n>          temp_name(): a write in progress (or killed), in the folder of its target

Every folder is ``DIR_MODE`` (0700) and every file ``FILE_MODE`` (0600); store files are opened with
``O_NOFOLLOW`` (``RD_FLAGS`` for reads): a symlink planted in place of one is refused. Folders and files are reached
from the root's descriptor through :mod:`engine.stores.fs.safe_paths` (no symlink below the root is followed).

Framing. ``events.jsonl`` holds one wire-form envelope per line (:func:`encode_line` / :func:`decode_line`), line
``i`` (0-based) holding ``seq == i + 1``. A batch of n envelopes is written with ONE ``write``
(:func:`frame_batch`): its first n-1 lines end with ``" \\n"`` (a space, insignificant JSON whitespace, before the
newline) and its last line ends with ``"}\\n"``. A batch is committed when its last line is complete, so a reader
(or a reopened writer) sees every batch whole or not at all, whatever prefix of the write reached the disk.

Scan. :func:`scan` walks forward from the end of the committed prefix, checking each complete line (valid JSON
object, this run's id, the next seq) and committing a batch at its final line. It stops at the first line that is
incomplete (no newline yet), invalid, or out of sequence: everything from the start of the batch holding that line to
the end of the file is the *uncommitted tail*. Readers ignore it (it may be a batch being written right now); a
writer holding the run's lock knows no one else is writing, so for it the tail is *torn* (a crash) and is
quarantined and truncated before the next append. :func:`check_log` is the doctor's slower scan of a whole file: it
decodes every line and, past the first damaged one, counts the valid lines that follow (damage in the middle is
corruption, not a torn tail).

Index. :class:`RunLog` keeps the start offset of every committed line (``offsets[seq - 1]``), so ``read_range``
from any seq is one ``pread`` of exactly the wanted bytes, and a refresh only re-reads what was appended since.
A viewer that only needs line positions, not validated envelopes, uses :func:`committed_lines` (a buffer, e.g. the
tail of a file) and :func:`index_lines` (a whole file, in large sequential reads); :func:`last_envelope` reads only
the end of a file (is the run finished?).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import mmap
import os
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from engine.errors import StorageError
from engine.events import EventEnvelope, decode_envelope, encode_envelope
from engine.ids import RunId

__all__ = [
    "APPEND_LOCK_FILE",
    "ARTIFACTS_DIR",
    "ARTIFACT_NAME",
    "CANCEL_FILE",
    "CHUNK",
    "CLOEXEC",
    "CONTROL_DIR",
    "DIRECTORY",
    "DIR_MODE",
    "EVENTS_FILE",
    "EXEC_OUTPUT_FILES",
    "FILE_MODE",
    "JOURNAL_FILE",
    "KIND_SUFFIX",
    "LEASE_FILE",
    "NOFOLLOW",
    "PENDING_FILE",
    "QUARANTINE_DIR",
    "RD_FLAGS",
    "RECOVERY_FILE",
    "RETRY_NOW_PREFIX",
    "RUNS_DIR",
    "STORE_FORMAT",
    "STORE_META_FILE",
    "STORE_VERSION",
    "SUMMARY_FILE",
    "TEMP_PREFIX",
    "VERDICT_FILE",
    "WORKER_LOG_FILE",
    "Damage",
    "LogCheck",
    "RunLog",
    "append_lock_file",
    "artifact_file",
    "artifact_folder",
    "artifact_kind_file",
    "cancel_file",
    "check_log",
    "committed_lines",
    "committed_newlines",
    "control_folder",
    "decode_line",
    "decode_lines",
    "encode_line",
    "events_file",
    "frame_batch",
    "framed_lengths",
    "index_lines",
    "journal_end",
    "journal_line",
    "journal_runs",
    "last_envelope",
    "lease_file",
    "newline_offsets",
    "pending_file",
    "quarantined_tail_file",
    "retry_now_file",
    "retry_now_name",
    "run_folder",
    "scan",
    "summary_file",
    "temp_name",
    "temp_writer_pid",
    "torn_tail_file",
]

# -- the store's files ---------------------------------------------------------------------------------------------

STORE_FORMAT = "mfm-store"
STORE_VERSION = 1
STORE_META_FILE = "store.json"
JOURNAL_FILE = "changes.log"
RUNS_DIR = "runs"
ARTIFACTS_DIR = "artifacts"
QUARANTINE_DIR = "quarantine"
EVENTS_FILE = "events.jsonl"
APPEND_LOCK_FILE = "events.lock"
LEASE_FILE = "lease"
PENDING_FILE = "start.json"
WORKER_LOG_FILE = "worker.log"
EXEC_OUTPUT_FILES = {"stdout": "exec.stdout", "stderr": "exec.stderr"}
RECOVERY_FILE = "recovery.json"
VERDICT_FILE = "verdict.json"
CONTROL_DIR = "control"
CANCEL_FILE = "cancel.json"
RETRY_NOW_PREFIX = "retry-now-"
SUMMARY_FILE = "summary.json"
KIND_SUFFIX = ".kind"
TEMP_PREFIX = ".tmp-"
ARTIFACT_NAME = re.compile(r"[0-9a-f]{64}")
"""The name of an artifact file: its 64-hex content address."""

FILE_MODE = 0o600
DIR_MODE = 0o700
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
RD_FLAGS = os.O_RDONLY | NOFOLLOW | CLOEXEC
"""``os.open`` flags of every read of a store file (a symlink is refused, the fd never leaks into a child)."""

_tmp_counter = itertools.count()
_TMP_PID = re.compile(r"^\.tmp-.*-(\d+)-\d+$|^\..*\.(\d+)$")
"""Temp names that carry their writer's pid: the store's ``.tmp-<tag>-<pid>-<n>``, the workers' ``.<name>.<pid>``."""


def run_folder(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}"


def events_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{EVENTS_FILE}"


def append_lock_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{APPEND_LOCK_FILE}"


def lease_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{LEASE_FILE}"


def pending_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{PENDING_FILE}"


def control_folder(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{CONTROL_DIR}"


def cancel_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{CONTROL_DIR}/{CANCEL_FILE}"


def retry_now_name(state_id: str, attempt: int) -> str:
    """The control file name of a retry-now request (the state id is hashed: it never becomes a path)."""
    digest = hashlib.sha256(str(state_id).encode()).hexdigest()[:32]
    return f"{RETRY_NOW_PREFIX}{digest}-{int(attempt)}.json"


def retry_now_file(run_id: str, state_id: str, attempt: int) -> str:
    return f"{RUNS_DIR}/{run_id}/{CONTROL_DIR}/{retry_now_name(state_id, attempt)}"


def summary_file(run_id: str) -> str:
    """The run's summary cache (``engine.run_summary``): rewritten whole, never synced, rebuilt when stale."""
    return f"{RUNS_DIR}/{run_id}/{SUMMARY_FILE}"


def torn_tail_file(run_id: str, start: int, millis: int) -> str:
    """Where the store copies a torn tail starting at byte ``start`` before truncating the run log."""
    return f"{RUNS_DIR}/{run_id}/{EVENTS_FILE}.torn-{start}-{millis}"


def quarantined_tail_file(run_id: str, committed_end: int) -> str:
    """Where ``mfm doctor --repair`` puts a torn tail, relative to its quarantine folder."""
    return f"{RUNS_DIR}/{run_id}/{EVENTS_FILE}.tail-at-{committed_end}"


def artifact_folder(artifact_id: str) -> str:
    return f"{ARTIFACTS_DIR}/{artifact_id[:2]}"


def artifact_file(artifact_id: str) -> str:
    return f"{ARTIFACTS_DIR}/{artifact_id[:2]}/{artifact_id}"


def artifact_kind_file(artifact_id: str) -> str:
    return f"{ARTIFACTS_DIR}/{artifact_id[:2]}/{artifact_id}{KIND_SUFFIX}"


def temp_name(tag: str) -> str:
    """A temp file name ``.tmp-<tag>-<pid>-<n>`` (never a valid id, so never read as data)."""
    return f"{TEMP_PREFIX}{tag}-{os.getpid()}-{next(_tmp_counter)}"


def temp_writer_pid(name: str) -> int | None:
    """The pid of the process writing temp file ``name`` (store or workers naming), ``None`` if it carries none."""
    m = _TMP_PID.match(name)
    if m is None:
        return None
    return int(m.group(1) or m.group(2))


# -- the change journal --------------------------------------------------------------------------------------------


def journal_line(run_id: str, head: int) -> bytes:
    return f"{run_id} {head}\n".encode()


def journal_runs(data: bytes) -> tuple[int, list[str]]:
    """The bytes of ``data`` up to its last complete journal line, and the run named by each of those lines."""
    complete = data.rfind(b"\n") + 1
    return complete, [line.partition(b" ")[0].decode("ascii", "replace") for line in data[:complete].splitlines()]


def journal_end(fd: int, size: int) -> int:
    """Offset just past the last complete line of the journal (size 0 → 0)."""
    tail = os.pread(fd, min(size, 4096), max(0, size - 4096))
    return size - len(tail) + tail.rfind(b"\n") + 1


# -- lines and batches ---------------------------------------------------------------------------------------------

CHUNK = 1 << 20
_CONTINUED = b" \n"
_NEWLINE = re.compile(b"\n")
_loads = json.loads


def encode_line(envelope: EventEnvelope) -> bytes:
    """The bytes of one run-log line, without its terminator."""
    return encode_envelope(envelope)


def decode_line(line: bytes) -> EventEnvelope:
    """One run-log line (without its newline; a continuation line's trailing space is allowed) → its envelope.

    Raises ``StorageError`` Corruption ``machine_event_decode_failed``.
    """
    return decode_envelope(line)


def decode_lines(data: bytes) -> list[EventEnvelope]:
    """Whole committed lines (as one ``pread`` of a span of the run log) → their envelopes."""
    return [decode_envelope(line) for line in data.split(b"\n")[:-1]]


def frame_batch(lines: list[bytes]) -> bytes:
    """The bytes of one batch: continuation lines end with ``" \\n"``, the final line with ``"\\n"``."""
    if len(lines) == 1:
        return lines[0] + b"\n"
    return _CONTINUED.join(lines) + b"\n"


def framed_lengths(lines: list[bytes]) -> list[int]:
    """The length on disk of each line of :func:`frame_batch` (``lines``), its terminator included."""
    last = len(lines) - 1
    return [len(line) + (1 if i == last else 2) for i, line in enumerate(lines)]


@dataclass(slots=True)
class RunLog:
    """What is known about one event file: the committed prefix and its line offsets."""

    offsets: array[int] = field(default_factory=lambda: array("q"))
    end: int = 0
    """Byte offset just past the last committed line."""
    ident: tuple[int, int] | None = None
    """``(st_dev, st_ino)`` of the file the offsets describe."""

    @property
    def head(self) -> int:
        return len(self.offsets)

    def reset(self, ident: tuple[int, int] | None) -> None:
        self.offsets = array("q")
        self.end = 0
        self.ident = ident

    def span(self, from_seq: int, to_seq: int | None) -> tuple[int, int, int]:
        """``(first_seq, start_offset, end_offset)`` of the clamped range; empty when start == end."""
        head = len(self.offsets)
        lo = max(from_seq, 1)
        hi = head if to_seq is None else min(to_seq, head)
        if lo > hi:
            return lo, 0, 0
        end = self.offsets[hi] if hi < head else self.end
        return lo, self.offsets[lo - 1], end

    def committed(self, start: int, line_lengths: list[int]) -> None:
        """Record a batch just written at ``start`` (lengths include the line terminators)."""
        offsets = self.offsets
        pos = start
        for n in line_lengths:
            offsets.append(pos)
            pos += n
        self.end = pos


def _valid(line: bytes, run_id: str, seq: int) -> bool:
    """Is ``line`` the wire-form envelope of (``run_id``, ``seq``)? Checked on the bytes we write.

    ``encode_envelope`` always starts a line with ``{"run_id":"<id>","seq":<n>,`` and ends it with
    ``}`` (a batch's continuation lines add one space). Matching those bytes costs a fraction of a
    JSON parse, and ``read_range`` decodes (and reports a corrupt) line anyway; a line whose bytes
    look like ours is parsed in full only when the cheap check is inconclusive.
    """
    body = line[:-1] if line.endswith(b" ") else line
    prefix = b'{"run_id":"%s","seq":%d,' % (run_id.encode(), seq)
    if body.startswith(prefix) and body.endswith(b"}"):
        return True
    try:
        obj = _loads(line)
    except ValueError:
        return False
    return type(obj) is dict and obj.get("seq") == seq and obj.get("run_id") == run_id


def scan(log: RunLog, run_id: str, size: int, pread: Callable[[int, int], bytes]) -> None:
    """Extend ``log`` over every batch committed in ``[log.end, size)``; stop at the uncommitted tail."""
    pos = log.end
    buf = b""
    buf_at = pos  # file offset of buf[0]
    pending: list[int] = []  # start offsets of the continuation lines of the open batch
    while True:
        nl = buf.find(b"\n", pos - buf_at)
        if nl < 0:
            if buf_at + len(buf) >= size:
                return
            chunk = pread(min(CHUNK, size - buf_at - len(buf)), buf_at + len(buf))
            if not chunk:
                return
            buf, buf_at = buf[pos - buf_at :] + chunk, pos  # keep the incomplete line
            continue
        line = buf[pos - buf_at : nl]
        continued = line.endswith(b" ")
        if not _valid(line, run_id, len(log.offsets) + len(pending) + 1):
            return
        pending.append(pos)
        pos = buf_at + nl + 1
        if not continued:
            log.offsets.extend(pending)
            log.end = pos
            pending.clear()


def last_envelope(fh: BinaryIO) -> EventEnvelope | None:
    """The envelope of the last complete, decodable line of the run log open as ``fh``, ``None`` if there is none.

    Reads backwards from the end in growing chunks (a finished run is known from its tail); a line without its
    newline, or one that does not decode, is skipped.
    """
    size = fh.seek(0, os.SEEK_END)
    chunk = 65536
    while True:
        start = max(0, size - chunk)
        fh.seek(start)
        data = fh.read(size - start)
        lines = data.split(b"\n")[:-1]  # what follows the last newline is not a complete line
        if start > 0:
            lines = lines[1:]  # possibly cut in the middle
        for line in reversed(lines):
            if not line.strip():
                continue
            try:
                return decode_envelope(line)
            except StorageError:
                continue  # torn tail
        if start == 0:
            return None
        chunk *= 4


# -- the doctor's full check ---------------------------------------------------------------------------------------


class Damage(NamedTuple):
    """The first line of a run log that is not a committed envelope."""

    offset: int
    line: int
    """1-based line number; 0 when the damage is a batch without its final line."""
    code: str
    """``torn_tail``, ``event_line_undecodable``, ``event_run_id_mismatch`` or ``event_seq_gap``."""
    reason: str


@dataclass(slots=True)
class LogCheck:
    """What :func:`check_log` found in one run log."""

    envelopes: list[EventEnvelope] = field(default_factory=list)
    """The committed envelopes before the first damage."""
    committed_end: int = 0
    size: int = 0
    first_bad: Damage | None = None
    valid_after: int = 0
    """Complete, decodable lines of this run after the first bad one (damage in the middle)."""


def _lines(fd: int) -> Iterator[bytes]:
    buf = b""
    pos = 0
    while True:
        chunk = os.pread(fd, CHUNK, pos)
        if not chunk:
            if buf:
                yield buf
            return
        pos += len(chunk)
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            yield buf[start : nl + 1]
            start = nl + 1
        buf = buf[start:]


def check_log(fd: int, run_id: RunId) -> LogCheck:
    """Read the whole run log open on ``fd``, decoding every line: its committed envelopes and its first damage."""
    s = LogCheck()
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
            s.first_bad = Damage(start, lineno, "torn_tail", "the last line is incomplete")
            continue
        body = line[:-1]
        try:
            env = decode_envelope(body)
        except StorageError as exc:
            s.first_bad = Damage(start, lineno, "event_line_undecodable", exc.message)
            continue
        expected = len(s.envelopes) + len(pending) + 1
        if env.run_id != run_id:
            s.first_bad = Damage(start, lineno, "event_run_id_mismatch", f"the envelope names run {env.run_id}")
            continue
        if env.seq != expected:
            s.first_bad = Damage(start, lineno, "event_seq_gap", f"seq {env.seq} where {expected} was expected")
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
        s.first_bad = Damage(batch_start, 0, "torn_tail", "a batch ends without its final line")
    return s


# -- line positions, for viewers -----------------------------------------------------------------------------------


def newline_offsets(data: bytes | mmap.mmap, start: int = 0, end: int | None = None) -> array[int]:
    """Offsets of every ``\\n`` in ``data[start:end]`` (absolute), in one C-speed regex pass."""
    stop = len(data) if end is None else end
    return array("q", (m.start() for m in _NEWLINE.finditer(data, start, stop)))


def committed_newlines(nl: array[int], data: bytes | mmap.mmap, base: int = 0) -> array[int]:
    """The newlines of ``nl`` that end *committed* lines (absolute offsets; ``data`` starts at ``base``).

    A batch counts only once its final line is complete, so the newlines after the last final line (those of
    continuation lines, ``" \\n"``) belong to a batch still being written (or torn by a crash) and are dropped.
    """
    k = len(nl)
    while k and nl[k - 1] > base and data[nl[k - 1] - 1 - base] == 0x20:
        k -= 1
    return nl if k == len(nl) else nl[:k]


def committed_lines(data: bytes, base: int = 0, *, skip_first: bool = False) -> tuple[array[int], int]:
    """The start offsets of the committed lines in ``data`` (read at file offset ``base``) and the offset just past
    the last one (``base`` when there is none). ``skip_first``: ``data`` may start inside a line (the tail of a
    file), so what precedes its first newline is not a line of its own.
    """
    nl = committed_newlines(newline_offsets(data), data)
    if not nl:
        return array("q"), base
    first = nl[0] + 1 if skip_first else 0
    starts = array("q", [base + first])
    starts.extend(base + o + 1 for o in nl if o + 1 > first)
    starts.pop()  # the entry after the last newline is not a complete line
    return starts, base + nl[-1] + 1


def index_lines(
    fh: BinaryIO, size: int, *, window: int = CHUNK, pause: Callable[[], None] | None = None
) -> tuple[array[int], int]:
    """The start offsets of every committed line of the run log open as ``fh`` (read sequentially from offset 0 in
    ``window``-sized reads, calling ``pause`` between them) and the offset just past the last one."""
    nl = array("q")
    fh.seek(0)
    pos = 0
    while pos < size:
        chunk = fh.read(min(window, size - pos))
        if not chunk:
            break
        nl.extend(m.start() + pos for m in _NEWLINE.finditer(chunk))
        pos += len(chunk)
        if pause is not None:
            pause()
    k = len(nl)
    while k and nl[k - 1] > 0:  # drop newlines of a batch still being written (see ``committed_newlines``)
        fh.seek(nl[k - 1] - 1)
        if fh.read(1) != b" ":
            break
        k -= 1
    if k < len(nl):
        nl = nl[:k]
    starts = array("q", [0])
    starts.extend(o + 1 for o in nl)
    starts.pop()
    return starts, (nl[-1] + 1 if nl else 0)
