"""The filesystem store's runs index: every run's summary in one file (``runs.index`` at the store root), so a runs
list of 10,000 runs reads one file instead of 10,000 ``summary.json``.

It is a cache, never the truth, and it is checked entry by entry:

* each entry holds a run's summary and the size and ``st_mtime_ns`` of the run log it summarizes; a reader lists
  ``runs/`` and ``lstat``s each run log (what listing the runs costs anyway): an entry whose size and mtime match is
  the run's summary; any other run (appended since, by any process; new; edited in place) is summarized the usual
  way (:class:`engine.stores.fs._summary.SummaryCache`: its ``summary.json``, brought up to date from the log);
  entries of runs no longer listed are ignored;
* the file is a header line (``mfm-runs-index <version> <summary version> <xxh3-64 of the body> <body length>
  <table length>``), then the body: a JSON table (one ``[run_id, log size, log mtime_ns, summary fields, n]`` per
  run) followed by each run's states as JSON (``n`` bytes each, in table order); a missing, damaged, truncated or
  foreign-version file is ignored as a whole (every run summarized the usual way);
* a reader that found any entry missing or stale writes the file again (temp file + rename, not synced: a crash
  leaves the old file or none, never half of one); a store it may not write (read-only) is left as it is.

The summaries' states stay undecoded JSON text (:class:`engine.run_summary.LazyStates`) until someone reads them.
Every read goes through ``FsOps.pread`` (the store's seam).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import stat
from dataclasses import dataclass
from typing import Any

import xxhash

import engine.stores.fs.framing as framing
import engine.stores.fs.safe_paths as safe_paths
from engine.errors import StorageError
from engine.ids import RunId
from engine.run_summary import SUMMARY_VERSION, RunSummary, from_index_form, index_form
from engine.stores.fs._core import Core
from engine.stores.fs._summary import SummaryCache, read_through
from engine.stores.fs.framing import EVENTS_FILE, FILE_MODE, RD_FLAGS, RUNS_INDEX_FILE

__all__ = ["INDEX_VERSION", "IndexedRuns", "RunsIndex"]

INDEX_VERSION = 1
"""Bumped when the file's form changes: a file of another version is ignored (and rewritten)."""
_MAGIC = b"mfm-runs-index"
_FIRST_FOLD_BYTES = 1 << 20
"""Without an index, a first-screenful run whose summary is behind its log by more than this waits for the full
load (which folds it in the background, "indexing…")."""


@dataclass(frozen=True, slots=True)
class _Entry:
    size: int
    mtime: int
    head: Any
    states: bytes


@dataclass(slots=True)
class IndexedRuns:
    """What :meth:`RunsIndex.summaries` found: every run with a non-empty log, in listing order."""

    run_ids: list[RunId]
    summaries: dict[RunId, RunSummary]
    """Each run's summary (absent: an empty log, or one that vanished while listed); ``complete=False``: provisional."""
    from_index: int = 0
    """How many came from the index file (tests, bench)."""
    stale: bool = False
    """Whether the index file was missing, stale or damaged (then written again)."""
    had_index: bool = False
    """Whether a readable index file was found."""
    written: bool = False
    """Whether the index file was written again."""


class RunsIndex:
    """The index of one ``FsStore`` (see the module docstring). Safe from any thread; what it keeps between calls
    (the entries :meth:`first` read, a pending write) is checked again when used, like every entry."""

    def __init__(self, core: Core, cache: SummaryCache) -> None:
        self._core = core
        self._cache = cache
        self._read_ahead: dict[str, _Entry] | None = None
        """The entries :meth:`first` read, for the :meth:`summaries` that follows it (one read of the file)."""
        self._pending: tuple[IndexedRuns, dict[RunId, tuple[int, int]], set[RunId]] | None = None

    def first(self, n: int) -> dict[RunId, RunSummary]:
        """The summaries of the index's first ``n`` runs that are still current (one ``stat`` each): a runs list's
        first screenful, before every run is listed and checked (the index holds unfinished runs first, then the
        newest). The file is read once for this and the :meth:`summaries` that follows."""
        entries = self._read_ahead = self._read()
        out: dict[RunId, RunSummary] = {}
        if entries is None:  # no index (a store's first open, or the index was damaged): the runs whose logs
            return self._first_without_index(n)  # changed last, from their own summaries
        runs_fd = self._core.top_dir(framing.RUNS_DIR, create=False) if entries else None
        if runs_fd is None:
            return out
        for run_id, entry in itertools.islice(entries.items(), n):
            try:
                st = os.stat(f"{run_id}/{EVENTS_FILE}", dir_fd=runs_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and entry.size == st.st_size and entry.mtime == st.st_mtime_ns:
                    valid = RunId(run_id)
                    out[valid] = from_index_form(valid, entry.head, entry.states)
            except (OSError, ValueError):
                continue
        return out

    def _first_without_index(self, n: int) -> dict[RunId, RunSummary]:
        """The summaries of the ``n`` runs whose logs changed last (the running and the newest, most likely), each
        from its summary cache, folding at most ``_FIRST_FOLD_BYTES`` of a log: without this, a store without an
        index painted its first row only once every run's summary was read (10,000 runs: 0.25 -> 1.65 s)."""
        out: dict[RunId, RunSummary] = {}
        for run_id, _ in heapq.nlargest(n, self._list(), key=lambda item: item[1].st_mtime_ns):
            try:
                got = self._cache.summary(run_id, _FIRST_FOLD_BYTES)
            except (OSError, StorageError):  # not ours, or gone: as the full listing, skipped
                continue
            if got is not None and got.complete:
                out[run_id] = got
        return out

    def summaries(self, max_fold_bytes: int | None = None, *, write: bool = True) -> IndexedRuns:
        """Every run's summary: from the index where it is current, else from :class:`SummaryCache` (provisional
        beyond ``max_fold_bytes``); the index is written again when it was missing, stale or damaged (``write``
        false: by :meth:`write_pending`, later)."""
        listed = self._list()
        entries, self._read_ahead = self._read_ahead, None
        if entries is None:
            entries = self._read()
        out = IndexedRuns([r for r, _ in listed], {}, had_index=entries is not None)
        at = {run_id: (st.st_size, st.st_mtime_ns) for run_id, st in listed}
        fresh: set[RunId] = set()
        """Runs summarized the usual way (not from the index)."""
        skipped: set[RunId] = set()
        for run_id, st in listed:
            entry = entries.get(run_id) if entries is not None else None
            if entry is not None and entry.size == st.st_size and entry.mtime == st.st_mtime_ns:
                try:
                    summary: RunSummary | None = from_index_form(run_id, entry.head, entry.states)
                except ValueError:
                    summary = None
                if summary is not None:
                    out.summaries[run_id] = summary
                    out.from_index += 1
                    continue
            fresh.add(run_id)
            try:
                got = self._cache.summary(run_id, max_fold_bytes)
            except (OSError, StorageError):  # not ours, or gone: as list_runs, not listed
                skipped.add(run_id)
                continue
            if got is not None:
                out.summaries[run_id] = got
        if entries is None or fresh or len(entries) != out.from_index:
            out.stale = True
            if write:
                out.written = self._write(out, at, fresh)
            else:
                self._pending = (out, at, fresh)
        return out

    def write_pending(self) -> bool:
        """Write the index a :meth:`summaries` call with ``write=False`` found stale (if any); whether it was."""
        pending, self._pending = self._pending, None
        return pending is not None and self._write(*pending)

    # -- reading ---------------------------------------------------------------------------------------------------

    def _list(self) -> list[tuple[RunId, os.stat_result]]:
        """Runs whose log is a non-empty regular file, with its ``lstat`` (one ``stat`` per run: a run folder
        swapped for a symlink after the listing is refused when the run is read, through ``safe_paths``)."""
        runs_fd = self._core.top_dir(framing.RUNS_DIR, create=False)
        if runs_fd is None:
            return []
        out: list[tuple[RunId, os.stat_result]] = []
        for e in safe_paths.list_dir(runs_fd):
            if not e.is_dir:
                continue
            try:
                st = os.stat(f"{e.name}/{EVENTS_FILE}", dir_fd=runs_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                    out.append((RunId(e.name), st))
            except (OSError, ValueError):
                continue
        return out

    def _read(self) -> dict[str, _Entry] | None:
        """The index's entries, or ``None`` when it is missing, damaged or of another version."""
        core = self._core
        try:
            fd = safe_paths.open_file(core.root_fd(), RUNS_INDEX_FILE, RD_FLAGS, f"{core.root}/{RUNS_INDEX_FILE}")
        except (OSError, StorageError):
            return None
        try:
            data = read_through(core, fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        nl = data.find(b"\n", 0, 200)
        parts = data[:nl].split(b" ")
        if nl < 0 or len(parts) != 6 or parts[0] != _MAGIC:
            return None
        try:
            version, summary_version, length, split = int(parts[1]), int(parts[2]), int(parts[4]), int(parts[5])
        except ValueError:
            return None
        body = memoryview(data)[nl + 1 :]  # (no copy of a file of megabytes)
        if version != INDEX_VERSION or summary_version != SUMMARY_VERSION or length != len(body) or split > length:
            return None
        if parts[3] != xxhash.xxh3_64_hexdigest(body).encode():
            return None
        try:
            raw: Any = json.loads(bytes(body[:split]))
            entries: dict[str, _Entry] = {}
            pos = split
            for run_id, size, mtime, summary_head, n in raw:
                if type(size) is not int or type(mtime) is not int or type(n) is not int or pos + n > length:
                    return None
                entries[run_id] = _Entry(size, mtime, summary_head, bytes(body[pos : pos + n]))
                pos += n
            return entries
        except (ValueError, TypeError):
            return None

    # -- writing ---------------------------------------------------------------------------------------------------

    def _write(self, found: IndexedRuns, at: dict[RunId, tuple[int, int]], fresh: set[RunId]) -> bool:
        """Write every complete summary that is current for its log's size and mtime as listed (best effort)."""
        rows: list[list[Any]] = []
        blobs: list[bytes] = []
        for run_id in sorted(found.run_ids, key=lambda r: _first_shown(found.summaries.get(r))):
            summary = found.summaries.get(run_id)
            if summary is None or not summary.complete:
                continue
            size, mtime = at[run_id]
            if run_id in fresh:
                valid = self._cache.valid_at(run_id)
                if valid is None or valid[0] != size or valid[1] not in (None, mtime) or valid[2] != summary.head:
                    continue  # it covers less than the log as listed (an uncommitted tail; appended meanwhile)
            head, states = index_form(summary)
            rows.append([run_id, size, mtime, head, len(states)])
            blobs.append(states)
        if not rows and not found.had_index:
            return False  # nothing to keep: a store without runs (or without any of its own) is left as it is
        table = json.dumps(rows, separators=(",", ":")).encode()
        body = b"".join((table, *blobs))
        head_line = b" ".join(
            (
                _MAGIC,
                str(INDEX_VERSION).encode(),
                str(SUMMARY_VERSION).encode(),
                xxhash.xxh3_64_hexdigest(body).encode(),
                str(len(body)).encode(),
                str(len(table)).encode(),
            )
        )
        core = self._core
        ops = core.ops
        try:
            root_fd = core.root_fd()
        except (OSError, StorageError):
            return False
        tmp = framing.temp_name("index")
        try:
            fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=root_fd)
        except OSError:  # a read-only store: never written
            return False
        try:
            try:
                ops.fchmod(fd, FILE_MODE)
                ops.write_all(fd, head_line + b"\n" + body)
            finally:
                ops.close(fd)
            ops.rename(tmp, RUNS_INDEX_FILE, src_dir_fd=root_fd, dst_dir_fd=root_fd)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                ops.unlink(tmp, dir_fd=root_fd)
            return False


def _first_shown(summary: RunSummary | None) -> tuple[bool, int]:
    """The index's order: unfinished runs first, then the newest (what a runs list shows on top)."""
    if summary is None:
        return True, 0
    return summary.finished, -(summary.started_millis or 0)
