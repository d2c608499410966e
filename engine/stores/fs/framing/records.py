"""Record encoding: version-1 lines and batches, version-2 checksummed event and blob records, and the
conversion of one into the other (see :mod:`engine.stores.fs.framing` for the format)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable

import xxhash

from engine._kinds import ArtifactKind
from engine.events import EventEnvelope, decode_envelope, encode_envelope
from engine.stores.fs.framing.layout import ARTIFACT_NAME

# -- lines and batches ---------------------------------------------------------------------------------------------

CHUNK = 1 << 20
_CONTINUED = b" \n"


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


# -- migration ------------------------------------------------------------------------------------------------------


def v1_to_v2(data: bytes) -> bytes:
    """Committed version-1 lines → the same envelopes as version-2 event records, commit for commit (a continuation
    line becomes a record without the commit mark); the envelopes' bytes are kept as they are."""
    out: list[bytes] = []
    for line in data.split(b"\n")[:-1]:
        final = not line.endswith(b" ")
        out.append(record(EVENT_RECORD, final, line if final else line[:-1]))
    return b"".join(out)
