"""The filesystem store's run logs: cheap reads, torn tails, corruption, the change journal, control files, reading
the tail and scanning in chunks."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.errors import StorageError, StorageErrorKind
from engine.events import encode_envelope
from engine.ids import RunId
from engine.stores.fs import FsOps, FsStore, framing
from tests.engine.store_contract import env, envs, new_run


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> FsStore:
    return FsStore(root)


# -- events: cheap reads, torn tails, corruption ---------------------------------------------------------------------


async def test_reads_scan_only_new_bytes(store: FsStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_range does not re-parse the file: each refresh scans from the end of what is already indexed."""
    scans: list[int] = []
    real_scan = framing.scan

    def counting_scan(log: Any, run_id: str, size: int, pread: Any, *rest: Any) -> None:
        scans.append(log.end)
        real_scan(log, run_id, size, pread, *rest)

    monkeypatch.setattr(framing, "scan", counting_scan)
    run = new_run()
    writer = FsStore(root)
    await writer.events.append(run, 0, envs(run, 1, 50))
    size_after_50 = store.events_path(run).stat().st_size
    assert [e.seq for e in await store.events.read_range(run, 10, 12)] == [10, 11, 12]
    assert scans == [0]
    for _ in range(5):
        await store.events.read_range(run, 40)
        await store.events.head_seq(run)
    assert scans == [0]  # nothing changed: no scan at all
    await writer.events.append(run, 50, envs(run, 51, 52))
    assert [e.seq for e in await store.events.read_range(run, 51)] == [51, 52]
    assert scans == [0, size_after_50]
    assert len(scans) == 2  # the writer itself never re-scans its own appends


async def test_reader_does_not_take_the_writers_lock(store: FsStore) -> None:
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 3))
    lock_fd = os.open(store.run_dir(run) / "events.lock", os.O_RDWR)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a reader that needed it would block forever
        reader = FsStore(store.root)
        assert await reader.events.head_seq(run) == 3
        assert await reader.events.read_range(run, 2) == envs(run, 2, 3)
        assert await reader.events.list_runs() == [run]
        assert (await reader.events.changes_since(0)).runs == {run}
    finally:
        os.close(lock_fd)


class NoSyncOps(FsOps):
    """Skips fsyncs: for tests of the file logic (not durability) that would otherwise wait on the disk."""

    def fsync(self, fd: int) -> None:
        pass

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str, fd: int) -> None:
        pass


def _rewrite_tail(path: Path, content: bytes, keep: int) -> None:
    """Make ``path`` hold ``content``, whose first ``keep`` bytes it already holds (no truncation to zero:
    ext4's auto_da_alloc would flush on every close)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, content[keep:], keep)
        os.ftruncate(fd, len(content))
    finally:
        os.close(fd)


def _records(store: FsStore, run: RunId) -> bytes:
    return store.events_path(run).read_bytes()


@pytest.mark.parametrize("last_batch", [1, 3])
async def test_torn_tail_at_every_byte_offset_of_the_last_record(root: Path, last_batch: int) -> None:
    """Whatever prefix of the last batch reached the disk, readers see the batch whole or not at all, and the next
    append quarantines the torn bytes, never gluing onto them and never losing an acknowledged line."""
    run = new_run()
    setup = FsStore(root)
    await setup.events.append(run, 0, envs(run, 1, 2))
    good = _records(setup, run)
    await setup.events.append(run, 2, envs(run, 3, 2 + last_batch))
    full = _records(setup, run)
    path = setup.events_path(run)
    run_dir = setup.run_dir(run)
    expected_prefix = envs(run, 1, 2)
    for cut in range(len(good), len(full)):
        _rewrite_tail(path, full[:cut], len(good))
        for p in run_dir.glob("events.jsonl.torn-*"):
            p.unlink()
        reader = FsStore(root, ops=NoSyncOps())
        assert await reader.events.head_seq(run) == 2, cut
        assert await reader.events.read_range(run, 0) == expected_prefix, cut
        assert path.read_bytes() == full[:cut]  # readers never repair
        writer = FsStore(root, ops=NoSyncOps())
        with pytest.raises(StorageError):
            await writer.events.append(run, 2 + last_batch, [env(run, 3 + last_batch)])
        assert await writer.events.append(run, 2, [env(run, 3)]) == 3
        assert path.read_bytes() == good + framing.record(framing.EVENT_RECORD, True, encode_envelope(env(run, 3)))
        torn = list(run_dir.glob("events.jsonl.torn-*"))
        if cut > len(good):
            assert len(torn) == 1 and torn[0].read_bytes() == full[len(good) : cut]
        else:
            assert torn == []
        assert await reader.events.read_range(run, 0) == [*expected_prefix, env(run, 3)]
    path.write_bytes(full)
    assert await FsStore(root).events.read_range(run, 0) == envs(run, 1, 2 + last_batch)


@pytest.mark.parametrize(
    "tail",
    [
        b"not json at all\n",
        b"\x00\x00\x00\x00\x00\x00",
        b"{}\n",
        b'{"seq": 7}\n',
        b"[1,2,3]\n",
        b"\xff\xfe\n",
    ],
)
async def test_garbage_tail_is_never_read_and_is_quarantined(store: FsStore, tail: bytes) -> None:
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 2))
    path = store.events_path(run)
    good = path.read_bytes()
    path.write_bytes(good + tail)
    reader = FsStore(store.root)
    assert await reader.events.read_range(run, 0) == envs(run, 1, 2)
    assert await store.events.append(run, 2, [env(run, 3)]) == 3
    assert await reader.events.read_range(run, 0) == envs(run, 1, 3)
    (torn,) = store.run_dir(run).glob("events.jsonl.torn-*")
    assert torn.read_bytes() == tail


async def test_line_that_is_json_but_not_an_envelope_is_corruption(root: Path) -> None:
    """A version-1 line that looks like the next envelope but does not decode: reads stop before it and say so,
    appends are refused (``run_log_corrupt``); nothing is moved aside."""
    store = FsStore(root, new_version=1)
    run = new_run()
    await store.events.append(run, 0, [env(run, 1)])
    path = store.events_path(run)
    path.write_bytes(path.read_bytes() + json.dumps({"run_id": run, "seq": 2, "event": "bogus"}).encode() + b"\n")
    before = path.read_bytes()
    reader = FsStore(store.root)
    got = await reader.events.read_range(run, 1)
    assert got == [env(run, 1)]
    damage = got.damage  # type: ignore[attr-defined]
    assert (damage.kind, damage.code) == (StorageErrorKind.CORRUPTION, "run_log_corrupt")
    assert await reader.events.head_seq(run) == 1
    with pytest.raises(StorageError) as info:
        await reader.events.append(run, 1, [env(run, 2)])
    assert info.value.code == "run_log_corrupt"
    assert path.read_bytes() == before and not list(reader.run_dir(run).glob("events.jsonl.torn-*"))


async def test_changes_since_survives_a_removed_journal(store: FsStore, root: Path) -> None:
    a, b = new_run(), new_run()
    await store.events.append(a, 0, [env(a, 1)])
    cursor = (await store.events.changes_since(None)).cursor
    assert cursor == len(f"{a} 1\n")
    store.close()
    (root / "changes.log").unlink()
    missing = await store.events.changes_since(cursor)
    assert missing.runs == {a} and missing.cursor == 0
    await store.events.append(b, 0, [env(b, 1)])
    assert (await store.events.changes_since(0)).runs == {b}
    assert (await store.events.changes_since(10_000)).runs == {a, b}


async def test_changes_since_ignores_a_partial_journal_line(store: FsStore, root: Path) -> None:
    a = new_run()
    await store.events.append(a, 0, [env(a, 1)])
    with open(root / "changes.log", "ab") as f:
        f.write(b"1234")
    start = await store.events.changes_since(None)
    assert start.cursor == len(f"{a} 1\n")
    assert (await store.events.changes_since(0)).cursor == start.cursor


async def test_run_dir_for_the_worker(store: FsStore) -> None:
    run = new_run()
    path = store.run_dir(run)
    assert not path.exists()
    assert store.run_dir(run, create=True) == path and path.is_dir()
    (path / "lease").write_text("pid 1")
    assert await store.events.head_seq(run) == 0
    assert await store.events.list_runs() == []
    await store.events.append(run, 0, [env(run, 1)])
    assert (path / "lease").read_text() == "pid 1"


async def test_cancel_request_file_is_atomic_and_first_wins(root: Path) -> None:
    clock = iter([111, 222])
    store = FsStore(root, now_millis=lambda: next(clock))
    run = new_run()
    first = await store.events.request_cancel(run, "why")
    assert first.requested_at_millis == 111
    assert json.loads((store.run_dir(run) / "control" / "cancel.json").read_text()) == {
        "reason": "why",
        "requested_at_millis": 111,
        "run_id": run,
    }
    assert await FsStore(root, now_millis=lambda: 999).events.request_cancel(run, "other") == first
    (store.run_dir(run) / "control" / "cancel.json").write_text("{broken")
    with pytest.raises(StorageError) as info:
        await store.events.cancel_request(run)
    assert info.value.kind is StorageErrorKind.CORRUPTION


async def test_last_envelope_reads_the_tail_and_skips_what_does_not_decode(store: FsStore) -> None:
    """``framing.last_envelope``: the last complete decodable line, found from the end of a file of any size."""
    run = new_run()
    path = store.events_path(run)
    assert not path.exists()
    await store.events.append(run, 0, envs(run, 1, 3000))
    with open(path, "rb") as fh:
        last = framing.last_envelope(fh)
    assert last is not None and last.seq == 3000
    path.write_bytes(path.read_bytes() + b"garbage\n" + encode_envelope(env(run, 3001)))  # damaged, then torn
    with open(path, "rb") as fh:
        last = framing.last_envelope(fh)
    assert last is not None and last.seq == 3000
    path.write_bytes(b"\n" + encode_envelope(env(run, 1)))
    with open(path, "rb") as fh:
        assert framing.last_envelope(fh) is None


@pytest.mark.parametrize("chunk", [1, 7, 64, 300])
async def test_scan_reads_in_chunks_of_any_size(store: FsStore, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Lines and batches straddling read-chunk boundaries are indexed exactly as with one big read."""
    run = new_run()
    for first, last in ((1, 1), (2, 5), (6, 6), (7, 9)):
        await store.events.append(run, first - 1, envs(run, first, last))
    path = store.events_path(run)
    path.write_bytes(path.read_bytes() + encode_envelope(env(run, 10)) + b" \n" + b'{"torn')
    monkeypatch.setattr(framing.runlog, "CHUNK", chunk)  # the scan reads in chunks of runlog.CHUNK
    reader = FsStore(store.root)
    assert await reader.events.head_seq(run) == 9
    assert await reader.events.read_range(run, 3, 7) == envs(run, 3, 7)
    assert reader._core.logs[run].end == len(path.read_bytes()) - len(encode_envelope(env(run, 10))) - 2 - 6
