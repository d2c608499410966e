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
(``artifact_corruption`` on mismatch). The kind file is advisory (written in place, not fsynced; one garbled by a
crash is replaced by the next put of its blob): the blob is the truth.

Blocking IO runs inline in the calling coroutine: each call is a few syscalls and at most two fsyncs, and an
event-loop thread hop would cost more than it saves. Ids are validated before any path is built, and every
file is opened with ``O_NOFOLLOW`` (a symlink planted in place of a store file is refused). Every mutating call
goes through the injectable :class:`~engine.stores._fsio.FsOps`; every OS or parse error is translated by
:func:`~engine.stores._fsio.translate`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import StorageError
from engine.events import EventEnvelope, decode_envelope
from engine.ids import RunId
from engine.stores._base import CODE_CONCURRENCY, CancelRequest, ChangeBatch, check_run_id, encode_batch
from engine.stores._fsartifacts import FsArtifactStore
from engine.stores._fscore import EVENT_IO, RD_FLAGS, Core, line_end, read_all, wall_millis
from engine.stores._fsio import FsOps, fail, translate
from engine.stores._fslog import frame_batch
from engine.stores._fsmeta import STORE_FORMAT, STORE_VERSION, open_store

if TYPE_CHECKING:
    from engine.engine import Stores

__all__ = ["STORE_FORMAT", "STORE_VERSION", "FsArtifactStore", "FsEventStore", "FsOps", "FsStore"]

_JOURNAL_READ_LIMIT = 8 << 20


class FsEventStore:
    """``EventStore`` + ``RunLister`` + ``ControlStore`` over ``STORE/runs`` and ``STORE/changes.log``."""

    def __init__(self, core: Core) -> None:
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
            current = await self.head_seq(run_id)
            if current != expected_seq:
                raise StorageError.concurrency(
                    CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {current}"
                )
            return expected_seq
        core = self._core
        with core.lock:
            for _ in range(3):
                head = self._append_once(run_id, expected_seq, lines)
                if head is not None:
                    return head
            raise StorageError.other(EVENT_IO, f"run {run_id}: its event file keeps disappearing; append abandoned")

    def _append_once(self, run_id: RunId, expected_seq: int, lines: list[bytes]) -> int | None:
        """Lock, sync, check, write, fdatasync, journal, unlock. ``None``: the cached file was unlinked, retry."""
        core = self._core
        ops = core.ops
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
            if log is None:
                core.drop_writer(run_id)
                return None
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
            core.note_change(run_id, log.head)
            return log.head
        finally:
            if w.lock_fd >= 0:
                try:
                    ops.flock(w.lock_fd, fcntl.LOCK_UN)
                except OSError:
                    core.drop_writer(run_id)  # closing the fd releases the lock

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
                    fd = os.open(path, RD_FLAGS)
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
            fd = os.open(path, RD_FLAGS)
        except FileNotFoundError:
            if cursor:
                return ChangeBatch(cursor=0, runs=frozenset(await self.list_runs()))
            return ChangeBatch(cursor=0, runs=frozenset())
        except OSError as exc:
            fail(exc, EVENT_IO, "open", path)
        try:
            size = os.fstat(fd).st_size
            if cursor is None:  # start from now, at a line boundary
                return ChangeBatch(cursor=line_end(fd, size), runs=frozenset())
            if cursor > size:  # the journal was replaced: everything may have changed
                everything = frozenset(await self.list_runs())
                return ChangeBatch(cursor=line_end(fd, size), runs=everything)
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
            fd = os.open(path, RD_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            fail(exc, EVENT_IO, "open", path)
        try:
            raw = json.loads(read_all(fd))
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
        now_millis: Callable[[], int] = wall_millis,
        max_open_runs: int = 64,
    ) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self._ops = ops or FsOps()
        self.meta = open_store(str(self.root), self._ops)
        self._core = Core(str(self.root), self._ops, now_millis, max_open_runs)
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
