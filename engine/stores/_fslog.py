"""One run's event file: batch framing, the committed-prefix scan and the in-memory offset index.

Framing. ``events.jsonl`` holds one wire-form envelope per line. A batch of n envelopes is written with ONE
``write``: its first n-1 lines end with ``" \\n"`` (a space, insignificant JSON whitespace, before the newline) and
its last line ends with ``"}\\n"``. A batch is committed when its last line is complete, so a reader (or a reopened
writer) sees every batch whole or not at all, whatever prefix of the write reached the disk.

Scan. :func:`scan` walks forward from the end of the committed prefix, checking each complete line (valid JSON
object, this run's id, the next seq) and committing a batch at its final line. It stops at the first line that is
incomplete (no newline yet), invalid, or out of sequence: everything from the start of the batch holding that line to
the end of the file is the *uncommitted tail*. Readers ignore it (it may be a batch being written right now); a
writer holding the run's lock knows no one else is writing, so for it the tail is *torn* (a crash) and is
quarantined and truncated before the next append.

Index. :class:`RunLog` keeps the start offset of every committed line (``offsets[seq - 1]``), so ``read_range``
from any seq is one ``pread`` of exactly the wanted bytes, and a refresh only re-reads what was appended since.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CHUNK", "RunLog", "frame_batch", "scan"]

CHUNK = 1 << 20
_CONTINUED = b" \n"
_loads = json.loads


def frame_batch(lines: list[bytes]) -> bytes:
    """The bytes of one batch: continuation lines end with ``" \\n"``, the final line with ``"\\n"``."""
    if len(lines) == 1:
        return lines[0] + b"\n"
    return _CONTINUED.join(lines) + b"\n"


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
