"""Scanning a run log: the committed prefix, its index (:class:`RunLog`), the uncommitted tail and damage; decoding
committed spans; the doctor's full check (:func:`check_log`); see :mod:`engine.stores.fs.framing`."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

import xxhash

from engine.errors import StorageError
from engine.events import EventEnvelope, decode_envelope, decode_trusted
from engine.ids import RunId
from engine.stores.fs.framing.layout import ARTIFACT_NAME
from engine.stores.fs.framing.records import (
    _HASH_LEN,
    _RECORD_HEAD,
    BLOB_RECORD,
    CHUNK,
    EVENT_RECORD,
    FORMAT_V1,
    FORMAT_V2,
    _xxh,
    log_format,
    parse_blob,
    parse_record,
)

_loads = json.loads
_EVENT_BODY = re.compile(rb"^E[.+] [0-9]{1,10} [0-9a-f]{16} (.*)$", re.M)
"""The body of each event record of a span of complete lines (blob records skipped)."""


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
    digest: xxhash.xxh3_64 | None = field(default_factory=xxhash.xxh3_64)
    """A running XXH3-64 of the bytes ``[0, end)`` as the scan verified them (or this process wrote them);
    ``None`` once it no longer describes them. A read of that whole prefix whose bytes hash to it is the bytes the
    scan checked, record by record: its records need no check again (:func:`decode_lines` ``verified``)."""

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
        self.digest = xxhash.xxh3_64()

    def verified_digest(self, start: int, end: int) -> int | None:
        """The digest of the bytes ``[start, end)`` if the scan verified all of them and they are the whole committed
        prefix (``start == 0``, ``end == self.end``), else ``None``."""
        if start != 0 or end != self.end or self.digest is None:
            return None
        return int(self.digest.intdigest())

    def span(self, from_seq: int, to_seq: int | None) -> tuple[int, int, int]:
        """``(first_seq, start_offset, end_offset)`` of the clamped range; empty when start == end."""
        head = len(self.offsets)
        lo = max(from_seq, 1)
        hi = head if to_seq is None else min(to_seq, head)
        if lo > hi:
            return lo, 0, 0
        end = self.offsets[hi] if hi < head else self.end
        return lo, self.offsets[lo - 1], end

    def committed(self, start: int, offsets: list[int], data: bytes, blob_at: list[tuple[str, int]] = ()) -> None:  # type: ignore[assignment]
        """Record the commit ``data`` just written at ``start`` (``offsets``/``blob_at`` relative to it)."""
        self.offsets.extend(start + o for o in offsets)
        for aid, o in blob_at:
            self.blobs.setdefault(aid, start + o)
        self.records += len(offsets) + len(blob_at)
        if self.digest is not None:
            if start == self.end:
                self.digest.update(data)
            else:
                self.digest = None
        self.end = start + len(data)

    def stop_at(self, seq: int, damage: Damage) -> None:
        """A committed event ``seq`` turned out undecodable: the view ends before it, for good (see ``damage_size``)."""
        if seq <= len(self.offsets):
            self.end = self.offsets[seq - 1]
            del self.offsets[seq - 1 :]
            self.digest = None
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
    is recorded in ``log.damage``; it is never taken for a torn tail. The bytes of each commit, once checked, go into
    ``log.digest``.
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
    offsets = log.offsets
    pending: list[int] = []
    pending_blobs: list[tuple[str, int]] = []
    bad: Damage | None = None
    definite = False
    after = 0  # the offset just past the damaged line
    seq = len(offsets) + 1  # the seq the next event record must hold
    lineno = log.records + 1
    # buf holds the file's bytes from the end of the last commit (buf_at == log.end at each read): the records of a
    # commit not yet marked, then at most an incomplete line; i is where its next unread line starts.
    buf = b""
    buf_at = log.end
    i = 0
    while bad is None and buf_at + len(buf) < size:
        chunk = pread(min(CHUNK, size - buf_at - len(buf)), buf_at + len(buf))
        if not chunk:
            break
        buf += chunk
        while (nl := buf.find(b"\n", i)) >= 0:
            line = buf[i:nl]
            pos = buf_at + i
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
                    after = buf_at + nl + 1
                    break
                kind, final, body_at = parsed
                if kind == EVENT_RECORD:
                    if line.startswith(b"%s%d," % (ours, seq), body_at) and line.endswith(b"}"):
                        problem = None  # the bytes encode_envelope writes for (run_id, seq): no parse needed
                    else:
                        problem = _event_problem(line[body_at:], run_id, seq)
                    if problem is not None:
                        bad, definite, after = Damage(pos, lineno, *problem), True, buf_at + nl + 1
                        break
                    pending.append(pos)
                    seq += 1
                else:
                    aid = line[body_at : body_at + 64].decode("ascii", "replace")
                    if not ARTIFACT_NAME.fullmatch(aid) or line[body_at + 64 : body_at + 65] != b" ":
                        bad = Damage(pos, lineno, "blob_record_malformed", "a blob record without an id")
                        definite, after = True, buf_at + nl + 1
                        break
                    pending_blobs.append((aid, pos))
            else:
                final = not line.endswith(b" ")
                body = line if final else line[:-1]
                problem = _event_problem(body, run_id, seq)
                if problem is not None:
                    bad, definite = Damage(pos, lineno, *problem), _is_ours_v1(body, run_id)
                    after = buf_at + nl + 1
                    break
                pending.append(pos)
                seq += 1
            lineno += 1
            i = nl + 1
            if final:
                offsets.extend(pending)
                for aid, at in pending_blobs:
                    log.blobs.setdefault(aid, at)
                log.records = lineno - 1
                log.end = buf_at + i
                pending.clear()
                pending_blobs.clear()
        # what was committed in this chunk goes into the digest; the rest (uncommitted records) is kept
        done = log.end - buf_at
        if done:
            if log.digest is not None:
                log.digest.update(buf[:done])
            buf = buf[done:]
            buf_at = log.end
            i -= done
    if bad is not None and (definite or _valid_after(log.fmt, _complete_lines(pread, after, size), run_id)):
        log.damage = bad
        log.damage_size = size


def decode_lines(data: bytes, fmt: int = FORMAT_V1, *, verified: bool = False) -> list[EventEnvelope]:
    """Whole committed records (one ``pread`` of a span of the run log) → their envelopes (blob records skipped).

    Version 2: the scan checked each record's checksum (the engine wrote these bytes) and its run id and seq, so the
    envelopes are built through the trusted path (:func:`~engine.events.decode_trusted`); each event record's
    checksum is checked again (the bytes may have changed since the scan) unless ``verified``: the caller proved
    ``data`` to be the very bytes the scan checked (:meth:`RunLog.verified_digest`). Version 1: validated.

    A large span is decoded with the cyclic garbage collector paused (:func:`_gc_paused`)."""
    with _gc_paused(len(data) >= _GC_PAUSE_BYTES):
        if fmt != FORMAT_V2:
            return [decode_envelope(line) for line in data.split(b"\n")[:-1]]
        if verified:
            return decode_trusted(_EVENT_BODY.findall(data))  # every body in one pass at C speed
        bodies: list[bytes] = []
        append = bodies.append
        xxh = _xxh
        for line in data.split(b"\n")[:-1]:
            if line[:1] == b"E":
                # Checked again by the checksum alone: it covers the record's kind, mark and length with its body,
                # so bytes that match it are the record as written (the scan checked the rest); a third less than
                # parse_record's full framing check.
                sp = line.find(b" ", 3, 15)
                body_at = sp + _HASH_LEN + 2
                if sp < 4 or line[sp + 1 : body_at - 1] != b"%016x" % xxh(line[: sp + 1] + line[body_at:]):
                    raise StorageError.corruption("run_log_corrupt", "an event record's checksum does not match")
                append(line[body_at:])
        return decode_trusted(bodies)


_GC_PAUSE_BYTES = 1 << 20


@contextlib.contextmanager
def _gc_paused(pause: bool) -> Iterator[None]:
    """Pause the cyclic garbage collector (when ``pause`` and it is enabled) for the block: decoding a large span
    builds hundreds of thousands of objects, none of them in a cycle, and each of the collections their allocations
    trigger walks every live object again (100k events: 12 µs per event with it, 5.6 without). It is enabled again
    after the block only if it was enabled before (whoever disabled it for their own reasons keeps it so)."""
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decode_span(data: bytes, fmt: int, digest: int | None = None) -> tuple[list[EventEnvelope], int | None]:
    """Like :func:`decode_lines`, but stops at the first undecodable event: ``(envelopes, index of the bad one)``.

    ``digest``: :meth:`RunLog.verified_digest` of the span ``data`` was read from; when ``data`` hashes to it, it is
    the bytes the scan checked and its records are not checked again."""
    try:
        verified = digest is not None and fmt == FORMAT_V2 and _xxh(data) == digest
        return decode_lines(data, fmt, verified=verified), None
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
