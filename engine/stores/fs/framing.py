"""The on-disk layout of a filesystem store and the framing of its run logs: the ONE module that knows them.

The store (:mod:`engine.stores.fs`), ``mfm doctor`` (:mod:`engine.doctor`) and the TUI's log index
(``mfm_tui.log_index``) read and write store files only through the names, paths and functions defined here.

Layout. Paths are relative to the store root (join them with it: ``f"{root}/{events_file(run_id)}"``)::

    store.json                    STORE_META_FILE: {"created_at", "format": STORE_FORMAT, "version": STORE_VERSION}
    changes.log                   JOURNAL_FILE: "<run_id> <new_head>\\n" per successful append (a hint)
    runs.index                    RUNS_INDEX_FILE: a cache of every run's summary (engine.stores.fs._runs_index)
    runs/<run_id>/                run_folder()
      events.jsonl                events_file(): the run log: event and blob records (format below)
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
    artifacts/<aa>/<id>           artifact_file(): raw bytes; <aa> = the id's first two hex chars (v2: a verified copy
                                  of a run log's blob record, or a durable file for a blob written outside a run)
    artifacts/<aa>/<id>.kind      artifact_kind_file(): the ArtifactKind of a durable put (advisory; a copy has none)
    quarantine/<stamp>/...        QUARANTINE_DIR: what ``mfm doctor --repair`` moved aside (same relative paths)
    .tmp-<tag>-<pid>-<n>          temp_name(): a write in progress (or killed), in the folder of its target

Every folder is ``DIR_MODE`` (0700) and every file ``FILE_MODE`` (0600); store files are opened with
``O_NOFOLLOW`` (``RD_FLAGS`` for reads): a symlink planted in place of one is refused. Folders and files are reached
from the root's descriptor through :mod:`engine.stores.fs.safe_paths` (no symlink below the root is followed).

Format (``store.json`` ``version``; a run log's first byte also tells: ``{`` version 1, ``E``/``B`` version 2).
New stores are version 2; a version-1 store (:data:`STORE_VERSIONS`) opens, reads and keeps writing version 1
until ``mfm doctor --migrate`` converts it (each run log rewritten beside the old one, synced, renamed over it,
``store.json`` flipped last: a kill at any instant leaves logs that each read in their own format).

Version 2. ``events.jsonl`` holds one *record* per line (:func:`record`)::

    <K><M> <length> <xxh3-64, 16 hex> <body>\\n

``K`` is ``E`` (an event: the body is the envelope's wire JSON, byte for byte what version 1 writes) or ``B`` (a
blob: ``<artifact id> t <kind JSON> <bytes>`` when the bytes are UTF-8 without CR/LF, as canonical JSON is, else
``<artifact id> b <kind JSON> <base64>``, :func:`blob_body`); ``M`` is ``+`` (more records of this commit follow) or
``.`` (the commit mark: the commit's last record); ``length`` is the body's length in bytes; the checksum is
xxHash's XXH3-64 of ``<K><M> <length> `` followed by the body (:func:`parse_record` checks all of it). A commit is
ONE ``write`` (:func:`frame_commit`: its blob records, then its event records) and ONE ``fdatasync``; it is
committed when its record with the commit mark is complete, so a reader sees every commit whole or not at all. The
blob's copy under ``artifacts/`` is a cache, written from the record by the first read that needs it (never on the
commit's path) and rebuilt when bad. ``tail -f`` and ``grep`` work on the file; ``cut -d' ' -f5-`` of the ``E``
lines gives the envelopes.

Version 1. One wire-form envelope per line (:func:`encode_line` / :func:`decode_line`), line ``i`` (0-based)
holding ``seq == i + 1``; a batch of n envelopes is ONE ``write`` (:func:`frame_batch`) whose first n-1 lines end
with ``" \\n"`` (a space, insignificant JSON whitespace, before the newline) and whose last line, the commit, ends
with ``"}\\n"``. Version-1 logs hold no blobs.

Scan. :func:`scan` walks forward from the end of the committed prefix, checking each complete record (v2: framing
and checksum; both: this run's id and the next seq) and committing at each commit mark. What follows the committed
prefix is either the *uncommitted tail* (records of a commit without its mark yet, then at most an incomplete line,
or damaged lines with NO valid record after them) or *damage*: a damaged record followed by a valid one, or a
record whose checksum is valid but which is not the next event of this run (a duplicated line, another run's
event, undecodable JSON). Readers ignore the uncommitted tail (it may be a commit being written right now); a
writer holding the run's lock knows no one else is writing, so for it the tail is *torn* (a crash) and is copied
aside and truncated before the next append. Damage is never taken for a torn tail: ``RunLog.damage`` records it,
reads return what precedes it (``read_range`` says it stopped), appends are refused (``run_log_corrupt``), and
nothing is moved or truncated (``mfm doctor`` reports it). :func:`check_log` is the doctor's slower scan of a whole
file: it decodes every record and, past the first damaged one, counts the valid records that follow.

Index. :class:`RunLog` keeps the start offset of every committed event record (``offsets[seq - 1]``) and of
every committed blob record (``blobs``), so ``read_range`` from any seq is one ``pread`` of exactly the wanted
bytes, and a refresh only re-reads what was appended since.
A viewer that only needs line positions, not validated envelopes, uses :func:`committed_lines` (a buffer, e.g. the
tail of a file) and :func:`index_lines` (a whole file, in large sequential reads); :func:`last_envelope` reads only
the end of a file (is the run finished?).
"""

from __future__ import annotations

import base64
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

import xxhash

from engine._kinds import ArtifactKind
from engine.errors import StorageError
from engine.events import EventEnvelope, decode_envelope, decode_trusted, encode_envelope
from engine.ids import RunId

__all__ = [
    "APPEND_LOCK_FILE",
    "ARTIFACTS_DIR",
    "ARTIFACT_NAME",
    "BLOB_RECORD",
    "CANCEL_FILE",
    "CHUNK",
    "CLOEXEC",
    "CONTROL_DIR",
    "DIRECTORY",
    "DIR_MODE",
    "EVENTS_FILE",
    "EVENT_RECORD",
    "EXEC_OUTPUT_FILES",
    "FILE_MODE",
    "FORMAT_V1",
    "FORMAT_V2",
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
    "RUNS_INDEX_FILE",
    "STORE_FORMAT",
    "STORE_META_FILE",
    "STORE_VERSION",
    "STORE_VERSIONS",
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
    "blob_body",
    "blob_ids",
    "cancel_file",
    "check_log",
    "committed_lines",
    "committed_newlines",
    "control_folder",
    "decode_line",
    "decode_lines",
    "decode_span",
    "encode_line",
    "events_file",
    "first_bad_record",
    "frame_batch",
    "frame_commit",
    "framed_lengths",
    "holds",
    "index_lines",
    "journal_end",
    "journal_line",
    "journal_runs",
    "last_envelope",
    "lease_file",
    "line_at",
    "log_format",
    "newline_offsets",
    "parse_blob",
    "parse_record",
    "pending_file",
    "quarantined_tail_file",
    "record",
    "record_body",
    "retry_now_file",
    "retry_now_name",
    "run_folder",
    "scan",
    "store_meta",
    "summary_file",
    "temp_name",
    "temp_writer_pid",
    "torn_tail_file",
    "v1_to_v2",
]

# -- the store's files ---------------------------------------------------------------------------------------------

STORE_FORMAT = "mfm-store"
STORE_VERSION = 2
STORE_VERSIONS = (1, 2)
"""The store versions this program opens (``store.json``); new stores are ``STORE_VERSION``."""
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
RUNS_INDEX_FILE = "runs.index"
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

    A v2 event record line (header included) is accepted too: its header is dropped (not checked).
    Raises ``StorageError`` Corruption ``machine_event_decode_failed``.
    """
    return decode_envelope(record_body(line))


def frame_batch(lines: list[bytes]) -> bytes:
    """The bytes of one batch: continuation lines end with ``" \\n"``, the final line with ``"\\n"``."""
    if len(lines) == 1:
        return lines[0] + b"\n"
    return _CONTINUED.join(lines) + b"\n"


def framed_lengths(lines: list[bytes]) -> list[int]:
    """The length on disk of each line of :func:`frame_batch` (``lines``), its terminator included."""
    last = len(lines) - 1
    return [len(line) + (1 if i == last else 2) for i, line in enumerate(lines)]


# -- format v2: checksummed records ---------------------------------------------------------------------------------

FORMAT_V1 = 1
FORMAT_V2 = 2
EVENT_RECORD = 0x45  # "E"
BLOB_RECORD = 0x42  # "B"
_MORE = 0x2B  # "+": more records of the same commit follow
_FINAL = 0x2E  # ".": the commit mark (the last record of a commit)
_HASH_LEN = 16
_KINDS = (EVENT_RECORD, BLOB_RECORD)
_MARKS = (_MORE, _FINAL)
_RECORD_HEAD = re.compile(rb"^([EB])([.+]) ([0-9]{1,10}) ([0-9a-f]{16}) ", re.M)
_xxh = xxhash.xxh3_64_intdigest
_raw_decode = json.JSONDecoder().raw_decode


def log_format(first: bytes, default: int) -> int:
    """The format of a run log whose first byte is ``first``: ``{`` v1, ``E``/``B`` v2, else ``default``."""
    if first[:1] == b"{":
        return FORMAT_V1
    if first[:1] in (b"E", b"B"):
        return FORMAT_V2
    return default


def record(kind: int, final: bool, body: bytes) -> bytes:
    """One v2 record: ``<K><M> <len> <xxh3-64> <body>\\n``; the checksum covers ``<K><M> <len> `` and the body."""
    head = b"%c%c %d " % (kind, _FINAL if final else _MORE, len(body))
    return b"%s%016x %s\n" % (head, _xxh(head + body), body)


_KIND_JSON: dict[ArtifactKind, bytes] = {}
"""The wire JSON of each kind seen (a handful): encoded once per process."""


def blob_body(artifact_id: str, kind: ArtifactKind, data: bytes) -> bytes:
    """``<id> t <kind> <bytes>`` (UTF-8 text without CR/LF, e.g. canonical JSON) or ``<id> b <kind> <base64>``."""
    kind_json = _KIND_JSON.get(kind)
    if kind_json is None:
        kind_json = json.dumps(kind.to_wire(), ensure_ascii=True, separators=(",", ":")).encode()
        if len(_KIND_JSON) < 1024:
            _KIND_JSON[kind] = kind_json
    if b"\n" not in data and b"\r" not in data:
        text = data.isascii()  # the usual case (canonical JSON escapes nothing else): no decode needed
        if not text:
            try:
                data.decode("utf-8")
                text = True
            except UnicodeDecodeError:
                pass
        if text:
            return b"%s t %s %s" % (artifact_id.encode(), kind_json, data)
    return b"%s b %s %s" % (artifact_id.encode(), kind_json, base64.b64encode(data))


def parse_blob(body: bytes) -> tuple[str, ArtifactKind, bytes]:
    """A blob record's body → ``(artifact_id, kind, bytes)``; ``ValueError`` if malformed (not hash-checked)."""
    aid = body[:64].decode("ascii")
    if (
        not ARTIFACT_NAME.fullmatch(aid)
        or body[64:65] != b" "
        or body[65:66] not in (b"t", b"b")
        or body[66:67] != b" "
    ):
        raise ValueError("malformed blob record header")
    kind_wire, start = _raw_decode(body[:4096].decode("latin-1"), 67)  # the kind is ASCII: 1 char = 1 byte
    kind = ArtifactKind.from_wire(kind_wire)
    if body[start : start + 1] != b" ":
        raise ValueError("malformed blob record: no space after the kind")
    payload = body[start + 1 :]
    if body[65:66] == b"b":
        payload = base64.b64decode(payload, validate=True)
    return aid, kind, payload


def parse_record(line: bytes) -> tuple[int, bool, int] | None:
    """A v2 record line (without its newline) → ``(kind, final, body_offset)``; ``None`` when its framing or its
    checksum is wrong."""
    sp = line.find(b" ", 3, 15)
    if sp < 4 or line[2] != 0x20:
        return None
    digits = line[3:sp]
    body_at = sp + _HASH_LEN + 2
    if not digits.isdigit() or len(line) - body_at != int(digits) or line[body_at - 1] != 0x20:
        return None
    kind, mark = line[0], line[1]
    if kind not in _KINDS or mark not in _MARKS:
        return None
    if line[sp + 1 : body_at - 1] != b"%016x" % _xxh(line[: sp + 1] + line[body_at:]):
        return None
    return kind, mark == _FINAL, body_at


def first_bad_record(data: bytes, start: int, end: int) -> int | None:
    """In the complete lines of ``data[start:end]`` (a span of a v2 run log that starts at a record): the offset of
    the first line that is not a record with a valid checksum (garbage, a flipped byte), ``None`` when all are good."""
    pos = start
    while pos < end:
        nl = data.find(b"\n", pos, end)
        if nl < 0:
            return None
        if parse_record(data[pos:nl]) is None:
            return pos
        pos = nl + 1
    return None


def holds(pread: Callable[[int, int], bytes], start: int, size: int, needle: bytes) -> bool:
    """Whether the bytes ``[start, size)`` of a file (read by ``pread(n, offset)`` in :data:`CHUNK` reads) contain
    ``needle`` (a byte search: no record is parsed)."""
    keep = len(needle) - 1
    pos = start
    tail = b""
    while pos < size:
        chunk = pread(min(CHUNK, size - pos), pos)
        if not chunk:
            return False
        if needle in tail + chunk[: keep + len(needle)] or needle in chunk:
            return True
        tail = chunk[-keep:] if keep else b""
        pos += len(chunk)
    return False


def blob_ids(data: bytes, prefix: str) -> set[str]:
    """The artifact ids starting with ``prefix`` (hex) of the blob records in ``data`` (complete lines of a v2 log;
    checksums are not checked here: the caller confirms each id with a scan). Found by the literal `` <prefix>``
    (a fast substring search), then the record header before it is matched."""
    if not all(c in "0123456789abcdef" for c in prefix) or len(prefix) > 64:
        return set()
    pattern = re.compile(rb" (" + prefix.encode() + rb"[0-9a-f]{%d}) [tb] " % (64 - len(prefix)))
    out: set[str] = set()
    for m in pattern.finditer(data):
        line = data.rfind(b"\n", 0, m.start()) + 1
        head = _RECORD_HEAD.match(data, line)
        if head is not None and head.group(1) == b"B" and head.end() == m.start() + 1:
            out.add(m.group(1).decode())
    return out


def line_at(data: bytes, start: int) -> bytes:
    """The line of ``data`` that starts at ``start``, without its newline (a v2 record's body when ``start`` is the
    body offset :func:`committed_lines` gives)."""
    nl = data.find(b"\n", start)
    return data[start:] if nl < 0 else data[start:nl]


def record_body(line: bytes) -> bytes:
    """The body of a v2 record line (its header dropped, not checked); a v1 line is returned as it is."""
    if line[:1] in (b"E", b"B"):
        m = _RECORD_HEAD.match(line)
        if m is not None:
            return line[m.end() :]
    return line


def frame_commit(
    lines: list[bytes], blobs: list[tuple[str, ArtifactKind, bytes]]
) -> tuple[bytes, list[int], list[tuple[str, int]]]:
    """The bytes of one v2 commit (blob records, then event records; the last one carries the commit mark), the
    offset of each event record and ``(artifact_id, offset)`` of each blob record, relative to its start."""
    out: list[bytes] = []
    blob_at: list[tuple[str, int]] = []
    pos = 0
    last = len(lines) - 1
    last_blob = -1 if lines else len(blobs) - 1
    for i, (aid, kind, data) in enumerate(blobs):
        rec = record(BLOB_RECORD, i == last_blob, blob_body(aid, kind, data))
        blob_at.append((aid, pos))
        out.append(rec)
        pos += len(rec)
    offsets: list[int] = []
    for i, body in enumerate(lines):
        rec = record(EVENT_RECORD, i == last, body)
        offsets.append(pos)
        out.append(rec)
        pos += len(rec)
    return b"".join(out), offsets, blob_at


@dataclass(slots=True)
class RunLog:
    """What is known about one run log: the committed prefix, its event record offsets, its blob records, and the
    damage that stopped the scan (if any)."""

    offsets: array[int] = field(default_factory=lambda: array("q"))
    """Start offset of the record (v2) or line (v1) of each committed event: ``offsets[seq - 1]``."""
    end: int = 0
    """Byte offset just past the last committed record."""
    ident: tuple[int, int] | None = None
    """``(st_dev, st_ino)`` of the file the offsets describe."""
    fmt: int = 0
    """``FORMAT_V1`` / ``FORMAT_V2`` once the file has a first byte, 0 before."""
    records: int = 0
    """Committed records (v2: events and blobs; v1: lines)."""
    blobs: dict[str, int] = field(default_factory=dict)
    """Artifact id → offset of a committed blob record holding its bytes."""
    damage: Damage | None = None
    """Corruption found past ``end`` (a damaged record with a valid one after it): appends are refused."""
    damage_size: int = -1
    """The file size when ``damage`` was found (-1: found by a decode, kept until the file is replaced)."""

    @property
    def head(self) -> int:
        return len(self.offsets)

    def reset(self, ident: tuple[int, int] | None) -> None:
        self.offsets = array("q")
        self.end = 0
        self.ident = ident
        self.fmt = 0
        self.records = 0
        self.blobs = {}
        self.damage = None
        self.damage_size = -1

    def span(self, from_seq: int, to_seq: int | None) -> tuple[int, int, int]:
        """``(first_seq, start_offset, end_offset)`` of the clamped range; empty when start == end."""
        head = len(self.offsets)
        lo = max(from_seq, 1)
        hi = head if to_seq is None else min(to_seq, head)
        if lo > hi:
            return lo, 0, 0
        end = self.offsets[hi] if hi < head else self.end
        return lo, self.offsets[lo - 1], end

    def committed(self, start: int, offsets: list[int], size: int, blob_at: list[tuple[str, int]] = ()) -> None:  # type: ignore[assignment]
        """Record a commit of ``size`` bytes just written at ``start`` (``offsets``/``blob_at`` relative to it)."""
        self.offsets.extend(start + o for o in offsets)
        for aid, o in blob_at:
            self.blobs.setdefault(aid, start + o)
        self.records += len(offsets) + len(blob_at)
        self.end = start + size

    def stop_at(self, seq: int, damage: Damage) -> None:
        """A committed event ``seq`` turned out undecodable: the view ends before it, for good (see ``damage_size``)."""
        if seq <= len(self.offsets):
            self.end = self.offsets[seq - 1]
            del self.offsets[seq - 1 :]
        self.damage = damage
        self.damage_size = -1


def _complete_lines(pread: Callable[[int, int], bytes], start: int, size: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of each newline-terminated line in ``[start, size)`` (the newline dropped)."""
    pos = start
    buf = b""
    buf_at = start
    while buf_at + len(buf) < size:
        chunk = pread(min(CHUNK, size - buf_at - len(buf)), buf_at + len(buf))
        if not chunk:
            return
        buf = buf[pos - buf_at :] + chunk
        buf_at = pos
        i = 0
        while (nl := buf.find(b"\n", i)) >= 0:
            yield buf_at + i, buf[i:nl]
            i = nl + 1
        pos = buf_at + i


def _event_problem(body: bytes, run_id: str, seq: int) -> tuple[str, str] | None:
    """``None`` when ``body`` is the wire envelope of (``run_id``, ``seq``), else ``(code, reason)``.

    ``encode_envelope`` always starts a line with ``{"run_id":"<id>","seq":<n>,`` and ends it with ``}``: matching
    those bytes costs a fraction of a JSON parse, and a line is parsed in full only when that is inconclusive.
    """
    if body.startswith(b'{"run_id":"%s","seq":%d,' % (run_id.encode(), seq)) and body.endswith(b"}"):
        return None
    try:
        obj = _loads(body)
    except ValueError as exc:
        return "event_line_undecodable", f"not JSON: {exc}"[:200]
    if type(obj) is not dict or "seq" not in obj:
        return "event_line_undecodable", "not an event envelope"
    if obj.get("run_id") != run_id:
        return "event_run_id_mismatch", f"the envelope names run {obj.get('run_id')}"
    if obj.get("seq") != seq:
        return "event_seq_gap", f"seq {obj.get('seq')} where {seq} was expected"
    return None


def _is_ours_v1(line: bytes, run_id: str) -> bool:
    """Is this v1 line a JSON object of this run (whatever its seq)?"""
    try:
        obj = _loads(line)
    except ValueError:
        return False
    return type(obj) is dict and obj.get("run_id") == run_id


def _valid_after(fmt: int, lines: Iterator[tuple[int, bytes]], run_id: str) -> int:
    """How many of ``lines`` are valid records (v2: framing and checksum; v1: a JSON object of this run)."""
    if fmt == FORMAT_V2:
        return sum(1 for _, line in lines if parse_record(line) is not None)
    return sum(1 for _, line in lines if _is_ours_v1(line.rstrip(b" "), run_id))


def scan(log: RunLog, run_id: str, size: int, pread: Callable[[int, int], bytes], default_fmt: int = FORMAT_V2) -> None:
    """Extend ``log`` over every commit in ``[log.end, size)``; stop at the uncommitted tail or at damage.

    What follows the committed prefix is either an *uncommitted tail* (records of a commit without its commit mark
    yet, then at most an incomplete line, or damaged lines with no valid record after them: a write in progress, or
    the leftover of a crash) or *damage*: a damaged record followed by a valid one, or a record whose checksum is
    valid that is not the next event of this run (a duplicated line, another run's event, undecodable JSON). Damage
    is recorded in ``log.damage``; it is never taken for a torn tail.
    """
    if log.damage is not None:
        if log.damage_size in (-1, size):
            return
        log.damage = None
    if log.end >= size:
        return
    if log.fmt == 0:
        log.fmt = log_format(pread(1, 0), default_fmt)
    v2 = log.fmt == FORMAT_V2
    ours = b'{"run_id":"%s","seq":' % run_id.encode()
    pending: list[int] = []
    pending_blobs: list[tuple[str, int]] = []
    n_pending = 0
    bad: Damage | None = None
    definite = False
    lines = _complete_lines(pread, log.end, size)
    for pos, line in lines:
        seq = len(log.offsets) + len(pending) + 1
        lineno = log.records + n_pending + 1
        if v2:
            parsed = parse_record(line)
            if parsed is None:
                head = _RECORD_HEAD.match(line)
                code = "record_checksum_mismatch" if head is not None else "record_malformed"
                bad = Damage(
                    pos,
                    lineno,
                    code,
                    "the record's checksum does not match its bytes"
                    if head
                    else "not a record (no valid kind, length and checksum)",
                )
                break
            kind, final, body_at = parsed
            if kind == EVENT_RECORD:
                if line.startswith(b"%s%d," % (ours, seq), body_at) and line.endswith(b"}"):
                    problem = None  # the bytes encode_envelope writes for (run_id, seq): no parse needed
                else:
                    problem = _event_problem(line[body_at:], run_id, seq)
                if problem is not None:
                    bad, definite = Damage(pos, lineno, *problem), True
                    break
                pending.append(pos)
            else:
                aid = line[body_at : body_at + 64].decode("ascii", "replace")
                if not ARTIFACT_NAME.fullmatch(aid) or line[body_at + 64 : body_at + 65] != b" ":
                    bad, definite = Damage(pos, lineno, "blob_record_malformed", "a blob record without an id"), True
                    break
                pending_blobs.append((aid, pos))
        else:
            final = not line.endswith(b" ")
            body = line if final else line[:-1]
            problem = _event_problem(body, run_id, seq)
            if problem is not None:
                bad, definite = Damage(pos, lineno, *problem), _is_ours_v1(body, run_id)
                break
            pending.append(pos)
        n_pending += 1
        if final:
            log.offsets.extend(pending)
            for aid, at in pending_blobs:
                log.blobs.setdefault(aid, at)
            log.records += n_pending
            log.end = pos + len(line) + 1
            pending.clear()
            pending_blobs.clear()
            n_pending = 0
    if bad is not None and (definite or _valid_after(log.fmt, lines, run_id)):
        log.damage = bad
        log.damage_size = size


def decode_lines(data: bytes, fmt: int = FORMAT_V1) -> list[EventEnvelope]:
    """Whole committed records (one ``pread`` of a span of the run log) → their envelopes (blob records skipped).

    Version 2: the scan checked each record's checksum (the engine wrote these bytes) and its run id and seq, so the
    envelopes are built through the trusted path (:func:`~engine.events.decode_trusted`); version 1: validated."""
    if fmt != FORMAT_V2:
        return [decode_envelope(line) for line in data.split(b"\n")[:-1]]
    bodies: list[bytes] = []
    append = bodies.append
    xxh = _xxh
    for line in data.split(b"\n")[:-1]:
        if line[:1] == b"E":
            # Checked again (the bytes may have changed since the scan), by the checksum alone: it covers the
            # record's kind, mark and length with its body, so bytes that match it are the record as written (the
            # scan checked the rest); a third less than parse_record's full framing check, resume's hot loop.
            sp = line.find(b" ", 3, 15)
            body_at = sp + _HASH_LEN + 2
            if sp < 4 or line[sp + 1 : body_at - 1] != b"%016x" % xxh(line[: sp + 1] + line[body_at:]):
                raise StorageError.corruption("run_log_corrupt", "an event record's checksum does not match")
            append(line[body_at:])
    return decode_trusted(bodies)


def decode_span(data: bytes, fmt: int) -> tuple[list[EventEnvelope], int | None]:
    """Like :func:`decode_lines`, but stops at the first undecodable event: ``(envelopes, index of the bad one)``."""
    try:
        return decode_lines(data, fmt), None
    except StorageError:
        pass
    out: list[EventEnvelope] = []
    for line in data.split(b"\n")[:-1]:
        if fmt == FORMAT_V2:
            if line[:1] != b"E":
                continue
            parsed = parse_record(line)
            if parsed is None:
                return out, len(out)
            line = line[parsed[2] :]
        try:
            out.append(decode_envelope(line))
        except StorageError:
            return out, len(out)
    return out, None


def last_envelope(fh: BinaryIO) -> EventEnvelope | None:
    """The envelope of the last complete, decodable event record of the run log open as ``fh`` (either format),
    ``None`` if there is none.

    Reads backwards from the end in growing chunks (a finished run is known from its tail); a line without its
    newline, a blob record, a record whose checksum fails or one that does not decode, is skipped.
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
            if line[:1] in (b"E", b"B"):
                parsed = parse_record(line)
                if parsed is None or parsed[0] != EVENT_RECORD:
                    continue
                line = line[parsed[2] :]
            try:
                return decode_envelope(line)
            except StorageError:
                continue  # torn tail
        if start == 0:
            return None
        chunk *= 4


# -- the doctor's full check ---------------------------------------------------------------------------------------


class Damage(NamedTuple):
    """The first record of a run log that is not a committed envelope (or blob)."""

    offset: int
    line: int
    """1-based line number; 0 when the damage is a commit without its final record."""
    code: str
    """``torn_tail``, ``record_checksum_mismatch``, ``record_malformed``, ``blob_record_malformed``,
    ``event_line_undecodable``, ``event_run_id_mismatch`` or ``event_seq_gap``."""
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
    """Valid records after the first bad one, the bad one included when its own checksum (v2) or JSON (v1) is
    valid: damage with a valid record after it is corruption, not a torn tail."""
    fmt: int = 0
    blobs: dict[str, int] = field(default_factory=dict)
    """Artifact id → offset of a committed blob record."""


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


def check_log(fd: int, run_id: RunId, default_fmt: int = FORMAT_V2) -> LogCheck:
    """Read the whole run log open on ``fd``, decoding every record: its committed envelopes and its first damage."""
    s = LogCheck()
    pending: list[EventEnvelope] = []
    pending_blobs: list[tuple[str, int]] = []
    pos = 0
    lineno = 0
    batch_start = 0
    for line in _lines(fd):
        start = pos
        pos += len(line)
        lineno += 1
        if lineno == 1:
            s.fmt = log_format(line[:1], default_fmt)
        v2 = s.fmt == FORMAT_V2
        complete = line.endswith(b"\n")
        if s.first_bad is not None:
            if complete and _valid_after(s.fmt, iter([(start, line[:-1])]), run_id):
                s.valid_after += 1
            continue
        if not complete:
            s.first_bad = Damage(start, lineno, "torn_tail", "the last line is incomplete")
            continue
        body = line[:-1]
        if v2:
            parsed = parse_record(body)
            if parsed is None:
                code = "record_checksum_mismatch" if _RECORD_HEAD.match(body) else "record_malformed"
                s.first_bad = Damage(start, lineno, code, "the record's checksum or framing is wrong")
                continue
            kind, final, body_at = parsed
            if kind == BLOB_RECORD:
                try:
                    aid, _, blob = parse_blob(body[body_at:])
                    if hashlib.sha256(blob).hexdigest() != aid:
                        raise ValueError(f"the blob's bytes do not hash to its id {aid}")
                except ValueError as exc:
                    s.first_bad = Damage(start, lineno, "blob_record_malformed", str(exc)[:200])
                    s.valid_after += 1
                    continue
                if not pending and not pending_blobs:
                    batch_start = start
                pending_blobs.append((body[body_at : body_at + 64].decode(), start))
                if final:
                    s.envelopes.extend(pending)
                    s.blobs.update((a, o) for a, o in pending_blobs if a not in s.blobs)
                    pending.clear()
                    pending_blobs.clear()
                    s.committed_end = pos
                continue
            body = body[body_at:]
        else:
            final = not body.endswith(b" ")
        expected = len(s.envelopes) + len(pending) + 1
        problem = _event_problem(body.rstrip(b" ") if not v2 else body, run_id, expected)
        if problem is None:
            try:
                env = decode_envelope(body)
            except StorageError as exc:
                problem = "event_line_undecodable", exc.message
        if problem is not None:
            s.first_bad = Damage(start, lineno, *problem)
            if v2 or _is_ours_v1(body.rstrip(b" "), run_id):
                s.valid_after += 1
            continue
        if not pending and not pending_blobs:
            batch_start = start
        pending.append(env)
        if final:
            s.envelopes.extend(pending)
            s.blobs.update((a, o) for a, o in pending_blobs if a not in s.blobs)
            pending.clear()
            pending_blobs.clear()
            s.committed_end = pos
    s.size = pos
    if s.first_bad is None and (pending or pending_blobs):
        s.first_bad = Damage(batch_start, 0, "torn_tail", "a commit ends without its final record")
    return s


# -- line positions, for viewers -----------------------------------------------------------------------------------


def newline_offsets(data: bytes | mmap.mmap, start: int = 0, end: int | None = None) -> array[int]:
    """Offsets of every ``\\n`` in ``data[start:end]`` (absolute), in one C-speed regex pass."""
    stop = len(data) if end is None else end
    return array("q", (m.start() for m in _NEWLINE.finditer(data, start, stop)))


def committed_newlines(nl: array[int], data: bytes | mmap.mmap, base: int = 0) -> array[int]:
    """The newlines of ``nl`` that end *committed* v1 lines (absolute offsets; ``data`` starts at ``base``).

    A batch counts only once its final line is complete, so the newlines after the last final line (those of
    continuation lines, ``" \\n"``) belong to a batch still being written (or torn by a crash) and are dropped.
    """
    k = len(nl)
    while k and nl[k - 1] > base and data[nl[k - 1] - 1 - base] == 0x20:
        k -= 1
    return nl if k == len(nl) else nl[:k]


def _v2_events(data: bytes, first: int, base: int) -> tuple[array[int], int, int]:
    """In the complete lines of ``data[first:]``: the body start of each event record up to the last commit mark
    (absolute), the offset just past that commit's last record, and the offset past the last complete line."""
    starts = array("q")
    committed_n = 0
    end = base + first
    done = first
    for m in _RECORD_HEAD.finditer(data, first):
        nl = data.find(b"\n", m.end())
        if nl < 0:
            break
        done = nl + 1
        if m.group(1) == b"E":
            starts.append(base + m.end())
        if m.group(2) == b".":
            committed_n = len(starts)
            end = base + nl + 1
    del starts[committed_n:]
    return starts, end, base + done


def committed_lines(data: bytes, base: int = 0, *, skip_first: bool = False) -> tuple[array[int], int]:
    """The start offsets of the committed event lines in ``data`` (read at file offset ``base``; for a v2 log, the
    start of each event record's body: the envelope's JSON) and the offset just past the last commit (``base`` when
    there is none). ``skip_first``: ``data`` may start inside a line (the tail of a file), so what precedes its
    first newline is not a line of its own.
    """
    first = data.find(b"\n") + 1 if skip_first else 0
    if skip_first and first == 0:
        return array("q"), base
    if data[first : first + 1] in (b"E", b"B"):
        starts, end, _ = _v2_events(data, first, base)
        return starts, end
    nl = committed_newlines(newline_offsets(data), data)
    if not nl:
        return array("q"), base
    starts = array("q", [base + first])
    starts.extend(base + o + 1 for o in nl if o + 1 > first)
    starts.pop()  # the entry after the last newline is not a complete line
    return starts, base + nl[-1] + 1


def index_lines(
    fh: BinaryIO, size: int, *, window: int = CHUNK, pause: Callable[[], None] | None = None
) -> tuple[array[int], int]:
    """The start offsets of every committed event line (v2: record body) of the run log open as ``fh`` (read
    sequentially from offset 0 in ``window``-sized reads, calling ``pause`` between them) and the offset just past
    the last commit."""
    fh.seek(0)
    if fh.read(1) in (b"E", b"B"):
        return _index_v2(fh, size, window, pause)
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


def _index_v2(fh: BinaryIO, size: int, window: int, pause: Callable[[], None] | None) -> tuple[array[int], int]:
    starts = array("q")
    committed_n = 0
    end = 0
    pos = 0  # file offset of buf[0]
    buf = b""
    done = 0
    fh.seek(0)
    while done < size:
        chunk = fh.read(min(window, size - done))
        if not chunk:
            break
        done += len(chunk)
        buf += chunk
        for m in _RECORD_HEAD.finditer(buf):
            nl = buf.find(b"\n", m.end())
            if nl < 0:
                break
            if m.group(1) == b"E":
                starts.append(pos + m.end())
            if m.group(2) == b".":
                committed_n = len(starts)
                end = pos + nl + 1
        last = buf.rfind(b"\n") + 1
        pos += last
        buf = buf[last:]
        if pause is not None:
            pause()
    del starts[committed_n:]
    return starts, end


# -- migration ------------------------------------------------------------------------------------------------------


def v1_to_v2(data: bytes) -> bytes:
    """Committed version-1 lines → the same envelopes as version-2 event records, commit for commit (a continuation
    line becomes a record without the commit mark); the envelopes' bytes are kept as they are."""
    out: list[bytes] = []
    for line in data.split(b"\n")[:-1]:
        final = not line.endswith(b" ")
        out.append(record(EVENT_RECORD, final, line if final else line[:-1]))
    return b"".join(out)


def store_meta(version: int, created_at: str) -> bytes:
    """The bytes of ``store.json``."""
    return json.dumps({"created_at": created_at, "format": STORE_FORMAT, "version": version}, sort_keys=True).encode()
