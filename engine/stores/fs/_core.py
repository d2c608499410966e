"""Shared state of one ``FsStore``: cached append fds, per-run committed views, the change journal, file helpers.

See :mod:`engine.stores.fs` for the protocol and :mod:`engine.stores.fs.framing` for the layout.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import engine.stores.fs.framing as framing
import engine.stores.fs.safe_paths as safe_paths
from engine.errors import StorageError
from engine.ids import RunId
from engine.stores.fs._ops import FsOps, fail
from engine.stores.fs.framing import APPEND_LOCK_FILE, EVENTS_FILE, FILE_MODE, RD_FLAGS, RunLog

__all__ = ["ARTIFACT_IO", "EVENT_IO", "Core", "Writer", "corrupt_error", "read_all", "wall_millis"]

EVENT_IO = "event_store_io"
ARTIFACT_IO = "artifact_store_io"


def wall_millis() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Writer:
    lock_fd: int
    fd: int


class Core:
    """State shared by the event and artifact stores of one ``FsStore``.

    Every folder and file is reached from the store's root descriptor through :mod:`engine.stores.fs.safe_paths`
    (no symlink followed below the root, every folder owned by this user); ``runs/`` and ``artifacts/`` stay open.
    """

    def __init__(
        self,
        root: str,
        root_fd: int,
        ops: FsOps,
        now_millis: Callable[[], int],
        max_open_runs: int,
        version: int = framing.STORE_VERSION,
    ) -> None:
        self.root = root
        self.version = version
        """The store's format version (``store.json``): the format of a run log written from empty."""
        self.runs = f"{root}/{framing.RUNS_DIR}"
        self.artifacts = f"{root}/{framing.ARTIFACTS_DIR}"
        self.journal = f"{root}/{framing.JOURNAL_FILE}"
        self.ops = ops
        self.now_millis = now_millis
        self.max_open_runs = max(1, max_open_runs)
        self.lock = threading.RLock()
        self.logs: dict[RunId, RunLog] = {}
        self.writers: OrderedDict[RunId, Writer] = OrderedDict()
        self.journal_fd: int | None = None
        self.journal_torn = False
        """The last journal write was short or failed: start the next line on a fresh line."""
        self.pid = os.getpid()
        self._root_fd = root_fd
        self._top: dict[str, int] = {}
        """``runs`` / ``artifacts`` → their open descriptor."""

    # -- folders -------------------------------------------------------------------------------------------------

    def root_fd(self) -> int:
        """The store folder's descriptor (reopened, owner checked, after :meth:`close`)."""
        with self.lock:
            if self._root_fd < 0:
                self._root_fd = safe_paths.open_root(self.root)
            return self._root_fd

    def top_dir(self, name: str, *, create: bool) -> int | None:
        """The descriptor of ``runs/`` or ``artifacts/`` (kept open); ``None`` when it is missing and not ``create``."""
        with self.lock:
            fd = self._top.get(name)
            if fd is None:
                root_fd = self.root_fd()
                path = f"{self.root}/{name}"
                try:
                    if create:
                        fd = safe_paths.make_dir(root_fd, name, path, self.ops)[0]
                    else:
                        fd = safe_paths.open_dir(root_fd, name, path)
                except FileNotFoundError:
                    return None
                self._top[name] = fd
            return fd

    def run_dir_fd(self, run_id: RunId, *, create: bool) -> int:
        """A new descriptor on ``runs/<run_id>`` (the caller closes it), made if missing when ``create``.

        ``FileNotFoundError`` when the folder (or ``runs/``) is missing and not ``create``."""
        runs = self.top_dir(framing.RUNS_DIR, create=create)
        path = self.run_dir(run_id)
        if runs is None:
            raise FileNotFoundError(errno.ENOENT, "no runs folder yet", path)
        if create:
            return safe_paths.make_dir(runs, run_id, path, self.ops)[0]
        return safe_paths.open_dir(runs, run_id, path)

    def open_run_file(self, run_id: RunId, name: str, flags: int) -> int:
        """Open ``runs/<run_id>/<name>`` for reading (``FileNotFoundError`` when it or its folder is missing)."""
        dfd = self.run_dir_fd(run_id, create=False)
        try:
            return safe_paths.open_file(dfd, name, flags, f"{self.run_dir(run_id)}/{name}")
        finally:
            os.close(dfd)

    # -- files -------------------------------------------------------------------------------------------------

    def open_create(self, dir_fd: int, name: str, path: str, flags: int) -> tuple[int, bool]:
        """Open ``name`` in ``dir_fd`` for writing, creating it 0600 if missing; return ``(fd, created)``."""
        ops = self.ops
        try:
            return safe_paths.open_file(dir_fd, name, flags, path, FILE_MODE, ops), False
        except FileNotFoundError:
            pass
        try:
            fd = safe_paths.open_file(dir_fd, name, flags | os.O_CREAT | os.O_EXCL, path, FILE_MODE, ops)
        except FileExistsError:
            return safe_paths.open_file(dir_fd, name, flags, path, FILE_MODE, ops), False
        try:
            ops.fchmod(fd, FILE_MODE)
        except BaseException:
            ops.close(fd)
            raise
        return fd, True

    def write_new_file(self, dir_fd: int, final: str, data: bytes, *, sync: bool) -> bool:
        """Write ``data`` to a temp file in ``dir_fd`` and link it to ``final`` (never replacing it); False if it
        existed."""
        ops = self.ops
        tmp = framing.temp_name(final[:16])
        fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=dir_fd)
        try:
            try:
                ops.fchmod(fd, FILE_MODE)
                ops.write_all(fd, data)
                if sync:
                    ops.fdatasync(fd)
            finally:
                ops.close(fd)
            try:
                ops.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(OSError):  # a leftover temp file is harmless
                ops.unlink(tmp, dir_fd=dir_fd)

    # -- run directories and writers -----------------------------------------------------------------------------

    def run_dir(self, run_id: RunId) -> str:
        return f"{self.root}/{framing.run_folder(run_id)}"

    def events_path(self, run_id: RunId) -> str:
        return f"{self.root}/{framing.events_file(run_id)}"

    def writer(self, run_id: RunId) -> Writer:
        if os.getpid() != self.pid:  # forked: inherited fds share our locks, never use them
            self.writers.clear()
            self.journal_fd = None
            self.pid = os.getpid()
        w = self.writers.get(run_id)
        if w is not None:
            self.writers.move_to_end(run_id)
            return w
        run_dir = self.run_dir(run_id)
        path = self.events_path(run_id)
        try:
            dfd = self.run_dir_fd(run_id, create=True)
            try:
                lock_fd, _ = self.open_create(dfd, APPEND_LOCK_FILE, f"{run_dir}/{APPEND_LOCK_FILE}", os.O_RDWR)
                try:
                    fd, created = self.open_create(dfd, EVENTS_FILE, path, os.O_RDWR | os.O_APPEND)
                    if created:
                        self.ops.fsync_dir(run_dir, dfd)
                except BaseException:
                    self.ops.close(lock_fd)
                    raise
            finally:
                os.close(dfd)
        except OSError as exc:
            fail(exc, EVENT_IO, "open for append", path)
        w = self.writers[run_id] = Writer(lock_fd, fd)
        while len(self.writers) > self.max_open_runs:
            _, old = self.writers.popitem(last=False)
            self.close_writer(old)
        return w

    def close_writer(self, w: Writer) -> None:
        """Close both fds (closing the lock fd releases a held flock) and mark the writer closed (-1)."""
        for fd in (w.fd, w.lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    self.ops.close(fd)
        w.fd = w.lock_fd = -1

    def drop_writer(self, run_id: RunId) -> None:
        w = self.writers.pop(run_id, None)
        if w is not None:
            self.close_writer(w)

    def close(self) -> None:
        with self.lock:
            for w in self.writers.values():
                self.close_writer(w)
            self.writers.clear()
            if self.journal_fd is not None:
                with contextlib.suppress(OSError):
                    self.ops.close(self.journal_fd)
                self.journal_fd = None
            for fd in [*self._top.values(), self._root_fd]:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._top.clear()
            self._root_fd = -1

    # -- the committed view of a run ------------------------------------------------------------------------------

    def log_for(self, run_id: RunId, st: os.stat_result) -> RunLog:
        log = self.logs.get(run_id)
        if log is None:
            log = self.logs[run_id] = RunLog()
        ident = (st.st_dev, st.st_ino)
        if log.ident != ident or st.st_size < log.end:
            log.reset(ident)
        return log

    def refresh(self, run_id: RunId) -> tuple[RunLog | None, int | None]:
        """Bring the cached view of a run up to date without locking; ``(None, None)`` for an unknown run.

        Returns the log and an fd open on the file (caller closes it) when one had to be opened.
        """
        path = self.events_path(run_id)
        try:
            dfd = self.run_dir_fd(run_id, create=False)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            fail(exc, EVENT_IO, "open", self.run_dir(run_id))
        fd: int | None = None
        try:
            try:
                st = safe_paths.stat_entry(dfd, EVENTS_FILE)
            except FileNotFoundError:
                return None, None
            if not stat.S_ISREG(st.st_mode):  # a symlink (or a directory, a fifo...) planted in place of the file
                raise OSError(errno.ELOOP, "not a regular file")
            log = self.log_for(run_id, st)
            if st.st_size == log.end:
                return log, None
            fd = opened = os.open(EVENTS_FILE, RD_FLAGS, dir_fd=dfd)
            st = os.fstat(opened)
            log = self.log_for(run_id, st)
            framing.scan(log, run_id, st.st_size, lambda n, off: os.pread(opened, n, off), self.version)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            fail(exc, EVENT_IO, "read", path)
        finally:
            os.close(dfd)
        return log, fd

    def sync_locked(self, run_id: RunId, w: Writer) -> RunLog | None:
        """Under the run's flock: the exact committed view, with any torn tail quarantined and truncated.

        ``None`` if the cached fd's file was unlinked (the run folder was removed, or the log was replaced by a
        migration or a repair): reopen and retry. Damage (a damaged record with valid ones after it) is never taken
        for a torn tail: ``run_log_corrupt``, and nothing is touched.
        """
        st = os.fstat(w.fd)
        if st.st_nlink == 0:
            return None
        log = self.log_for(run_id, st)
        if st.st_size != log.end:
            framing.scan(log, run_id, st.st_size, lambda n, off: os.pread(w.fd, n, off), self.version)
            if log.damage is not None:
                raise corrupt_error(self.events_path(run_id), log)
            if st.st_size > log.end:
                self.quarantine(run_id, w, log.end, st.st_size)
        elif log.damage is not None:
            raise corrupt_error(self.events_path(run_id), log)
        return log

    def find_blob(self, artifact_id: str, *, search: bool) -> tuple[RunId, int] | None:
        """``(run_id, offset)`` of a committed blob record holding ``artifact_id``: from the logs scanned so far, then
        (``search``) from every run log of the store whose unscanned bytes hold the id (found by a byte search at
        memory speed: only those logs are scanned record by record, and the scan is kept)."""
        with self.lock:
            for run_id, log in self.logs.items():
                at = log.blobs.get(artifact_id)
                if at is not None:
                    return run_id, at
            if not search:
                return None
            for run_id in self.run_ids():
                if not self.unscanned_holds(run_id, artifact_id.encode()):
                    continue
                found = self.refreshed(run_id)
                at = None if found is None else found.blobs.get(artifact_id)
                if at is not None:
                    return run_id, at
        return None

    def run_ids(self) -> list[RunId]:
        """The run folders of the store (names that are not run ids are skipped), most recently changed first."""
        runs = self.top_dir(framing.RUNS_DIR, create=False)
        if runs is None:
            return []
        out: list[tuple[int, RunId]] = []
        for entry in safe_paths.list_dir(runs):
            if not entry.is_dir:
                continue
            try:
                run_id = RunId(entry.name)
                st = os.stat(f"{entry.name}/{EVENTS_FILE}", dir_fd=runs, follow_symlinks=False)
            except (ValueError, OSError):
                continue
            out.append((st.st_mtime_ns, run_id))
        out.sort(reverse=True)
        return [run_id for _, run_id in out]

    def refreshed(self, run_id: RunId) -> RunLog | None:
        """:meth:`refresh` without the descriptor; ``None`` for an unknown or unreadable run."""
        try:
            found, fd = self.refresh(run_id)
        except StorageError:
            return None
        if fd is not None:
            os.close(fd)
        return found

    def unscanned_holds(self, run_id: RunId, needle: bytes) -> bool:
        """Whether the bytes of the run's log past what this process has scanned (all of it for a log not scanned
        yet, or replaced since) contain ``needle``: a byte search, no parsing."""
        try:
            fd = self.open_run_file(run_id, EVENTS_FILE, RD_FLAGS)
        except (OSError, StorageError):
            return False
        try:
            st = os.fstat(fd)
            log = self.logs.get(run_id)
            start = log.end if log is not None and log.ident == (st.st_dev, st.st_ino) else 0
            return framing.holds(lambda n, off: os.pread(fd, n, off), start, st.st_size, needle)
        except OSError:
            return False
        finally:
            os.close(fd)

    def quarantine(self, run_id: RunId, w: Writer, start: int, size: int) -> None:
        """Copy the torn tail ``[start, size)`` aside (fsynced), then truncate the event file to ``start``."""
        ops = self.ops
        run_dir = self.run_dir(run_id)
        aside = framing.torn_tail_file(run_id, start, self.now_millis())
        dfd = self.run_dir_fd(run_id, create=False)
        try:
            fd, _ = self.open_create(dfd, aside.rpartition("/")[2], f"{self.root}/{aside}", os.O_WRONLY | os.O_APPEND)
            try:
                pos = start
                while pos < size:
                    chunk = os.pread(w.fd, min(1 << 20, size - pos), pos)
                    if not chunk:
                        break
                    ops.write_all(fd, chunk)
                    pos += len(chunk)
                ops.fsync(fd)
            finally:
                ops.close(fd)
            ops.fsync_dir(run_dir, dfd)
        finally:
            os.close(dfd)
        ops.ftruncate(w.fd, start)
        ops.fsync(w.fd)

    def note_change(self, run_id: RunId, head: int) -> None:
        """Append ``<run_id> <head>`` to the change journal; a hint, so failures are ignored."""
        try:
            if self.journal_fd is None:
                self.journal_fd, _ = self.open_create(
                    self.root_fd(), framing.JOURNAL_FILE, self.journal, os.O_WRONLY | os.O_APPEND
                )
            line = (b"\n" if self.journal_torn else b"") + framing.journal_line(run_id, head)
            self.journal_torn = True
            self.journal_torn = self.ops.write(self.journal_fd, line) != len(line)
        except (OSError, StorageError):  # StorageError: a symlink or foreign folder refused
            pass


def corrupt_error(path: str, log: RunLog) -> StorageError:
    """``run_log_corrupt``: the run log is damaged after its committed prefix (appends to it are refused)."""
    d = log.damage
    assert d is not None
    where = f"line {d.line} (byte {d.offset})" if d.line else f"byte {d.offset}"
    return StorageError.corruption(
        "run_log_corrupt",
        f"{path} is damaged at {where} ({d.code}: {d.reason}) with committed records after it; its first "
        f"{log.head} event(s) read, nothing appended: see `mfm doctor`",
        {"path": path, "offset": d.offset, "line": d.line, "damage": d.code, "seq": log.head + 1},
    )


def read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = [os.read(fd, max(size, 1 << 16))]
    while chunks[-1]:
        chunks.append(os.read(fd, 1 << 20))
    return b"".join(chunks)
