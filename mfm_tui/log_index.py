"""Pure, Textual-free access to a run's event log at any size: an offset index, tail-first reads, raw-byte search.

An event file (``runs/<id>/events.jsonl``) holds one wire-form envelope per line, and line ``i`` (0-based) is the
envelope with ``seq == i + 1``. So the end of a huge file can be shown at once: read its last 64 KiB, decode the last
complete line, and its seq is the number of lines. The full index of line starts (an ``array('q')``, 8 bytes a line)
is built afterwards, off the UI thread, in one sequential pass of large reads. Only committed lines are shown: the
filesystem store frames each batch (continuation lines end with ``" \\n"``, the batch's last line with ``"\\n"``),
and a batch still being written, or torn by a crash, stays invisible until its final newline lands. The framing is
read only through :mod:`engine.stores.fs.framing` (:func:`~engine.stores.fs.framing.committed_lines`,
:func:`~engine.stores.fs.framing.index_lines`, :func:`~engine.stores.fs.framing.decode_line`).

Searching and filtering work on raw bytes (``bytes.find`` over 4 MiB reads, off the UI thread for big files), and a
hit is mapped to its line by bisecting the offsets; no line is parsed unless it is shown.

Two sources share one interface, :class:`LogSource`: :class:`FileLogSource` for a filesystem store and
:class:`ListLogSource` for stores that only hand out envelopes (the in-memory store).
"""

from __future__ import annotations

import json
import os
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.errors import MfmError
from engine.events import EventEnvelope
from engine.ids import RunId
from engine.stores.fs import framing
from mfm_tui.run_model import RunModel

__all__ = [
    "TAIL_BYTES",
    "FileLogSource",
    "ListLogSource",
    "LogFilter",
    "LogLine",
    "LogSource",
    "event_error",
    "fold_file",
    "parse_query",
    "query_error",
    "summarize",
]

TAIL_BYTES = 64 * 1024
_WINDOW = 1 << 20
_KEEP_BYTES = 256 * 1024
"""The newest bytes of the log kept in memory (the tail and what was appended since): the lines on screen while
following are sliced from it, not read with an open/pread/close each (and a syscall that releases the GIL waits for
the index thread to hand it back: that was most of the first frame's cost on a big run)."""


def _first_line(data: bytes) -> bytes:
    """An event line's bytes: a version-2 log's span from one event to the next also holds the next record's
    header and any blob records between them (the index holds event starts only)."""
    nl = data.find(b"\n")
    return data if nl < 0 else data[:nl]


def _yield_gil() -> None:
    time.sleep(0)  # let the UI thread take the GIL between reads


@dataclass(frozen=True, slots=True)
class LogFilter:
    """What the log shows: every field optional; all given ones must match (raw bytes, case-sensitive text)."""

    kind: str | None = None
    state: str | None = None
    text: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.kind or self.state or self.text)

    def needles(self) -> list[list[bytes]]:
        """Per condition, the byte strings of which one must occur in the line."""
        out: list[list[bytes]] = []
        if self.kind:
            k = json.dumps(self.kind).encode()
            out.append([b"{" + k + b":", b'"name":' + k])
        if self.state:
            s = self.state
            out.append([b'"state_id":' + json.dumps(s).encode()] if s.count(".") == 2 else [s.encode()])
        if self.text:
            out.append([self.text.encode()])
        return out

    def describe(self) -> str:
        parts = [f"kind={self.kind}" if self.kind else "", f"state={self.state}" if self.state else ""]
        parts.append(f"text={self.text!r}" if self.text else "")
        return " ".join(p for p in parts if p)

    @classmethod
    def parse(cls, query: str) -> LogFilter:
        """``kind=StateFailed state=item_2 some text`` (``k=``/``s=`` also accepted)."""
        kind = state = None
        words: list[str] = []
        for tok in query.split():
            key, sep, value = tok.partition("=")
            if sep and key in ("kind", "k") and value:
                kind = value
            elif sep and key in ("state", "s") and value:
                state = value
            else:
                words.append(tok)
        return cls(kind=kind, state=state, text=" ".join(words) or None)


def parse_query(query: str) -> tuple[LogFilter, str]:
    """The log's ``/`` prompt: ``kind=``/``k=``, ``state=``/``s=`` and ``text=``/``t=`` filter; bare words search.

    ``kind=StateFailed s=item_2 upstream`` shows only ``StateFailed`` events of ``item_2`` and puts the cursor on the
    last one containing ``upstream`` (``n``/``N`` move between matches).
    """
    kind = state = text = None
    words: list[str] = []
    for tok in query.split():
        key, sep, value = tok.partition("=")
        if sep and value and key in ("kind", "k"):
            kind = value
        elif sep and value and key in ("state", "s"):
            state = value
        elif sep and value and key in ("text", "t"):
            text = value
        else:
            words.append(tok)
    return LogFilter(kind=kind, state=state, text=text), " ".join(words)


_QUERY_KEYS = ("kind", "k", "state", "s", "text", "t")


def query_error(query: str) -> str | None:
    """Why the ``/`` prompt's ``query`` is not valid (``foo=bar``: an unknown key; ``kind=``: no value), else ``None``.

    ``parse_query`` would read such a term as find text, silently; the prompt shows this instead.
    """
    for tok in query.split():
        key, sep, value = tok.partition("=")
        if not sep or not key:
            continue
        if key not in _QUERY_KEYS:
            return f"unknown filter {key}= in {tok!r}: use kind=, state= or text= (k=, s=, t=), or words to find"
        if not value:
            return f"{key}= needs a value, e.g. {key}=item_2"
    return None


def _matches(raw: bytes, conditions: Sequence[Sequence[bytes]]) -> bool:
    return all(any(n in raw for n in alts) for alts in conditions)


@dataclass(frozen=True, slots=True)
class LogLine:
    """One event as the log shows it."""

    seq: int
    ts_millis: int | None
    kind: str
    state: str
    summary: str


def _short(aid: Any) -> str:
    return f"{aid[:6]}…" if isinstance(aid, str) and aid else "—"


def summarize(raw: bytes) -> LogLine:
    """Parse one wire-form line into the log's columns; an undecodable line becomes a readable ``corrupt`` row."""
    try:
        env = json.loads(raw)
        seq = int(env["seq"])
        ts = env.get("ts_millis")
        event = env["event"]
        (tag, body), *_ = event.items()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return LogLine(0, None, "corrupt", "", f"undecodable event record: {type(exc).__name__}")
    if tag == "Domain":
        name = str(body.get("name", "?"))
        payload = body.get("payload")
        state = ""
        summary = ""
        if isinstance(payload, dict):
            state = str(payload.get("state_id", ""))
            if name == "retry_scheduled":
                delay = payload.get("delay_ms")
                secs = f"{delay / 1000:.1f}s" if isinstance(delay, int) else "?"
                summary = f"attempt {int(payload.get('next_attempt', 0)) + 1} in {secs}"
            elif name == "fact_recorded":
                summary = f"{payload.get('key', '?')} → {_short(payload.get('payload_id'))}"
            else:
                summary = " ".join(f"{k}={v}" for k, v in sorted(payload.items()) if not isinstance(v, (dict, list)))
        return LogLine(seq, ts, name, state, summary[:200])
    (kind, data), *_ = body.items() if isinstance(body, dict) else ((str(body), {}),)
    data = data if isinstance(data, dict) else {}
    state = str(data.get("state_id", ""))
    if kind == "RunStarted":
        summary = f"op {data.get('op_id')}  manifest {_short(data.get('manifest_id'))}"
    elif kind == "StateEntered":
        summary = f"attempt {int(data.get('attempt', 0)) + 1}  base {_short(data.get('base_snapshot_id'))}"
    elif kind == "StateCompleted":
        summary = f"result {_short(data.get('context_snapshot_id'))}"
    elif kind == "StateFailed":
        err = data.get("error") or {}
        err = err.get("info", err) if isinstance(err, dict) else {}
        retry = "retryable" if isinstance(err, dict) and err.get("retryable") else "final"
        code = err.get("code", "?") if isinstance(err, dict) else "?"
        msg = err.get("message", "") if isinstance(err, dict) else ""
        summary = f"[{code}] {retry}  {msg}"
    elif kind == "RunCompleted":
        summary = f"{data.get('status')}  final {_short(data.get('final_snapshot_id'))}"
    else:
        summary = ""
    return LogLine(seq, ts, kind, state, summary[:200])


def event_error(raw: bytes) -> tuple[str, str] | None:
    """``(code, message)`` in full of a ``StateFailed`` line (the log's summary is cut), else ``None``."""
    try:
        env = json.loads(raw)
        (tag, body), *_ = env["event"].items()
        (kind, data), *_ = body.items()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if tag == "Domain" or kind != "StateFailed" or not isinstance(data, dict):
        return None
    err = data.get("error") or {}
    err = err.get("info", err) if isinstance(err, dict) else {}
    if not isinstance(err, dict):
        return None
    return str(err.get("code", "?")), str(err.get("message", ""))


class LogSource(Protocol):
    """Lines of one run's log, by 0-based index (``seq - 1``)."""

    def __len__(self) -> int: ...

    def raw(self, index: int) -> bytes | None:
        """The line's bytes, or ``None`` while it is not indexed yet."""
        ...

    def refresh(self) -> int:
        """Pick up appended lines; return how many are new."""
        ...

    def find(self, needle: bytes, start: int, *, backwards: bool = False, among: Sequence[int] | None = None) -> int:
        """Index of the next line (from ``start``, inclusive) containing ``needle``, or -1."""
        ...

    def filter(self, flt: LogFilter) -> array[int]:
        """Indexes of the lines matching ``flt``."""
        ...


class ListLogSource:
    """A log over envelopes read from a store (``read_range``): encodes each line on demand."""

    def __init__(self, envelopes: Iterable[EventEnvelope] = ()) -> None:
        self._envs: list[EventEnvelope] = list(envelopes)
        self._raw: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._envs)

    def extend(self, envelopes: Iterable[EventEnvelope]) -> int:
        """Add envelopes past the current end (older seqs are ignored); return how many were added."""
        n = 0
        for env in envelopes:
            if env.seq > len(self._envs):
                self._envs.append(env)
                n += 1
        return n

    def raw(self, index: int) -> bytes | None:
        if not 0 <= index < len(self._envs):
            return None
        line = self._raw.get(index)
        if line is None:
            line = self._raw[index] = framing.encode_line(self._envs[index])
        return line

    def refresh(self) -> int:
        return 0

    def find(self, needle: bytes, start: int, *, backwards: bool = False, among: Sequence[int] | None = None) -> int:
        lines = range(len(self._envs)) if among is None else among
        pos = bisect_right(lines, start - 1) if not backwards else bisect_right(lines, start) - 1
        step = -1 if backwards else 1
        while 0 <= pos < len(lines):
            raw = self.raw(lines[pos])
            if raw is not None and needle in raw:
                return lines[pos]
            pos += step
        return -1

    def filter(self, flt: LogFilter) -> array[int]:
        conds = flt.needles()
        return array("q", (i for i in range(len(self._envs)) if _matches(self.raw(i) or b"", conds)))


class FileLogSource:
    """A log over an append-only JSONL event file: tail first, full index on :meth:`build_index` (a worker)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._starts = array("q")  # start offset of each indexed line; line i spans starts[i]..ends(i)
        self._end = 0  # offset just past the last complete line indexed
        self._first = 0  # line number of starts[0] (> 0 while only the tail is known)
        self._count = 0
        self.indexed = False
        self._lock = threading.Lock()
        self._kept: tuple[int, bytes] = (0, b"")  # committed bytes and their offset, one attribute for the threads
        self._read_tail()

    # -- reading
    def _read_tail(self) -> None:
        size = self._size()
        lo = max(0, size - TAIL_BYTES)
        with open(self.path, "rb") as fh:
            fh.seek(lo)
            chunk = fh.read(size - lo)
        starts, end = framing.committed_lines(chunk, lo, skip_first=lo > 0)
        if end == lo:  # no committed line ends in the chunk
            if lo == 0:
                self.indexed = True  # empty file (or only a torn first line)
            return
        if not starts:
            return
        self._kept = (lo, chunk[: end - lo])
        last = _first_line(chunk[starts[-1] - lo : end - lo - 1])
        count = summarize(last).seq or 0
        if lo == 0:
            count = len(starts)
            self.indexed = True
        self._starts, self._end = starts, end
        self._count = max(count, len(starts))
        self._first = self._count - len(starts)

    def build_index(self) -> None:
        """Index every committed line: one sequential pass in ``_WINDOW``-sized reads. Safe in a worker thread.

        Plain reads, not an mmap: the pages of a 200 MB file would otherwise count in the monitor's resident memory.
        """
        size = self._size()
        with open(self.path, "rb") as fh:
            starts, end = framing.index_lines(fh, size, window=_WINDOW, pause=_yield_gil)
        with self._lock:
            if self._end > end:  # lines appended through refresh() meanwhile: keep them
                starts.extend(s for s in self._starts if s >= end)
                end = self._end
            self._starts, self._end, self._first, self._count = starts, end, 0, len(starts)
            self.indexed = True

    def refresh(self) -> int:
        size = self._size()
        if size <= self._end:
            return 0
        with open(self.path, "rb") as fh:
            fh.seek(self._end)
            chunk = fh.read(size - self._end)
        base = self._end
        new, end = framing.committed_lines(chunk, base)
        if end == base:
            return 0
        with self._lock:
            if self._end != base:  # the index was swapped meanwhile and already covers this chunk
                return 0
            self._starts.extend(new)
            self._end = end
            self._count = self._first + len(self._starts)
        self._keep(base, chunk[: end - base])
        return len(new)

    def _keep(self, at: int, data: bytes) -> None:
        """Keep ``data`` (committed bytes from offset ``at``) with the newest bytes in memory."""
        kept_at, kept = self._kept
        if at == kept_at + len(kept):
            at, data = kept_at, kept + data
        cut = max(0, len(data) - _KEEP_BYTES)
        self._kept = (at + cut, data[cut:])

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def __len__(self) -> int:
        return self._count

    def _span(self, index: int) -> tuple[int, int] | None:
        k = index - self._first
        if not 0 <= k < len(self._starts):
            return None
        start = self._starts[k]
        stop = self._starts[k + 1] if k + 1 < len(self._starts) else self._end
        return start, stop - 1

    def raw(self, index: int) -> bytes | None:
        span = self._span(index)
        if span is None:
            return None
        kept_at, kept = self._kept
        if span[0] >= kept_at and span[1] - kept_at <= len(kept):
            return _first_line(kept[span[0] - kept_at : span[1] - kept_at])
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return _first_line(os.pread(fd, span[1] - span[0], span[0]))
        finally:
            os.close(fd)

    def line_of_offset(self, offset: int) -> int:
        return self._first + bisect_right(self._starts, offset) - 1

    # -- searching (call from a worker on big files)
    def find(self, needle: bytes, start: int, *, backwards: bool = False, among: Sequence[int] | None = None) -> int:
        if not needle or not self._starts or start >= self._count or (backwards and start < self._first):
            return -1
        allowed = None if among is None else set(among)
        first_off, end = self._starts[0], self._end
        if backwards:
            span = self._span(min(start, self._count - 1))
            hits = self._scan(needle, first_off, span[1] if span else end, backwards=True)
        else:
            span = self._span(max(start, self._first))
            hits = self._scan(needle, span[0] if span else first_off, end)
        for pos in hits:
            line = self.line_of_offset(pos)
            if allowed is None or line in allowed:
                return line
        return -1

    def _scan(self, needle: bytes, lo: int, hi: int, *, backwards: bool = False) -> Iterator[int]:
        """Offsets of ``needle`` in ``[lo, hi)``, read in windows (each read and search holds the GIL briefly)."""
        n = len(needle)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if not backwards:
                pos = lo
                while pos < hi:
                    stop = min(hi, pos + _WINDOW + n - 1)
                    chunk = os.pread(fd, stop - pos, pos)
                    i = chunk.find(needle)
                    while i >= 0:
                        yield pos + i
                        i = chunk.find(needle, i + 1)
                    if stop >= hi:
                        return
                    pos = stop - n + 1
                    time.sleep(0)
            else:
                top = hi
                while top > lo:
                    bottom = max(lo, top - _WINDOW - n + 1)
                    chunk = os.pread(fd, top - bottom, bottom)
                    i = chunk.rfind(needle)
                    while i >= 0:
                        yield bottom + i
                        i = chunk.rfind(needle, 0, i + n - 1)
                    if bottom <= lo:
                        return
                    top = bottom + n - 1
                    time.sleep(0)
        finally:
            os.close(fd)

    def filter(self, flt: LogFilter) -> array[int]:
        """Lines matching every condition: one raw-byte scan per needle, hits mapped to lines."""
        conds = flt.needles()
        if not conds or not self._starts:
            return array("q", range(self._first, self._count))
        result: set[int] | None = None
        for alts in conds:
            lines = set(self.lines_containing(alts))
            result = lines if result is None else result & lines
        return array("q", sorted(result or ()))

    def lines_containing(self, needles: Sequence[bytes], stop: int | None = None) -> array[int]:
        """Sorted indexes of the (indexed) lines below ``stop`` holding any of ``needles`` (raw windowed scans)."""
        if not self._starts or not needles:
            return array("q")
        end = self._end if stop is None or stop >= self._count else self._starts[stop - self._first]
        found: set[int] = set()
        for needle in needles:
            for pos in self._scan(needle, self._starts[0], end):
                found.add(self.line_of_offset(pos))
        return array("q", sorted(found))

    def read_lines(self, lines: Sequence[int]) -> list[bytes]:
        """Several lines' bytes (lines not indexed are skipped)."""
        out: list[bytes] = []
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for line in lines:
                span = self._span(line)
                if span is not None:
                    out.append(_first_line(os.pread(fd, span[1] - span[0], span[0])))
        finally:
            os.close(fd)
        return out


FOLD_NEEDLES = (
    b'{"Kernel":',
    b'"name":"fact_recorded"',
    b'"name":"retry_scheduled"',
    b'"name":"crash_loop_reset"',
    b'"name":"child_run_spawned"',
    b'"name":"child_run_completed"',
)
"""The lines a run model needs decoded (child runs: the run screen's badge and drill-down); every other domain
event only advances the seq."""


def fold_file(src: FileLogSource, run_id: RunId) -> RunModel:
    """Fold an indexed event file into a fresh ``RunModel``, decoding only the lines it needs.

    Kernel events and the domain events in :data:`FOLD_NEEDLES` are found by raw-byte scans and decoded; the other
    domain events are counted, not parsed (the model's per-attempt ``domain_events`` count therefore only covers
    facts). A run of a million events with a few thousand attempts folds in about a second. An undecodable line
    is recorded as an anomaly and skipped.
    """
    total = len(src)
    model = RunModel(run_id)
    wanted = src.lines_containing(FOLD_NEEDLES, total)
    for start in range(0, len(wanted), 4096):
        for raw in src.read_lines(wanted[start : start + 4096]):
            try:
                env = framing.decode_line(raw)
            except MfmError as exc:
                model.anomalies.append(f"[{exc.info.code}] {exc.info.message}"[:200])
                continue
            model.last_seq = env.seq - 1  # the lines skipped before it are domain events: no gap anomaly
            model.apply((env,))
    model.event_count = model.last_seq = max(model.last_seq, total)
    last = src.raw(total - 1) if total else None
    if last is not None:
        ts = summarize(last).ts_millis
        model.last_event_millis = ts if ts is not None else model.last_event_millis
    return model
