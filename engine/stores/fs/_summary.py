"""The filesystem store's run summaries: a cache file per run (``runs/<run_id>/summary.json``), kept up to date on
append and rebuilt by whoever reads it stale.

The file holds ``{"summary": RunSummary wire form, "end": E, "dev": D, "ino": I}``: the summary of every committed
line of the run log before byte ``E`` of the file ``(D, I)``. It is a cache, never the truth:

* after a successful append the appender keeps the new envelopes in memory; it folds them into its summary in one
  batch and rewrites the file (temp file + rename, not synced) when that is due (:data:`WRITE_EVERY_SECONDS`, a
  finished run, a big gap), or folds them when the summary is read; a crash between the append and the rewrite
  loses nothing: the file is merely behind the log;
* a reader compares ``E`` with the log's size: equal, the summary is current (one ``stat`` and one small read);
  smaller, only the bytes ``[E, size)`` are read and folded (incremental, from the summary's head); a missing or
  damaged file, another file (``dev``/``ino``), a log shorter than ``E`` or a gap that does not continue the
  summary's head: the whole log is folded again, in large sequential reads, decoding only the lines the fold needs
  (kernel events and :data:`engine.run_summary.SUMMARY_DOMAIN_EVENTS`, plus the last line of each read).

A caller that must answer fast (the runs list's first paint) passes ``max_fold_bytes``: a fold larger than that
returns a *provisional* summary instead (``complete=False``: the first envelope and the tail of the log), and the
caller asks again without the limit, off its UI loop. Every read goes through ``FsOps.pread`` (the store's seam).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import re
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

import engine.stores.fs.framing as framing
import engine.stores.fs.safe_paths as safe_paths
from engine.errors import StorageError
from engine.events import EventEnvelope, RunCompleted
from engine.ids import RunId
from engine.run_summary import SUMMARY_DOMAIN_EVENTS, RunSummary, apply
from engine.stores.fs._core import Core
from engine.stores.fs.framing import EVENTS_FILE, FILE_MODE, RD_FLAGS, SUMMARY_FILE

__all__ = ["TAIL_BYTES", "WRITE_EVERY_SECONDS", "SummaryCache", "read_through"]

WRITE_EVERY_SECONDS = 0.5
"""An appender rewrites a run's summary file at most this often (and whenever the run finishes)."""
WRITE_GAP_BYTES = 1 << 20
"""…or when the file would otherwise fall this many log bytes behind (a reader folds at most that much inline:
``FsEventStore``'s inline fold limit; each rewrite encodes the whole summary, so not much more often)."""
TAIL_BYTES = 64 << 10
"""What a provisional summary reads of the end of the log."""
CATCH_UP_BYTES = 4 << 20
"""An appender whose in-memory summary is missing folds at most this much of the log to catch up."""
_WINDOW = framing.CHUNK
_NEEDED = re.compile(
    b"|".join(re.escape(t) for t in (b'{"Kernel":', *(json.dumps(n).encode() for n in sorted(SUMMARY_DOMAIN_EVENTS))))
)
"""Bytes found in every line the fold must decode (a domain event's payload may hold them too: decoded, harmless)."""


def read_through(core: Core, fd: int) -> bytes:
    """The whole file open as ``fd``, read through the store's seam (``FsOps.pread``: tests count these reads)."""
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    pos = 0
    while True:
        data = core.ops.pread(fd, max(size - pos, 1 << 16), pos)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        pos += len(data)


@dataclass(frozen=True, slots=True)
class _Cached:
    summary: RunSummary
    end: int
    ident: tuple[int, int]
    written_end: int = -1
    written_at: float = 0.0
    mtime: int | None = None
    """The log's ``st_mtime_ns`` when it was ``end`` bytes long (``None``: not known). A log of the same size whose
    mtime changed was edited in place (damage, or a hand edit): its summary is folded again, which finds damage."""


@dataclass(slots=True)
class _Behind:
    envelopes: list[EventEnvelope]
    end: int
    """The log's committed end after them."""
    head: int
    """The seq of the last of them."""


class SummaryCache:
    """The summaries of one ``FsStore`` (see the module docstring). Thread-safe: a fold holds no lock of the store
    (it reads its own descriptor), so the store stays usable while a big log is folded in a thread."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._mem: dict[RunId, _Cached] = {}
        self._behind: dict[RunId, _Behind] = {}
        """Envelopes this process appended after its in-memory summary (folded in one batch when due or read)."""
        self._gave_up: set[RunId] = set()
        """Runs whose cache an appender could not catch up cheaply (it stops trying; readers rebuild it)."""
        self.rebuilds = 0
        """How many whole logs were folded (tests)."""

    # -- reading ---------------------------------------------------------------------------------------------------

    def summary(self, run_id: RunId, max_fold_bytes: int | None = None) -> RunSummary | None:
        """The run's current summary (``None``: no run, or an empty log); provisional beyond ``max_fold_bytes``."""
        core = self._core
        try:
            dfd = core.run_dir_fd(run_id, create=False)
        except FileNotFoundError:
            return None
        try:
            try:
                fd = safe_paths.open_file(dfd, EVENTS_FILE, RD_FLAGS, core.events_path(run_id))
            except FileNotFoundError:
                return None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                    return None
                return self._current(run_id, dfd, fd, st, max_fold_bytes)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    def _current(
        self, run_id: RunId, dfd: int, fd: int, st: os.stat_result, max_fold_bytes: int | None
    ) -> RunSummary | None:
        ident, size = (st.st_dev, st.st_ino), st.st_size
        with self._lock:
            behind = self._behind.get(run_id)
        if behind is not None:  # appended by this process since the last fold
            self._settle(run_id, st.st_mtime_ns if behind.end == size else None)
        with self._lock:
            cached = self._mem.get(run_id)
        if cached is None or cached.ident != ident or cached.end > size:
            cached = self._load(run_id, dfd)
        if cached is not None and cached.ident != ident and cached.end == size and cached.mtime == st.st_mtime_ns:
            # The same bytes under another inode: a store copied or restored with its times (cp -a, rsync -a, a
            # backup). Size and mtime to the nanosecond both match: the summary holds; without this every run of a
            # restored store was folded again on first open (10,000 runs: ~20 s before all rows showed).
            cached = replace(cached, ident=ident, written_end=-1)
        if cached is not None and (cached.ident != ident or cached.end > size):
            cached = None
        if cached is not None and cached.end == size and cached.mtime not in (None, st.st_mtime_ns):
            cached = None  # edited in place since it was summarized: fold it again
        if cached is not None and cached.end == size:
            with self._lock:
                self._mem[run_id] = cached
            return cached.summary
        if cached is not None and (max_fold_bytes is None or size - cached.end <= max_fold_bytes):
            folded = self._fold(run_id, fd, cached.summary, cached.end, size)
            if folded is not None:
                mtime = st.st_mtime_ns if folded[1] == size else None
                return self._keep(
                    run_id, dfd, replace(cached, summary=folded[0], end=folded[1], mtime=mtime), force=False
                )
        if max_fold_bytes is not None and size > max_fold_bytes:
            return self._provisional(run_id, fd, size)
        self.rebuilds += 1
        folded = self._fold(run_id, fd, RunSummary(run_id), 0, size, damaged_ok=True)
        if folded is None:
            return None
        mtime = st.st_mtime_ns if folded[1] == size else None
        return self._keep(run_id, dfd, _Cached(folded[0], folded[1], ident, mtime=mtime), force=True)

    def valid_at(self, run_id: RunId) -> tuple[int, int | None, int] | None:
        """``(log size, log mtime_ns or None: not known, head)`` of this process's summary of the run, if it has one
        (the store-wide index keeps a summary only when that is the log as listed: ``engine.stores.fs._runs_index``)."""
        with self._lock:
            cached = self._mem.get(run_id)
            if cached is None or run_id in self._behind:
                return None
            return cached.end, cached.mtime, cached.summary.head

    def _load(self, run_id: RunId, dfd: int) -> _Cached | None:
        """The cache file, or ``None`` when it is missing or damaged (it is then rebuilt)."""
        try:
            fd = safe_paths.open_file(dfd, SUMMARY_FILE, RD_FLAGS, f"{self._core.run_dir(run_id)}/{SUMMARY_FILE}")
        except (OSError, StorageError):
            return None
        try:
            raw: Any = json.loads(read_through(self._core, fd))
            summary = RunSummary.from_wire(raw["summary"])
            end, dev, ino = raw["end"], raw["dev"], raw["ino"]
            if summary.run_id != run_id or not summary.complete or not all(type(v) is int for v in (end, dev, ino)):
                return None
            mtime = raw.get("mtime")
            return _Cached(summary, end, (dev, ino), written_end=end, mtime=mtime if type(mtime) is int else None)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        finally:
            os.close(fd)

    def _fold(
        self, run_id: RunId, fd: int, summary: RunSummary, start: int, size: int, *, damaged_ok: bool = False
    ) -> tuple[RunSummary, int] | None:
        """Fold the committed lines of ``[start, size)`` into ``summary``: ``(summary, end)``, or ``None`` when they
        do not continue its head (the cache belongs to another history: fold from 0 instead).

        ``damaged_ok`` (a fold from 0): a line that does not decode, or is out of sequence, ends the fold there with
        one more anomaly, and the summary is kept as if it covered the whole file (``size``), so a damaged log is
        not folded again until it grows (``mfm doctor`` reports the damage; reading the run shows it)."""
        pread = self._core.ops.pread
        pos, window, head = start, _WINDOW, summary.head
        while pos < size:
            data = pread(fd, min(window, size - pos), pos)
            if not data:
                break
            starts, end = framing.committed_lines(data, pos)
            if not starts:
                if pos + len(data) >= size:
                    break  # an uncommitted tail (a batch being written)
                window *= 2  # one batch longer than the window
                continue
            bad = framing.first_bad_record(data, 0, end - pos) if data[:1] in (b"E", b"B") else None
            if bad is not None:  # a v2 record that is not what the engine wrote: damage
                if not damaged_ok:
                    return None
                starts = starts[: bisect.bisect_left(starts, pos + bad)]  # fold what precedes it
                end = pos + bad
                if not starts:
                    return replace(summary, anomalies=summary.anomalies + 1), size
            bounds = [s - pos for s in starts] + [end - pos]
            last = len(starts) - 1
            # The lines to decode: the first and the last of the window, and those holding a needed tag (found in
            # one regex pass over the window, not a Python test per line).
            wanted = {0, last}
            wanted.update(bisect.bisect_right(bounds, m.start()) - 1 for m in _NEEDED.finditer(data, 0, bounds[-1]))
            needed: list[EventEnvelope] = []
            for i in sorted(wanted):
                line = framing.line_at(data, bounds[i])  # v2: the body ends at its newline (blob records follow)
                try:
                    env: EventEnvelope | None = framing.decode_line(line)
                except StorageError:
                    env = None
                if env is None or env.run_id != run_id or env.seq != head + i + 1:
                    if not damaged_ok:
                        return None
                    summary = apply(summary, needed)
                    return replace(summary, anomalies=summary.anomalies + 1), size
                needed.append(env)
            summary = apply(summary, needed)
            if bad is not None:
                return replace(summary, anomalies=summary.anomalies + 1), size
            head += len(starts)
            pos, window = end, _WINDOW
        return summary, pos

    def _provisional(self, run_id: RunId, fd: int, size: int) -> RunSummary | None:
        """Tail first: the first envelope (op, start) and the committed lines of the last :data:`TAIL_BYTES`."""
        pread = self._core.ops.pread
        first = pread(fd, min(size, TAIL_BYTES), 0)
        heads, _ = framing.committed_lines(first, 0)  # v2: the first event record may follow blob records
        at = heads[0] if heads else 0
        nl = first.find(b"\n", at)
        try:
            line = framing.line_at(first, at)
            summary = apply(RunSummary(run_id, complete=False), [framing.decode_line(line)]) if nl > 0 else None
        except StorageError:
            summary = None
        if summary is None:
            summary = RunSummary(run_id, complete=False)
        base = max(nl + 1, size - TAIL_BYTES)
        tail = pread(fd, size - base, base)
        starts, end = framing.committed_lines(tail, base, skip_first=base > nl + 1)
        if not starts:
            return summary
        bounds = [s - base for s in starts] + [end - base]
        wanted = {len(starts) - 1}
        wanted.update(bisect.bisect_right(bounds, m.start()) - 1 for m in _NEEDED.finditer(tail, 0, bounds[-1]))
        envelopes: list[EventEnvelope] = []
        for i in sorted(w for w in wanted if w >= 0):
            with contextlib.suppress(StorageError):
                envelopes.append(framing.decode_line(framing.line_at(tail, bounds[i])))
        return apply(summary, envelopes)

    # -- writing ---------------------------------------------------------------------------------------------------

    def appended(self, run_id: RunId, expected_seq: int, envelopes: Sequence[EventEnvelope]) -> None:
        """After a successful append of ``envelopes`` past ``expected_seq``: remember them (folded in later, in one
        batch: when the file is due to be rewritten or when the summary is read), rewrite the file when due.

        Never raises (a cache): anything unexpected drops the in-memory summary, and the next reader rebuilds it.
        """
        core = self._core
        try:
            log = core.logs.get(run_id)
            if log is None or log.ident is None or len(log.offsets) <= expected_seq:
                return
            start = log.offsets[expected_seq]
            with self._lock:
                cached = self._mem.get(run_id)
                behind = self._behind.get(run_id)
                if expected_seq == 0:
                    cached, behind = _Cached(RunSummary(run_id), 0, log.ident), None
                after = log.offsets[expected_seq - 1] if expected_seq else -1  # the last event record it covers
                head = behind.head if behind is not None else (-1 if cached is None else cached.summary.head)
                end = behind.end if behind is not None else (-1 if cached is None else cached.end)
                consistent = (
                    cached is not None
                    and cached.ident == log.ident
                    and head == expected_seq
                    and after < end <= start  # v2: this commit's blob records may sit between the two
                )
                if consistent:
                    assert cached is not None
                    self._mem[run_id] = cached
                    if behind is None:
                        behind = self._behind[run_id] = _Behind([], 0, 0)
                    behind.envelopes.extend(envelopes)
                    behind.end, behind.head = log.end, len(log.offsets)
                    due = (
                        isinstance(envelopes[-1].event, RunCompleted)
                        or time.monotonic() - cached.written_at >= WRITE_EVERY_SECONDS
                        or behind.end - cached.written_end >= WRITE_GAP_BYTES
                    )
                else:
                    self._mem.pop(run_id, None)
                    self._behind.pop(run_id, None)
                    retry = run_id not in self._gave_up
                    self._gave_up.add(run_id)
            if not consistent:
                # This process's first append to the run (a resumed run), or another process appended meanwhile:
                # catch up from the file once (the new envelopes are committed, so they are folded too); a cache
                # too far behind is left to the readers.
                if retry:
                    caught = self.summary(run_id, CATCH_UP_BYTES)
                    if caught is not None and caught.complete:
                        with self._lock:
                            self._gave_up.discard(run_id)
                return
            if not due:
                return
            w = core.writers.get(run_id)
            st = os.fstat(w.fd) if w is not None and w.fd >= 0 else None
            mtime = st.st_mtime_ns if st is not None and st.st_size == log.end else None  # None: not known
            settled = self._settle(run_id, mtime)
            if settled is None:
                return
            dfd = core.run_dir_fd(run_id, create=False)
            try:
                self._keep(run_id, dfd, settled, force=True)
            finally:
                os.close(dfd)
        except Exception:  # a cache never fails an append that succeeded
            with self._lock:
                self._mem.pop(run_id, None)
                self._behind.pop(run_id, None)

    def _settle(self, run_id: RunId, mtime: int | None) -> _Cached | None:
        """Fold the envelopes appended since the last fold into the in-memory summary (one batch) and return it."""
        with self._lock:
            cached = self._mem.get(run_id)
            behind = self._behind.pop(run_id, None)
            if cached is None or behind is None:
                return cached
            cached = replace(cached, summary=apply(cached.summary, behind.envelopes), end=behind.end, mtime=mtime)
            self._mem[run_id] = cached
            return cached

    def _keep(self, run_id: RunId, dfd: int, cached: _Cached, *, force: bool) -> RunSummary:
        """Remember ``cached``; rewrite the file if forced or due (best effort: a read-only store is not written)."""
        now = time.monotonic()
        due = (
            force
            or now - cached.written_at >= WRITE_EVERY_SECONDS
            or cached.end - cached.written_end >= WRITE_GAP_BYTES
        )
        if due and cached.end != cached.written_end and self._write(run_id, dfd, cached):
            cached = replace(cached, written_end=cached.end, written_at=now)
        with self._lock:
            self._mem[run_id] = cached
        return cached.summary

    def _write(self, run_id: RunId, dfd: int, cached: _Cached) -> bool:
        ops = self._core.ops
        body = {
            "summary": cached.summary.to_wire(),
            "end": cached.end,
            "dev": cached.ident[0],
            "ino": cached.ident[1],
            "mtime": cached.mtime,
        }
        try:
            # orjson: the same compact JSON (json.loads reads it back; non-ASCII text is UTF-8, not escaped) in a
            # tenth of the time; a run's finishing commit writes the summary of every state.
            data = orjson.dumps(body)
        except TypeError:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits
            data = json.dumps(body, separators=(",", ":")).encode()
        tmp = framing.temp_name("summary")
        try:
            fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=dfd)
        except OSError:
            return False
        try:
            try:
                ops.fchmod(fd, FILE_MODE)
                ops.write_all(fd, data)
            finally:
                ops.close(fd)
            ops.rename(tmp, SUMMARY_FILE, src_dir_fd=dfd, dst_dir_fd=dfd)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                ops.unlink(tmp, dir_fd=dfd)
            return False
