"""Fault injection in the filesystem store through its single seam (``engine.stores.fs.FsOps``).

For each operation (first append of a run, a multi-envelope append, an append that must first quarantine a torn
tail, the put of a new artifact, a cancel request), the calls it makes through the seam are counted on a clean run;
then, for every k, a fresh store gets the same preconditions and the k-th call fails with ENOSPC, with EIO, or as a
short write (part of the bytes written, then ENOSPC). Each time:

- the operation either succeeds completely or raises ``StorageError`` with a code and a message (never anything
  else);
- the store stays readable, from the same handle and from a fresh one (another "process");
- the head never moves past an unacknowledged batch (a failed append leaves the old head and the old events);
- a failed put leaves the artifact absent or intact, never damaged;
- with the fault gone, a later append / put on the same handle succeeds;
- ``mfm doctor`` (engine.doctor) finds no error in the store afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.doctor import check_store
from engine.errors import StorageError
from engine.events import DomainEvent, EventEnvelope, RunStarted
from engine.ids import ArtifactId, OpId, RunId
from engine.stores.fs import FsOps, FsStore

EMPTY = b"{}"
AID = ArtifactId(hashlib.sha256(EMPTY).hexdigest())
"""Manifest and initial snapshot of the test runs (stored before each scenario, so doctor sees them)."""
SEAM_CALLS = (
    "open",
    "write",
    "fsync",
    "fdatasync",
    "ftruncate",
    "fchmod",
    "link",
    "rename",
    "unlink",
    "mkdir",
    "flock",
)
"""Every mutating seam method (``fsync_dir`` and ``write_all`` go through ``fsync`` and ``write``)."""
FAULTS = ("ENOSPC", "EIO", "short")


@dataclass
class FaultyOps(FsOps):
    """``FsOps`` that counts seam calls and fails the ``fail_at``-th one (1-based) while armed."""

    fault: str = "EIO"
    fail_at: int | None = None
    calls: list[str] = field(default_factory=list)
    armed: bool = False
    fired: str | None = None
    _short_pending: bool = False

    def _tick(self, name: str) -> None:
        if not self.armed:
            return
        self.calls.append(name)
        if self._short_pending and name == "write":
            self._short_pending = False
            raise OSError(errno.ENOSPC, "No space left on device (after a short write)")
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            self.fired = name
            if self.fault == "short" and name == "write":
                self._short_pending = True
                return  # the write below writes half, the next write fails
            num = errno.ENOSPC if self.fault in ("ENOSPC", "short") else errno.EIO
            raise OSError(num, f"injected {errno.errorcode[num]} at {name} #{len(self.calls)}")

    def open(self, path: str, flags: int, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
        self._tick("open")
        return super().open(path, flags, mode, dir_fd=dir_fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._tick("write")
        if self.armed and self._short_pending and len(data) > 1:
            return super().write(fd, bytes(data)[: len(data) // 2])
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._tick("fsync")
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._tick("fdatasync")
        super().fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._tick("ftruncate")
        super().ftruncate(fd, length)

    def fchmod(self, fd: int, mode: int) -> None:
        self._tick("fchmod")
        super().fchmod(fd, mode)

    def link(self, src: str, dst: str, **dir_fds: int | None) -> None:
        self._tick("link")
        super().link(src, dst, **dir_fds)

    def rename(self, src: str, dst: str, **dir_fds: int | None) -> None:
        self._tick("rename")
        super().rename(src, dst, **dir_fds)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        self._tick("unlink")
        super().unlink(path, dir_fd=dir_fd)

    def mkdir(self, path: str, mode: int = 0o700, *, dir_fd: int | None = None) -> bool:
        self._tick("mkdir")
        return super().mkdir(path, mode, dir_fd=dir_fd)

    def flock(self, fd: int, operation: int) -> None:
        self._tick("flock")
        super().flock(fd, operation)


def new_run() -> RunId:
    return RunId(str(uuid.uuid4()))


def envs(run_id: RunId, first_seq: int, n: int) -> list[EventEnvelope]:
    out: list[EventEnvelope] = []
    for i in range(n):
        seq = first_seq + i
        event: Any
        if seq == 1:
            event = RunStarted(op_id=OpId("op"), manifest_id=AID, initial_snapshot_id=AID)
        else:
            event = DomainEvent(name="note", payload={"seq": seq, "text": "é" * 40})
        out.append(EventEnvelope(run_id=run_id, seq=seq, ts_millis=1_700_000_000_000 + seq, event=event))
    return out


@dataclass
class Scenario:
    name: str
    prepare: Callable[[FsStore, RunId], Awaitable[None]]
    act: Callable[[FsStore, RunId], Awaitable[object]]
    check: Callable[[FsStore, RunId, bool], Awaitable[None]]
    """Invariants after the act (``ok``: whether it succeeded), on any handle."""
    follow_up: Callable[[FsStore, RunId], Awaitable[None]]


async def _nothing(store: FsStore, run_id: RunId) -> None:
    return None


async def _two_events(store: FsStore, run_id: RunId) -> None:
    await store.events.append(run_id, 0, envs(run_id, 1, 2))


async def _two_events_and_torn_tail(store: FsStore, run_id: RunId) -> None:
    await _two_events(store, run_id)
    torn = b"".join(e.to_json().encode() + b" \n" for e in envs(run_id, 3, 2)) + b'{"run_id":"' + run_id.encode()
    with open(store.events_path(run_id), "ab") as f:
        f.write(torn)


def _append(expected: int, n: int) -> Callable[[FsStore, RunId], Awaitable[object]]:
    async def act(store: FsStore, run_id: RunId) -> object:
        return await store.events.append(run_id, expected, envs(run_id, expected + 1, n))

    return act


def _events_check(before: int, n: int) -> Callable[[FsStore, RunId, bool], Awaitable[None]]:
    async def check(store: FsStore, run_id: RunId, ok: bool) -> None:
        head = await store.events.head_seq(run_id)
        got = await store.events.read_range(run_id, 1)
        want = before + n if ok else before
        assert head == want, f"head {head}, expected {want} (ok={ok})"
        assert [e.seq for e in got] == list(range(1, want + 1))
        assert got == envs(run_id, 1, want)

    return check


def _append_follow_up(expected_if_failed: int, n: int) -> Callable[[FsStore, RunId], Awaitable[None]]:
    async def follow(store: FsStore, run_id: RunId) -> None:
        cursor = (await store.events.changes_since(None)).cursor
        head = await store.events.head_seq(run_id)
        assert head in (expected_if_failed, expected_if_failed + n)
        new_head = await store.events.append(run_id, head, envs(run_id, head + 1, 1))
        assert new_head == head + 1
        assert await store.events.read_range(run_id, 1) == envs(run_id, 1, head + 1)
        assert run_id in (await FsStore(store.root).events.changes_since(cursor)).runs  # the monitor hears of it

    return follow


BLOB = b'{"artifact":"' + b"x" * 3000 + b'"}'
BLOB_ID = ArtifactId(hashlib.sha256(BLOB).hexdigest())


async def _put(store: FsStore, run_id: RunId) -> object:
    return await store.artifacts.put(ArtifactKind.OUTPUT, BLOB)


async def _put_check(store: FsStore, run_id: RunId, ok: bool) -> None:
    if ok:
        assert await store.artifacts.get(BLOB_ID) == BLOB
    elif await store.artifacts.exists(BLOB_ID):
        assert await store.artifacts.get(BLOB_ID) == BLOB  # present means intact, never half-written
    else:
        with pytest.raises(StorageError) as info:
            await store.artifacts.get(BLOB_ID)
        assert info.value.code == "artifact_not_found"


async def _put_follow_up(store: FsStore, run_id: RunId) -> None:
    assert await store.artifacts.put(ArtifactKind.OUTPUT, BLOB) == BLOB_ID
    assert await store.artifacts.get(BLOB_ID) == BLOB
    other = b"another blob"
    assert await store.artifacts.get(await store.artifacts.put(ArtifactKind.other("note"), other)) == other


async def _cancel(store: FsStore, run_id: RunId) -> object:
    return await store.events.request_cancel(run_id, "stop")


async def _cancel_check(store: FsStore, run_id: RunId, ok: bool) -> None:
    req = await store.events.cancel_request(run_id)
    if ok:
        assert req is not None and req.reason == "stop"
    else:
        assert req is None or req.reason == "stop"


async def _cancel_follow_up(store: FsStore, run_id: RunId) -> None:
    req = await store.events.request_cancel(run_id, "stop")
    assert req.reason == "stop"
    assert await store.events.cancel_request(run_id) == req


SCENARIOS = [
    Scenario("first_append", _nothing, _append(0, 1), _events_check(0, 1), _append_follow_up(0, 1)),
    Scenario("batch_append", _two_events, _append(2, 5), _events_check(2, 5), _append_follow_up(2, 5)),
    Scenario(
        "append_after_torn_tail",
        _two_events_and_torn_tail,
        _append(2, 3),
        _events_check(2, 3),
        _append_follow_up(2, 3),
    ),
    Scenario("artifact_put", _two_events, _put, _put_check, _put_follow_up),
    Scenario("cancel_request", _two_events, _cancel, _cancel_check, _cancel_follow_up),
]


async def _one(
    root: Path, sc: Scenario, fault: str, fail_at: int | None
) -> tuple[FaultyOps, bool, StorageError | None]:
    ops = FaultyOps(fault=fault, fail_at=fail_at)
    store = FsStore(root, ops=ops)
    run_id = RunId("0b5e7d4e-0000-4000-8000-000000000001")
    await store.artifacts.put(ArtifactKind.MANIFEST, EMPTY)
    await sc.prepare(store, run_id)
    ops.armed = True
    err: StorageError | None = None
    try:
        await sc.act(store, run_id)
        ok = True
    except StorageError as exc:  # the only acceptable failure
        ok, err = False, exc
    ops.armed = False
    await sc.check(store, run_id, ok)
    fresh = FsStore(root)
    await sc.check(fresh, run_id, ok)
    await sc.follow_up(store, run_id)
    report = check_store(root)
    assert not report.errors, [f.one_line() for f in report.errors]
    assert {f.code for f in report.findings} <= {"temp_file", "torn_tail"}, [f.one_line() for f in report.findings]
    store.close()
    fresh.close()
    return ops, ok, err


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_fault_at_every_seam_call(tmp_path: Path, sc: Scenario, fault: str) -> None:
    clean, ok, _ = await _one(tmp_path / "clean", sc, fault, None)
    assert ok
    n = len(clean.calls)
    assert n > 0, "the operation made no call through the seam"
    writes = clean.calls.count("write")
    kinds = set(clean.calls)
    assert kinds & {"write", "fdatasync", "fsync", "link"}, clean.calls
    failed = absorbed = 0
    for k in range(1, n + 1):
        if fault == "short" and clean.calls[k - 1] != "write":
            continue
        ops, ok, err = await _one(tmp_path / f"k{k}", sc, fault, k)
        assert ops.fired == clean.calls[k - 1], (k, ops.fired, clean.calls)
        if ok:
            absorbed += 1
        else:
            assert err is not None and err.code and err.message, err
            assert err.code in ("event_store_io", "artifact_store_io"), err.one_line()
            failed += 1
    injected = failed + absorbed
    if fault == "short":
        assert injected == writes
    else:
        assert injected == n
    assert failed > 0, f"no injected fault surfaced as an error in {sc.name}: {clean.calls}"
    print(f"\n{sc.name}/{fault}: {n} seam calls {clean.calls}; {injected} faults, {failed} errors, {absorbed} absorbed")


async def test_short_write_then_success_completes_the_batch(tmp_path: Path) -> None:
    """A write that writes only part of the bytes (and no error) is continued: the batch lands whole."""

    class ShortOnce(FsOps):
        shorts = 0

        def write(self, fd: int, data: bytes | memoryview) -> int:
            if len(data) > 8 and ShortOnce.shorts < 3:
                ShortOnce.shorts += 1
                return super().write(fd, bytes(data)[:7])
            return super().write(fd, data)

    store = FsStore(tmp_path / "s", ops=ShortOnce())
    await store.artifacts.put(ArtifactKind.MANIFEST, EMPTY)
    ShortOnce.shorts = 0
    run_id = new_run()
    assert await store.events.append(run_id, 0, envs(run_id, 1, 4)) == 4
    assert ShortOnce.shorts == 3
    assert await FsStore(tmp_path / "s").events.read_range(run_id, 1) == envs(run_id, 1, 4)
    assert check_store(tmp_path / "s").ok
