"""The filesystem event store: append under the run's ``flock``, lock-free reads of committed batches, the change
journal and cancel requests (see :mod:`engine.stores.fs` for the protocol, :mod:`engine.stores.fs.framing` for the
layout and the framing)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import stat
import threading
from collections.abc import Sequence
from typing import Any

import engine.stores.fs.framing as framing
import engine.stores.fs.safe_paths as safe_paths
from engine._kinds import ArtifactKind
from engine.errors import StorageError
from engine.events import EventEnvelope
from engine.ids import RunId
from engine.run_summary import RunSummary
from engine.stores._base import (
    CODE_CONCURRENCY,
    Blob,
    CancelRequest,
    ChangeBatch,
    RetryNowRequest,
    check_run_id,
    encode_batch,
)
from engine.stores.fs._artifacts import FsArtifactStore
from engine.stores.fs._core import EVENT_IO, Core, corrupt_error, read_all
from engine.stores.fs._ops import fail, translate
from engine.stores.fs._runs_index import RunsIndex
from engine.stores.fs._summary import SummaryCache
from engine.stores.fs.framing import RD_FLAGS

__all__ = ["INDEX_WRITER", "DamagedRead", "FsEventStore"]


class DamagedRead(list[EventEnvelope]):
    """What ``read_range`` returns when it stopped at damage in the run log: the envelopes before it, and
    ``damage`` (``run_log_corrupt``: the error an append would get, with the path, offset and first unread seq)."""

    damage: StorageError

    def __init__(self, envelopes: list[EventEnvelope], damage: StorageError) -> None:
        super().__init__(envelopes)
        self.damage = damage


INDEX_WRITER = "mfm-runs-index"
"""The name of the thread that writes a stale runs index after ``run_summaries`` returned (tests wait for it)."""
_JOURNAL_READ_LIMIT = 8 << 20
_INLINE_FOLD_BYTES = 1 << 20
"""A summary fold beyond this many log bytes runs in a thread (the caller's event loop stays free)."""


class FsEventStore:
    """``EventStore`` + ``UnitOfWork`` + ``RunLister`` + ``ControlStore`` + ``RunSummaries`` over ``STORE/runs`` and
    ``STORE/changes.log``."""

    def __init__(self, core: Core, artifacts: FsArtifactStore) -> None:
        self._core = core
        self._artifacts = artifacts
        self.artifact_store = artifacts  # where commit puts blobs: paired_unit_of_work checks it
        self.summaries = SummaryCache(core)
        self.runs_index = RunsIndex(core, self.summaries)

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
        return await self.commit(run_id, expected_seq, events, ())

    async def commit(
        self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope], blobs: Sequence[Blob]
    ) -> int:
        """Blob records, then event records, in ONE ``write`` + ONE ``fdatasync`` of the run log (format v2), and
        nothing else (a blob's copy under ``artifacts/`` is written by the first read that needs it). A version-1 run
        log stays version 1: its blobs are put as durable files first, then the events appended."""
        run_id = check_run_id(run_id)
        lines = encode_batch(run_id, expected_seq, events)
        staged = [_checked_blob(b) for b in blobs]
        if not lines:
            for _, kind, data in staged:
                await self._artifacts.put(kind, data)
            current = await self.head_seq(run_id)
            if current != expected_seq:
                raise StorageError.concurrency(
                    CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {current}"
                )
            return expected_seq
        core = self._core
        with core.lock:
            for _ in range(3):
                head = self._append_once(run_id, expected_seq, lines, staged)
                if head is not None:
                    break
            else:
                raise StorageError.other(EVENT_IO, f"run {run_id}: its event file keeps disappearing; append abandoned")
            self.summaries.appended(run_id, expected_seq, events)  # after the commit: a cache, see _summary
        return head

    def _append_once(
        self, run_id: RunId, expected_seq: int, lines: list[bytes], blobs: list[tuple[str, ArtifactKind, bytes]]
    ) -> int | None:
        """Lock, sync, check, write, fdatasync, journal, unlock. ``None``: the cached file was unlinked, retry."""
        core = self._core
        ops = core.ops
        w = core.writer(run_id)
        path = core.events_path(run_id)
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
            fmt = log.fmt or (framing.FORMAT_V2 if core.version >= framing.FORMAT_V2 else framing.FORMAT_V1)
            blob_at: list[tuple[str, int]] = []
            if fmt == framing.FORMAT_V2:
                fresh = [b for b in blobs if core.find_blob(b[0], search=False) is None]
                data, offsets, blob_at = framing.frame_commit(lines, fresh)
            else:
                for aid, kind, blob in blobs:  # a version-1 log holds no blobs: durable files first
                    self._artifacts.put_durable(aid, kind, blob)
                data = framing.frame_batch(lines)
                offsets = list(itertools.accumulate(framing.framed_lengths(lines)[:-1], initial=0))
            start = log.end
            try:
                ops.write_all(w.fd, data)
                ops.fdatasync(w.fd)
            except OSError as exc:
                with contextlib.suppress(OSError):  # not acknowledged: take it back (else the next append will)
                    ops.ftruncate(w.fd, start)
                core.drop_writer(run_id)
                fail(exc, EVENT_IO, "append to", path)
            log.fmt = fmt
            log.committed(start, offsets, data, blob_at)
            core.note_change(run_id, log.head)
            return log.head
        finally:
            if w.lock_fd >= 0:
                try:
                    ops.flock(w.lock_fd, fcntl.LOCK_UN)
                except OSError:
                    core.drop_writer(run_id)  # closing the fd releases the lock

    def damage(self, run_id: RunId) -> StorageError | None:
        """``run_log_corrupt`` when the run's log is damaged after its committed prefix (reads stop there, appends
        are refused), else ``None``."""
        run_id = check_run_id(run_id)
        core = self._core
        with core.lock:
            log, fd = core.refresh(run_id)
            if fd is not None:
                os.close(fd)
            if log is None or log.damage is None:
                return None
            return corrupt_error(core.events_path(run_id), log)

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        run_id = check_run_id(run_id)
        core = self._core
        path = core.events_path(run_id)
        with core.lock:
            log, fd = core.refresh(run_id)
            if log is None:
                return []
            try:
                first, start, end = log.span(from_seq, to_seq)
                if start == end:
                    if log.damage is not None and (to_seq is None or to_seq > log.head):
                        return DamagedRead([], corrupt_error(path, log))  # nothing more before the damage
                    return []
                # The whole committed prefix (a resume): read from byte 0 (the first commit's blob records are
                # skipped) to check it against the scan's digest in one pass instead of record by record.
                digest = log.verified_digest(0, end) if first == 1 else None
                if digest is not None:
                    start = 0
                if fd is None:
                    fd = core.open_run_file(run_id, framing.EVENTS_FILE, RD_FLAGS)
                data = os.pread(fd, end - start, start)
            except OSError as exc:
                fail(exc, EVENT_IO, "read", path)
            finally:
                if fd is not None:
                    os.close(fd)
        if len(data) != end - start:
            raise StorageError.corruption("event_store_corruption", f"{path} shrank while being read")
        envelopes, bad = framing.decode_span(data, log.fmt, digest)
        if bad is not None:  # a record whose checksum is valid but whose envelope does not decode: stop there
            first = max(from_seq, 1)
            seq = first + bad
            with core.lock:
                at = log.offsets[seq - 1] if seq <= log.head else log.end
                log.stop_at(seq, framing.Damage(at, 0, "event_line_undecodable", f"event {seq} does not decode"))
                return DamagedRead(envelopes, corrupt_error(path, log))
        if log.damage is not None and (to_seq is None or to_seq > log.head):
            return DamagedRead(envelopes, corrupt_error(path, log))
        return envelopes

    async def run_summary(self, run_id: RunId, *, max_fold_bytes: int | None = None) -> RunSummary | None:
        """The run's summary from its cache file, brought up to date (see :mod:`engine.stores.fs._summary`)."""
        run_id = check_run_id(run_id)
        limit = _INLINE_FOLD_BYTES if max_fold_bytes is None else min(max_fold_bytes, _INLINE_FOLD_BYTES)
        summary = self.summaries.summary(run_id, limit)
        if summary is None or summary.complete or (max_fold_bytes is not None and max_fold_bytes <= limit):
            return summary
        return await asyncio.to_thread(self.summaries.summary, run_id, max_fold_bytes)

    async def run_summaries(self, *, max_fold_bytes: int | None = None) -> tuple[list[RunId], dict[RunId, RunSummary]]:
        """Every run (as ``list_runs``) and its summary, in a thread: one read of the store-wide index for the runs
        it holds current, the summary cache for the others (see :mod:`engine.stores.fs._runs_index`)."""
        found = await asyncio.to_thread(self.runs_index.summaries, max_fold_bytes, write=False)
        # A stale index is written again after the caller has its runs, not before (a live store's index is stale
        # at almost every open): in a thread of its own, which the interpreter waits for at exit.
        if found.stale:
            threading.Thread(target=self.runs_index.write_pending, name=INDEX_WRITER).start()
        return found.run_ids, found.summaries

    async def first_run_summaries(self, n: int) -> dict[RunId, RunSummary]:
        """Up to ``n`` runs' summaries, fast, in a thread (the index's first runs still current: unfinished, then the
        newest); a :meth:`run_summaries` call should follow (the index is read once for both)."""
        return await asyncio.to_thread(self.runs_index.first, n)

    async def list_runs(self) -> list[RunId]:
        """Runs whose event file is non-empty (names that are not run ids, symlinks and folders owned by someone else
        are skipped)."""
        core = self._core
        runs = core.runs
        out: list[RunId] = []
        try:
            runs_fd = core.top_dir(framing.RUNS_DIR, create=False)
            if runs_fd is None:
                return out
            names = [e.name for e in safe_paths.list_dir(runs_fd) if e.is_dir]
        except OSError as exc:
            fail(exc, EVENT_IO, "list", runs)
        for name in names:
            try:
                run_id = RunId(name)
                dfd = safe_paths.open_dir(runs_fd, name, f"{runs}/{name}")
            except (ValueError, OSError, StorageError):
                continue
            try:
                st = safe_paths.stat_entry(dfd, framing.EVENTS_FILE)
            except OSError:
                continue
            finally:
                os.close(dfd)
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                out.append(run_id)
        return out

    async def changes_since(self, cursor: int | None) -> ChangeBatch:
        core = self._core
        path = core.journal
        try:
            fd = safe_paths.open_file(core.root_fd(), framing.JOURNAL_FILE, RD_FLAGS, path)
        except FileNotFoundError:
            if cursor:
                return ChangeBatch(cursor=0, runs=frozenset(await self.list_runs()))
            return ChangeBatch(cursor=0, runs=frozenset())
        except OSError as exc:
            fail(exc, EVENT_IO, "open", path)
        try:
            size = os.fstat(fd).st_size
            if cursor is None:  # start from now, at a line boundary
                return ChangeBatch(cursor=framing.journal_end(fd, size), runs=frozenset())
            if cursor > size:  # the journal was replaced: everything may have changed
                everything = frozenset(await self.list_runs())
                return ChangeBatch(cursor=framing.journal_end(fd, size), runs=everything)
            data = os.pread(fd, min(size - max(cursor, 0), _JOURNAL_READ_LIMIT), max(cursor, 0))
        except OSError as exc:
            fail(exc, EVENT_IO, "read", path)
        finally:
            os.close(fd)
        complete, names = framing.journal_runs(data)
        runs: set[RunId] = set()
        for name in names:
            try:
                runs.add(RunId(name))
            except ValueError:
                continue
        return ChangeBatch(cursor=max(cursor, 0) + complete, runs=frozenset(runs))

    async def request_cancel(self, run_id: RunId, reason: str = "") -> CancelRequest:
        run_id = check_run_id(run_id)
        existing = await self.cancel_request(run_id)
        if existing is not None:
            return existing
        req = CancelRequest(run_id=run_id, requested_at_millis=self._core.now_millis(), reason=str(reason))
        body = {"reason": req.reason, "requested_at_millis": req.requested_at_millis, "run_id": str(run_id)}
        if self._write_control(run_id, framing.CANCEL_FILE, body):
            return req
        first = await self.cancel_request(run_id)
        return req if first is None else first

    async def cancel_request(self, run_id: RunId) -> CancelRequest | None:
        run_id = check_run_id(run_id)
        path = f"{self._core.root}/{framing.cancel_file(run_id)}"
        raw = self._read_control(run_id, framing.CANCEL_FILE, path)
        if raw is None:
            return None
        try:
            return CancelRequest(
                run_id=run_id, requested_at_millis=int(raw["requested_at_millis"]), reason=str(raw["reason"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise translate(
                ValueError(f"malformed: {exc!r}"), "control_store_corrupt", "read cancel request", path
            ) from exc

    async def request_retry_now(self, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest:
        run_id = check_run_id(run_id)
        existing = await self.retry_now_request(run_id, state_id, attempt)
        if existing is not None:
            return existing
        req = RetryNowRequest(run_id, str(state_id), int(attempt), self._core.now_millis())
        body = {
            "attempt": req.attempt,
            "requested_at_millis": req.requested_at_millis,
            "run_id": str(run_id),
            "state_id": req.state_id,
        }
        if self._write_control(run_id, framing.retry_now_name(req.state_id, req.attempt), body):
            return req
        first = await self.retry_now_request(run_id, state_id, attempt)
        return req if first is None else first

    async def retry_now_request(self, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest | None:
        run_id = check_run_id(run_id)
        path = f"{self._core.root}/{framing.retry_now_file(run_id, state_id, attempt)}"
        raw = self._read_control(run_id, framing.retry_now_name(state_id, attempt), path)
        if raw is None:
            return None
        try:
            return RetryNowRequest(run_id, str(raw["state_id"]), int(raw["attempt"]), int(raw["requested_at_millis"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise translate(
                ValueError(f"malformed: {exc!r}"), "control_store_corrupt", "read retry-now request", path
            ) from exc

    def _write_control(self, run_id: RunId, name: str, body: dict[str, object]) -> bool:
        """Create ``control/<name>`` (fsynced) unless it exists; ``True`` if this call created it."""
        core = self._core
        control = f"{core.root}/{framing.control_folder(run_id)}"
        created = False
        try:
            dfd = core.run_dir_fd(run_id, create=True)
            try:
                cfd = safe_paths.make_dir(dfd, framing.CONTROL_DIR, control, core.ops)[0]
            finally:
                os.close(dfd)
            try:
                created = core.write_new_file(cfd, name, json.dumps(body, sort_keys=True).encode(), sync=True)
                if created:
                    core.ops.fsync_dir(control, cfd)
            finally:
                os.close(cfd)
        except OSError as exc:
            fail(exc, EVENT_IO, "write control request in", control)
        return created

    def _read_control(self, run_id: RunId, name: str, path: str) -> dict[str, Any] | None:
        """The JSON object in ``control/<name>``, or ``None`` when there is none."""
        core = self._core
        try:
            dfd = core.run_dir_fd(run_id, create=False)
            try:
                cfd = safe_paths.open_dir(dfd, framing.CONTROL_DIR, f"{core.root}/{framing.control_folder(run_id)}")
            finally:
                os.close(dfd)
            try:
                fd = safe_paths.open_file(cfd, name, RD_FLAGS, path)
            finally:
                os.close(cfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            fail(exc, EVENT_IO, "open", path)
        try:
            raw = json.loads(read_all(fd))
        except (OSError, ValueError) as exc:
            raise translate(
                exc, "control_store_corrupt" if not isinstance(exc, OSError) else EVENT_IO, "read control request", path
            ) from exc
        finally:
            os.close(fd)
        if not isinstance(raw, dict):
            raise translate(ValueError("not a JSON object"), "control_store_corrupt", "read control request", path)
        return raw


def _checked_blob(blob: Blob) -> tuple[str, ArtifactKind, bytes]:
    """``(artifact_id, kind, bytes)`` of a blob whose id is the sha256 of its bytes (``artifact_put_id_mismatch``
    otherwise)."""
    data = blob.data if type(blob.data) is bytes else bytes(blob.data)
    if type(blob) is Blob and blob.hashed and isinstance(blob.kind, ArtifactKind):
        return str(blob.artifact_id), blob.kind, data  # made by Blob.of, which hashed these bytes (issue 12, r4-cpu)
    actual = hashlib.sha256(data).hexdigest()
    if actual != str(blob.artifact_id) or not isinstance(blob.kind, ArtifactKind):
        raise StorageError.corruption(
            "artifact_put_id_mismatch",
            f"a {blob.kind} blob named {blob.artifact_id} hashes to {actual}",
            {"expected": str(blob.artifact_id), "actual": actual},
        )
    return actual, blob.kind, data
