"""The filesystem store: crash-safe, lock-light, watchable (ARCHITECTURE "Filesystem store").

Layout (every directory 0700, every file 0600, whatever the umask)::

    STORE/
      store.json                      {"created_at": ISO-8601, "format": "mfm-store", "version": 1}
      changes.log                     change journal: "<run_id> <new_head>\\n" per successful append
      runs/<run_id>/events.jsonl      the run's envelopes, one wire-form line each (framing: engine.stores._fslog)
      runs/<run_id>/events.lock       flock(LOCK_EX) target of appenders (readers never lock)
      runs/<run_id>/events.jsonl.torn-<offset>-<millis>   a quarantined torn tail (kept for inspection)
      runs/<run_id>/control/cancel.json                   the first cancel request (atomic, never replaced)
      runs/<run_id>/lease, worker.log                     owned by engine.workers (see FsStore.run_dir)
      artifacts/<aa>/<id>             raw bytes; <aa> = first two hex chars of the 64-char id
      artifacts/<aa>/<id>.kind        the ArtifactKind given at the first put (wire JSON, advisory)
      artifacts/<aa>/.tmp-*           temp files of puts in progress (or killed): ignored, harmless

Events. ``append`` validates the batch (``encode_batch``), takes the run's ``flock``, brings its cached view of
the file up to date (one ``fstat``; bytes appended by another process are scanned, a torn tail left by a crash is
copied aside and truncated), checks ``expected_seq``, writes the whole batch with one ``write``, ``fdatasync``s it
(and fsyncs the run directory when the file was just created), then adds a journal line and unlocks. Concurrent
appenders in different processes therefore get exactly one winner per ``expected_seq``. Readers never lock: they
see only committed batches (batch framing), so a run can be watched while it is written.

Cheap reads. Each run's committed line offsets are cached in memory (``RunLog``): ``head_seq`` costs one ``stat``
when nothing changed, ``read_range(run, seq)`` one ``pread`` of exactly the wanted lines, and a refresh scans
only the bytes appended since. ``changes.log`` lets a monitor of 10,000 runs watch ONE file:
``changes_since(cursor)`` reads it from a byte offset (the cursor). It is a hint, never fsynced: readers re-stat
the runs it names. It is not rotated (about 45 bytes per append); a cursor beyond its end (the file was removed)
reports every run.

Artifacts (same layout and codes as the reference project's filesystem artifact store): a put writes the kind
file, then the bytes to a temp file in the same directory, ``fdatasync``s, ``link``s it into place (an existing id
is never overwritten, it is verified instead) and fsyncs the directory. Every read re-hashes
(``artifact_corruption`` on mismatch). The kind file is advisory (not fsynced): the blob is the truth.

Blocking IO runs inline in the calling coroutine: each call is a few syscalls and at most two fsyncs, and an
event-loop thread hop would cost more than it saves. Ids are validated before any path is built, and every
file is opened with ``O_NOFOLLOW`` (a symlink planted in place of a store file is refused). Every mutating call
goes through the injectable :class:`~engine.stores._fsio.FsOps`; every OS or parse error is translated by
:func:`~engine.stores._fsio.translate`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine._kinds import ArtifactKind
from engine.errors import StorageError
from engine.events import EventEnvelope, decode_envelope
from engine.ids import ArtifactId, RunId
from engine.stores._base import (
    CODE_CONCURRENCY,
    CancelRequest,
    ChangeBatch,
    check_artifact_id,
    check_run_id,
    encode_batch,
)
from engine.stores._fsio import DIR_MODE, FILE_MODE, FsOps, fail, translate
from engine.stores._fslog import RunLog, frame_batch, scan

if TYPE_CHECKING:
    from engine.engine import Stores

__all__ = ["STORE_FORMAT", "STORE_VERSION", "FsArtifactStore", "FsEventStore", "FsOps", "FsStore"]

STORE_FORMAT = "mfm-store"
STORE_VERSION = 1
EVENT_IO = "event_store_io"
ARTIFACT_IO = "artifact_store_io"
_RD = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_JOURNAL_READ_LIMIT = 8 << 20
_tmp_counter = itertools.count()


def _wall_millis() -> int:
    return time.time_ns() // 1_000_000


def _tmp_name(directory: str, tag: str) -> str:
    return f"{directory}/.tmp-{tag}-{os.getpid()}-{next(_tmp_counter)}"


@dataclass(slots=True)
class _Writer:
    lock_fd: int
    fd: int


class _Core:
    """State shared by the event and artifact stores of one ``FsStore``."""

    def __init__(self, root: str, ops: FsOps, now_millis: Callable[[], int], max_open_runs: int) -> None:
        self.root = root
        self.runs = f"{root}/runs"
        self.artifacts = f"{root}/artifacts"
        self.journal = f"{root}/changes.log"
        self.ops = ops
        self.now_millis = now_millis
        self.max_open_runs = max(1, max_open_runs)
        self.lock = threading.RLock()
        self.logs: dict[RunId, RunLog] = {}
        self.writers: OrderedDict[RunId, _Writer] = OrderedDict()
        self.journal_fd: int | None = None
        self.journal_torn = False
        """The last journal write was short or failed: start the next line on a fresh line."""
        self.pid = os.getpid()

    # -- files -------------------------------------------------------------------------------------------------

    def open_create(self, path: str, flags: int) -> tuple[int, bool]:
        """Open ``path`` for writing, creating it 0600 if missing; return ``(fd, created)``."""
        ops = self.ops
        try:
            return ops.open(path, flags), False
        except FileNotFoundError:
            pass
        try:
            fd = ops.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return ops.open(path, flags), False
        try:
            ops.fchmod(fd, FILE_MODE)
        except BaseException:
            ops.close(fd)
            raise
        return fd, True

    def write_new_file(self, directory: str, final: str, data: bytes, *, sync: bool) -> bool:
        """Write ``data`` to a temp file and link it to ``final`` (never replacing it); False if it existed."""
        ops = self.ops
        tmp = _tmp_name(directory, Path(final).name[:16])
        fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            try:
                ops.fchmod(fd, FILE_MODE)
                ops.write_all(fd, data)
                if sync:
                    ops.fdatasync(fd)
            finally:
                ops.close(fd)
            try:
                ops.link(tmp, final)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(OSError):  # a leftover temp file is harmless
                ops.unlink(tmp)

    def make_dir(self, path: str, parent: str) -> None:
        if self.ops.mkdir(path, DIR_MODE):
            self.ops.fsync_dir(parent)

    # -- run directories and writers -----------------------------------------------------------------------------

    def run_dir(self, run_id: RunId) -> str:
        return f"{self.runs}/{run_id}"

    def writer(self, run_id: RunId) -> _Writer:
        if os.getpid() != self.pid:  # forked: inherited fds share our locks, never use them
            self.writers.clear()
            self.journal_fd = None
            self.pid = os.getpid()
        w = self.writers.get(run_id)
        if w is not None:
            self.writers.move_to_end(run_id)
            return w
        run_dir = self.run_dir(run_id)
        path = f"{run_dir}/events.jsonl"
        try:
            self.make_dir(run_dir, self.runs)
            lock_fd, _ = self.open_create(f"{run_dir}/events.lock", os.O_RDWR)
            try:
                fd, created = self.open_create(path, os.O_RDWR | os.O_APPEND)
                if created:
                    self.ops.fsync_dir(run_dir)
            except BaseException:
                self.ops.close(lock_fd)
                raise
        except OSError as exc:
            fail(exc, EVENT_IO, "open for append", path)
        w = self.writers[run_id] = _Writer(lock_fd, fd)
        while len(self.writers) > self.max_open_runs:
            _, old = self.writers.popitem(last=False)
            self.close_writer(old)
        return w

    def close_writer(self, w: _Writer) -> None:
        for fd in (w.fd, w.lock_fd):
            with contextlib.suppress(OSError):
                self.ops.close(fd)

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
        path = f"{self.run_dir(run_id)}/events.jsonl"
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            fail(exc, EVENT_IO, "stat", path)
        if not stat.S_ISREG(st.st_mode):
            fail(OSError(errno.ELOOP, "not a regular file"), EVENT_IO, "open", path)
        log = self.log_for(run_id, st)
        if st.st_size == log.end:
            return log, None
        fd: int | None = None
        try:
            fd = os.open(path, _RD)
            st = os.fstat(fd)
            log = self.log_for(run_id, st)
            scan(log, run_id, st.st_size, lambda n, off: os.pread(fd, n, off))
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            fail(exc, EVENT_IO, "read", path)
        return log, fd

    def sync_locked(self, run_id: RunId, w: _Writer) -> RunLog:
        """Under the run's flock: the exact committed view, with any torn tail quarantined and truncated."""
        st = os.fstat(w.fd)
        log = self.log_for(run_id, st)
        if st.st_size != log.end:
            scan(log, run_id, st.st_size, lambda n, off: os.pread(w.fd, n, off))
            if st.st_size > log.end:
                self.quarantine(run_id, w, log.end, st.st_size)
        return log

    def quarantine(self, run_id: RunId, w: _Writer, start: int, size: int) -> None:
        """Copy the torn tail ``[start, size)`` aside (fsynced), then truncate the event file to ``start``."""
        ops = self.ops
        run_dir = self.run_dir(run_id)
        aside = f"{run_dir}/events.jsonl.torn-{start}-{self.now_millis()}"
        fd, _ = self.open_create(aside, os.O_WRONLY | os.O_APPEND)
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
        ops.fsync_dir(run_dir)
        ops.ftruncate(w.fd, start)
        ops.fsync(w.fd)

    def note_change(self, run_id: RunId, head: int) -> None:
        """Append ``<run_id> <head>`` to the change journal; a hint, so failures are ignored."""
        try:
            if self.journal_fd is None:
                self.journal_fd, _ = self.open_create(self.journal, os.O_WRONLY | os.O_APPEND)
            line = (b"\n" if self.journal_torn else b"") + f"{run_id} {head}\n".encode()
            self.journal_torn = True
            self.journal_torn = self.ops.write(self.journal_fd, line) != len(line)
        except OSError:
            pass


class FsEventStore:
    """``EventStore`` + ``RunLister`` + ``ControlStore`` over ``STORE/runs`` and ``STORE/changes.log``."""

    def __init__(self, core: _Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"FsEventStore({self._core.root!r})"

    async def head_seq(self, run_id: RunId) -> int:
        run_id = check_run_id(run_id)
        core = self._core
        with core.lock:
            log, fd = core.refresh(run_id)
            if fd is not None:
                os.close(fd)
            return 0 if log is None else log.head

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        run_id = check_run_id(run_id)
        lines = encode_batch(run_id, expected_seq, events)
        if not lines:
            head = await self.head_seq(run_id)
            if head != expected_seq:
                raise StorageError.concurrency(
                    CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {head}"
                )
            return expected_seq
        core = self._core
        ops = core.ops
        with core.lock:
            w = core.writer(run_id)
            path = f"{core.run_dir(run_id)}/events.jsonl"
            try:
                ops.flock(w.lock_fd, fcntl.LOCK_EX)
            except OSError as exc:
                core.drop_writer(run_id)
                fail(exc, EVENT_IO, "lock", path)
            try:
                try:
                    log = core.sync_locked(run_id, w)
                except OSError as exc:
                    core.drop_writer(run_id)
                    fail(exc, EVENT_IO, "recover the tail of", path)
                if log.head != expected_seq:
                    raise StorageError.concurrency(
                        CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {log.head}"
                    )
                start = log.end
                try:
                    ops.write_all(w.fd, frame_batch(lines))
                    ops.fdatasync(w.fd)
                except OSError as exc:
                    with contextlib.suppress(OSError):  # not acknowledged: take it back (else the next append will)
                        ops.ftruncate(w.fd, start)
                    core.drop_writer(run_id)
                    fail(exc, EVENT_IO, "append to", path)
                last = len(lines) - 1
                log.committed(start, [len(line) + (1 if i == last else 2) for i, line in enumerate(lines)])
                head = log.head
                core.note_change(run_id, head)
            finally:
                try:
                    ops.flock(w.lock_fd, fcntl.LOCK_UN)
                except OSError:
                    core.drop_writer(run_id)  # closing the fd releases the lock
            return head

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        run_id = check_run_id(run_id)
        core = self._core
        path = f"{core.run_dir(run_id)}/events.jsonl"
        with core.lock:
            log, fd = core.refresh(run_id)
            if log is None:
                return []
            try:
                _, start, end = log.span(from_seq, to_seq)
                if start == end:
                    return []
                if fd is None:
                    fd = os.open(path, _RD)
                data = os.pread(fd, end - start, start)
            except OSError as exc:
                fail(exc, EVENT_IO, "read", path)
            finally:
                if fd is not None:
                    os.close(fd)
        if len(data) != end - start:
            raise StorageError.corruption("event_store_corruption", f"{path} shrank while being read")
        return [decode_envelope(line) for line in data.split(b"\n")[:-1]]

    async def list_runs(self) -> list[RunId]:
        """Runs whose event file is non-empty (one ``stat`` each; names that are not run ids are ignored)."""
        runs = self._core.runs
        out: list[RunId] = []
        try:
            with os.scandir(runs) as it:
                names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            fail(exc, EVENT_IO, "list", runs)
        for name in names:
            try:
                run_id = RunId(name)
                st = os.stat(f"{runs}/{name}/events.jsonl", follow_symlinks=False)
            except (ValueError, OSError):
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                out.append(run_id)
        return out

    async def changes_since(self, cursor: int | None) -> ChangeBatch:
        path = self._core.journal
        try:
            fd = os.open(path, _RD)
        except FileNotFoundError:
            if cursor:
                return ChangeBatch(cursor=0, runs=frozenset(await self.list_runs()))
            return ChangeBatch(cursor=0, runs=frozenset())
        except OSError as exc:
            fail(exc, EVENT_IO, "open", path)
        try:
            size = os.fstat(fd).st_size
            if cursor is None:  # start from now, at a line boundary
                return ChangeBatch(cursor=_line_end(fd, size), runs=frozenset())
            if cursor > size:  # the journal was replaced: everything may have changed
                everything = frozenset(await self.list_runs())
                return ChangeBatch(cursor=_line_end(fd, size), runs=everything)
            data = os.pread(fd, min(size - max(cursor, 0), _JOURNAL_READ_LIMIT), max(cursor, 0))
        except OSError as exc:
            fail(exc, EVENT_IO, "read", path)
        finally:
            os.close(fd)
        complete = data.rfind(b"\n") + 1
        runs: set[RunId] = set()
        for line in data[:complete].splitlines():
            name = line.partition(b" ")[0].decode("ascii", "replace")
            try:
                runs.add(RunId(name))
            except ValueError:
                continue
        return ChangeBatch(cursor=max(cursor, 0) + complete, runs=frozenset(runs))

    async def request_cancel(self, run_id: RunId, reason: str = "") -> CancelRequest:
        run_id = check_run_id(run_id)
        core = self._core
        existing = await self.cancel_request(run_id)
        if existing is not None:
            return existing
        run_dir = core.run_dir(run_id)
        control = f"{run_dir}/control"
        req = CancelRequest(run_id=run_id, requested_at_millis=core.now_millis(), reason=str(reason))
        body = {"reason": req.reason, "requested_at_millis": req.requested_at_millis, "run_id": str(run_id)}
        try:
            core.make_dir(run_dir, core.runs)
            core.make_dir(control, run_dir)
            created = core.write_new_file(
                control, f"{control}/cancel.json", json.dumps(body, sort_keys=True).encode(), sync=True
            )
            if created:
                core.ops.fsync_dir(control)
        except OSError as exc:
            fail(exc, EVENT_IO, "write cancel request in", control)
        if created:
            return req
        first = await self.cancel_request(run_id)
        return req if first is None else first

    async def cancel_request(self, run_id: RunId) -> CancelRequest | None:
        run_id = check_run_id(run_id)
        path = f"{self._core.run_dir(run_id)}/control/cancel.json"
        try:
            fd = os.open(path, _RD)
        except FileNotFoundError:
            return None
        except OSError as exc:
            fail(exc, EVENT_IO, "open", path)
        try:
            raw = json.loads(_read_all(fd))
            return CancelRequest(
                run_id=run_id, requested_at_millis=int(raw["requested_at_millis"]), reason=str(raw["reason"])
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise translate(
                exc if isinstance(exc, OSError | ValueError) else ValueError(f"malformed: {exc!r}"),
                "control_store_corrupt" if not isinstance(exc, OSError) else EVENT_IO,
                "read cancel request",
                path,
            ) from exc
        finally:
            os.close(fd)


def _line_end(fd: int, size: int) -> int:
    """Offset just past the last complete line of the journal (size 0 → 0)."""
    tail = os.pread(fd, min(size, 4096), max(0, size - 4096))
    return size - len(tail) + tail.rfind(b"\n") + 1


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = [os.read(fd, max(size, 1 << 16))]
    while chunks[-1]:
        chunks.append(os.read(fd, 1 << 20))
    return b"".join(chunks)


class FsArtifactStore:
    """Content-addressed blobs under ``STORE/artifacts/<aa>/<id>``, verified by hash on every read."""

    def __init__(self, core: _Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"FsArtifactStore({self._core.artifacts!r})"

    def _path(self, artifact_id: ArtifactId) -> str:
        return f"{self._core.artifacts}/{artifact_id[:2]}/{artifact_id}"

    def _read_verified(self, artifact_id: ArtifactId, path: str) -> bytes:
        try:
            fd = os.open(path, _RD)
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "open", path)
        try:
            data = _read_all(fd)
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "read", path)
        finally:
            os.close(fd)
        actual = hashlib.sha256(data).hexdigest()
        if actual != artifact_id:
            raise StorageError.corruption(
                "artifact_corruption",
                f"artifact {artifact_id} is corrupt: its bytes hash to {actual}",
                {"artifact_id": str(artifact_id), "path": path},
            )
        return data

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        if not isinstance(kind, ArtifactKind):
            raise StorageError.other("artifact_kind_invalid", f"not an ArtifactKind: {kind!r}"[:200])
        data = bytes(data)
        aid = ArtifactId(hashlib.sha256(data).hexdigest())
        core = self._core
        directory = f"{core.artifacts}/{aid[:2]}"
        path = f"{directory}/{aid}"
        try:
            self._read_verified(aid, path)
            return aid  # already stored and intact: never overwritten
        except StorageError as exc:
            if exc.code != "artifact_not_found":
                raise
        kind_bytes = json.dumps(kind.to_wire(), ensure_ascii=False).encode()
        try:
            core.make_dir(directory, core.artifacts)
            core.write_new_file(directory, f"{path}.kind", kind_bytes, sync=False)
            linked = core.write_new_file(directory, path, data, sync=True)
            core.ops.fsync_dir(directory)
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "write", path)
        if not linked:  # a concurrent put won: its bytes must be ours
            self._read_verified(aid, path)
        return aid

    async def get(self, artifact_id: ArtifactId) -> bytes:
        aid = check_artifact_id(artifact_id)
        return self._read_verified(aid, self._path(aid))

    async def exists(self, artifact_id: ArtifactId) -> bool:
        try:
            aid = ArtifactId(artifact_id)
        except ValueError:
            return False
        path = self._path(aid)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "stat", path)
        return stat.S_ISREG(st.st_mode)

    async def kind_of(self, artifact_id: ArtifactId) -> ArtifactKind | None:
        """The kind recorded at the first put; ``None`` if unknown (missing or unreadable kind file)."""
        try:
            aid = ArtifactId(artifact_id)
            fd = os.open(f"{self._path(aid)}.kind", _RD)
        except (ValueError, OSError):
            return None
        try:
            return ArtifactKind.from_wire(json.loads(_read_all(fd)))
        except (ValueError, OSError):
            return None
        finally:
            os.close(fd)


class FsStore:
    """The filesystem store at ``root`` (created on first use): ``.events``, ``.artifacts``, ``.stores``.

    ``ops`` replaces the filesystem seam (fault injection); ``now_millis`` the clock of cancel requests;
    ``max_open_runs`` bounds the cached per-run append file descriptors (two per run).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        ops: FsOps | None = None,
        now_millis: Callable[[], int] = _wall_millis,
        max_open_runs: int = 64,
    ) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self._ops = ops or FsOps()
        self.meta = _open_store(str(self.root), self._ops)
        self._core = _Core(str(self.root), self._ops, now_millis, max_open_runs)
        self.events = FsEventStore(self._core)
        self.artifacts = FsArtifactStore(self._core)

    def __repr__(self) -> str:
        return f"FsStore({str(self.root)!r})"

    @property
    def stores(self) -> Stores:
        from engine.engine import Stores

        return Stores(events=self.events, artifacts=self.artifacts, control=self.events)

    def run_dir(self, run_id: RunId, *, create: bool = False) -> Path:
        """``STORE/runs/<run_id>`` (validated id); ``create=True`` makes it (0700, durable)."""
        run_id = check_run_id(run_id)
        path = self._core.run_dir(run_id)
        if create:
            try:
                self._core.make_dir(path, self._core.runs)
            except OSError as exc:
                fail(exc, EVENT_IO, "create", path)
        return Path(path)

    def events_path(self, run_id: RunId) -> Path:
        return self.run_dir(run_id) / "events.jsonl"

    @property
    def changes_path(self) -> Path:
        """The change journal a monitor watches (``watchfiles`` on this one file)."""
        return Path(self._core.journal)

    def close(self) -> None:
        """Close cached file descriptors (the store stays usable: they are reopened on demand)."""
        self._core.close()

    def __enter__(self) -> FsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None:
            core.close()


def _open_store(root: str, ops: FsOps) -> dict[str, Any]:
    """Open (or initialise) the store directory; return the parsed ``store.json``."""
    meta_path = f"{root}/store.json"
    try:
        st = os.stat(root)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _store_error("store_not_writable", root, exc) from exc
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise StorageError.other("store_not_a_directory", f"store path {root} exists and is not a directory")
    try:
        if st is None:
            parent = os.path.dirname(root)
            os.makedirs(parent, exist_ok=True)
            ops.mkdir(root, DIR_MODE)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "no write permission")
        meta = _read_meta(meta_path)
        if meta is None:
            stray = [n for n in os.listdir(root) if not n.startswith(".tmp-")]
            if stray:
                raise StorageError.other(
                    "store_not_a_store",
                    f"{root} is not empty and has no store.json; refusing to use it as a store "
                    f"(found {', '.join(sorted(stray)[:5])})",
                )
            body = {"created_at": datetime.now(UTC).isoformat(), "format": STORE_FORMAT, "version": STORE_VERSION}
            _write_meta(root, meta_path, json.dumps(body, sort_keys=True).encode() + b"\n", ops)
            meta = _read_meta(meta_path)
            assert meta is not None
        version = meta.get("version") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT or version != STORE_VERSION:
            raise StorageError.other(
                "store_version_unknown",
                f"store at {root} has format {meta.get('format')!r} version {version!r}; "
                f"this program understands {STORE_FORMAT!r} version {STORE_VERSION}"
                if isinstance(meta, dict)
                else f"store at {root}: store.json is not an object",
            )
        for sub in ("runs", "artifacts"):
            if ops.mkdir(f"{root}/{sub}", DIR_MODE):
                ops.fsync_dir(root)
    except OSError as exc:
        code = "store_not_writable" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "store_io"
        raise _store_error(code, root, exc) from exc
    return meta


def _store_error(code: str, root: str, exc: OSError) -> StorageError:
    err = translate(exc, code, "open store at", root)
    if code == "store_not_writable":
        return StorageError.other(code, f"store at {root} is not writable: {exc.strerror or exc}", err.info.details)
    return err


def _read_meta(path: str) -> Any:
    try:
        fd = os.open(path, _RD)
    except FileNotFoundError:
        return None
    try:
        raw = _read_all(fd)
    finally:
        os.close(fd)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StorageError.other(
            "store_version_unknown", f"{path} is not readable store metadata: {exc}"[:300], {"path": path}
        ) from exc


def _write_meta(root: str, path: str, data: bytes, ops: FsOps) -> None:
    tmp = _tmp_name(root, "store")
    fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            ops.fchmod(fd, FILE_MODE)
            ops.write_all(fd, data)
            ops.fdatasync(fd)
        finally:
            ops.close(fd)
        with contextlib.suppress(FileExistsError):  # another process initialised it first
            ops.link(tmp, path)
        ops.fsync_dir(root)
    finally:
        with contextlib.suppress(OSError):
            ops.unlink(tmp)
