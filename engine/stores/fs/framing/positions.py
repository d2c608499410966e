"""Line positions for viewers that need no validated envelopes (the TUI's log index, ``mfm logs``): the committed
event lines of a buffer or of a whole file (see :mod:`engine.stores.fs.framing`)."""

from __future__ import annotations

import mmap
import re
from array import array
from collections.abc import Callable
from typing import BinaryIO

from engine.stores.fs.framing.records import _RECORD_HEAD, CHUNK

_NEWLINE = re.compile(b"\n")

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
