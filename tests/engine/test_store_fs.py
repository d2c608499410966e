"""The filesystem store: the shared contract suite, plus what only a filesystem backend must prove.

Crash and multi-process cases are in test_store_fs_crash.py.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.errors import StorageError, StorageErrorKind
from engine.events import encode_envelope
from engine.hashing import artifact_id_for_bytes
from engine.ids import ArtifactId, RunId
from engine.stores.fs import STORE_VERSION, FsOps, FsStore, framing
from tests.engine.store_contract import StoreContract, domain, env, envs, new_run


class TestFsStoreContract(StoreContract):
    async def make_store(self, request: pytest.FixtureRequest) -> FsStore:
        root: Path = request.getfixturevalue("tmp_path") / "store"
        return FsStore(root)

    async def reopen_store(self, store: FsStore, request: pytest.FixtureRequest) -> FsStore:
        return FsStore(store.root)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> FsStore:
    return FsStore(root)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- layout ------------------------------------------------------------------------------------------------------


async def test_layout_matches_the_documented_one(store: FsStore, root: Path) -> None:
    meta = json.loads((root / "store.json").read_text())
    assert meta["format"] == "mfm-store" and meta["version"] == STORE_VERSION and meta["created_at"]
    run = new_run()
    batch = envs(run, 1, 3)
    await store.events.append(run, 0, batch[:1])
    await store.events.append(run, 1, batch[1:])
    events_file = root / "runs" / run / "events.jsonl"
    assert store.events_path(run) == events_file and store.run_dir(run) == events_file.parent
    # one record per line: kind, commit mark, length, xxh3-64, then the wire-form envelope byte for byte
    assert events_file.read_bytes() == (
        framing.record(framing.EVENT_RECORD, True, encode_envelope(batch[0]))
        + framing.record(framing.EVENT_RECORD, False, encode_envelope(batch[1]))
        + framing.record(framing.EVENT_RECORD, True, encode_envelope(batch[2]))
    )
    head = events_file.read_bytes().split(b"\n")[0]
    assert head.startswith(b"E. %d " % len(encode_envelope(batch[0]))) and head.endswith(encode_envelope(batch[0]))
    assert (root / "changes.log").read_text() == f"{run} 1\n{run} 3\n"
    aid = await store.artifacts.put(ArtifactKind.other("report"), b"bytes")
    assert (root / "artifacts" / aid[:2] / aid).read_bytes() == b"bytes"
    assert json.loads((root / "artifacts" / aid[:2] / f"{aid}.kind").read_text()) == {"Other": "report"}
    assert store.changes_path == root / "changes.log"


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
async def test_dirs_are_0700_and_files_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        root = tmp_path / "store"
        store = FsStore(root)
        run = new_run()
        await store.events.append(run, 0, [env(run, 1)])
        await store.artifacts.put(ArtifactKind.OUTPUT, b"x")
        await store.events.request_cancel(run, "stop")
        store.run_dir(new_run(), create=True)
    finally:
        os.umask(old)
    paths = [root, *root.rglob("*")]
    assert len(paths) > 10
    for p in paths:
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


# -- opening a store ------------------------------------------------------------------------------------------------


def test_store_is_created_on_first_use_with_missing_parents(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "store"
    FsStore(root)
    assert (root / "store.json").is_file() and (root / "runs").is_dir() and (root / "artifacts").is_dir()
    FsStore(root)  # reopening is fine


def test_empty_existing_directory_becomes_a_store(tmp_path: Path) -> None:
    FsStore(tmp_path)
    assert (tmp_path / "store.json").is_file()


@pytest.mark.parametrize(
    "meta",
    [
        {"format": "mfm-store", "version": STORE_VERSION + 1, "created_at": "x"},
        {"format": "someone-else", "version": 1},
        [1, 2],
    ],
)
def test_unknown_store_version_is_refused(root: Path, meta: Any) -> None:
    FsStore(root)
    (root / "store.json").write_text(json.dumps(meta))
    with pytest.raises(StorageError) as info:
        FsStore(root)
    assert info.value.code == "store_version_unknown"
    assert str(root) in info.value.message


def test_unreadable_store_metadata_is_refused(root: Path) -> None:
    FsStore(root)
    (root / "store.json").write_text("{not json")
    with pytest.raises(StorageError) as info:
        FsStore(root)
    assert info.value.code == "store_version_unknown"


def test_store_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("hello")
    with pytest.raises(StorageError) as info:
        FsStore(path)
    assert info.value.code == "store_not_a_directory"
    assert path.read_text() == "hello"


def test_non_empty_directory_without_store_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StorageError) as info:
        FsStore(tmp_path)
    assert info.value.code == "store_not_a_store"
    assert "notes.txt" in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _as_nobody(path: Path, *, create: bool = True) -> str:
    """Open a store in a forked child that dropped root; return the error code, or what it could do with it."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            store = FsStore(path, create=create)
            runs = asyncio.run(store.events.list_runs())
            code = f"ok writable={store.writable} runs={len(runs)}"
        except StorageError as exc:
            code = exc.code
        except BaseException as exc:
            code = f"unexpected {exc!r}"
        os.write(write_fd, code.encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as f:
        return f.read().decode()


def test_store_access_follows_owner_and_modes() -> None:
    """As ssh treats ~/.ssh: a store owned by another user is refused; a store of one's own that is read-only opens
    (reading never needs write access) and says it is not writable; creating one where one may not write is
    ``store_not_writable``."""
    run = RunId("00000000-0000-4000-8000-0000000000aa")
    if os.geteuid() != 0:  # one user only: "/" belongs to root; a read-only store of our own
        with pytest.raises(StorageError) as info:
            FsStore("/", create=False)
        assert info.value.code == "store_foreign_owner"
        base = Path(tempfile.mkdtemp(prefix="mfm-ro-"))
        try:
            mine = base / "mine"
            asyncio.run(FsStore(mine).events.append(run, 0, [env(run, 1)]))
            for p in [*mine.rglob("*"), mine, base]:
                p.chmod(0o500 if p.is_dir() else 0o400)
            ro = FsStore(mine, create=False)
            assert not ro.writable and asyncio.run(ro.events.list_runs()) == [run]
            with pytest.raises(StorageError) as info:
                FsStore(base / "new")
            assert info.value.code == "store_not_writable"
        finally:
            for p in [base, *base.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o700)
            shutil.rmtree(base)
        return
    base = Path(tempfile.mkdtemp(prefix="mfm-ro-", dir="/tmp"))
    try:
        base.chmod(0o755)
        theirs = base / "theirs"
        asyncio.run(FsStore(theirs).events.append(run, 0, [env(run, 1)]))
        theirs.chmod(0o755)
        assert _as_nobody(theirs) == "store_foreign_owner"
        assert _as_nobody(theirs, create=False) == "store_foreign_owner"
        assert _as_nobody(base / "new") == "store_not_writable"  # base is root's, 0755
        mine = base / "mine"
        shutil.copytree(theirs, mine)
        for p in [mine, *mine.rglob("*")]:
            os.chown(p, 65534, 65534, follow_symlinks=False)
            p.chmod(0o500 if p.is_dir() else 0o400)
        before = sorted(str(p) for p in mine.rglob("*"))
        assert _as_nobody(mine, create=False) == "ok writable=False runs=1"
        assert _as_nobody(mine) == "ok writable=False runs=1"  # it exists: nothing to create
        assert sorted(str(p) for p in mine.rglob("*")) == before
    finally:
        shutil.rmtree(base)


def test_reading_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    for path in (tmp_path / "typo", tmp_path):
        before = sorted(tmp_path.rglob("*"))
        with pytest.raises(StorageError) as info:
            FsStore(path, create=False)
        assert info.value.code == "store_not_found" and str(path) in info.value.message
        assert sorted(tmp_path.rglob("*")) == before


async def test_reading_an_existing_store_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root).mkdir(mode=0o700)
    FsStore(root)
    shutil.rmtree(root / "runs")
    shutil.rmtree(root / "artifacts")
    before = sorted(root.rglob("*"))
    store = FsStore(root, create=False)
    assert await store.events.list_runs() == []
    assert await store.events.head_seq(new_run()) == 0
    assert await store.events.read_range(new_run(), 1) == []
    assert await store.events.cancel_request(new_run()) is None
    assert await store.events.changes_since(0) is not None
    assert not await store.artifacts.exists(artifact_id_for_bytes(b"x"))
    assert sorted(root.rglob("*")) == before
    run = new_run()
    assert await store.events.append(run, 0, [env(run, 1)]) == 1  # and it can still write when asked to


# -- ids, symlinks, leftovers ------------------------------------------------------------------------------------


async def test_invalid_ids_never_touch_the_filesystem(store: FsStore, root: Path) -> None:
    before = tree(root)
    for bad in ("../../escape", "..", "", "a" * 36, "/etc/passwd", "12345678-1234-1234-1234-12345678901Z"):
        for call in (
            lambda: store.events.head_seq(bad),  # noqa: B023
            lambda: store.events.read_range(bad, 1),  # noqa: B023
            lambda: store.events.append(bad, 0, []),  # noqa: B023
            lambda: store.events.request_cancel(bad),  # noqa: B023
        ):
            with pytest.raises(StorageError):
                await call()
        with pytest.raises(StorageError):
            store.run_dir(bad, create=True)
    for bad_aid in ("../" + "a" * 61, "A" * 64, "a" * 63, "", "a" * 64 + "/x"):
        assert not await store.artifacts.exists(bad_aid)
        assert await store.artifacts.kind_of(ArtifactId("a" * 64)) is None
        assert await store.artifacts.kind_of(bad_aid) is None
        with pytest.raises(StorageError) as info:
            await store.artifacts.get(bad_aid)
        assert info.value.kind is StorageErrorKind.NOT_FOUND
    assert tree(root) == before


async def test_symlink_planted_as_event_file_is_refused(store: FsStore, root: Path, tmp_path: Path) -> None:
    run = new_run()
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(b"")
    store.run_dir(run, create=True)
    store.events_path(run).symlink_to(target)
    for call in (
        lambda: store.events.head_seq(run),
        lambda: store.events.read_range(run, 1),
        lambda: store.events.append(run, 0, [env(run, 1)]),
    ):
        with pytest.raises(StorageError) as info:
            await call()
        assert info.value.code == "store_symlink"
        assert "symlink" in info.value.message and str(store.events_path(run)) in info.value.message
    assert target.read_bytes() == b""


async def test_symlink_planted_as_artifact_is_refused(store: FsStore, root: Path, tmp_path: Path) -> None:
    data = b"artifact bytes"
    aid = artifact_id_for_bytes(data)
    target = tmp_path / "elsewhere"
    target.write_bytes(data)
    (root / "artifacts" / aid[:2]).mkdir()
    (root / "artifacts" / aid[:2] / aid).symlink_to(target)
    assert not await store.artifacts.exists(aid)
    with pytest.raises(StorageError) as info:
        await store.artifacts.get(aid)
    assert info.value.code == "store_symlink" and "symlink" in info.value.message
    with pytest.raises(StorageError):
        await store.artifacts.put(ArtifactKind.OUTPUT, data)
    assert target.read_bytes() == data


async def test_leftover_temp_files_are_ignored_and_harmless(store: FsStore, root: Path) -> None:
    run = new_run()
    await store.events.append(run, 0, [env(run, 1)])
    aid = await store.artifacts.put(ArtifactKind.OUTPUT, b"kept")
    for d in (root, root / "artifacts" / aid[:2], store.run_dir(run), root / "runs"):
        (d / ".tmp-leftover-123-0").write_bytes(b"half written")
    (root / "artifacts" / aid[:2] / f".tmp-{aid[:16]}-1-1").write_bytes(b"half")
    again = FsStore(root)
    assert await again.artifacts.get(aid) == b"kept"
    assert await again.artifacts.put(ArtifactKind.OUTPUT, b"kept") == aid
    assert await again.artifacts.put(ArtifactKind.OUTPUT, b"new") == artifact_id_for_bytes(b"new")
    assert await again.events.list_runs() == [run]
    assert await again.events.append(run, 1, [env(run, 2)]) == 2
    assert (root / ".tmp-leftover-123-0").read_bytes() == b"half written"


# -- artifacts ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "empty"])
async def test_corrupted_artifact_is_reported_by_id_and_never_overwritten(
    store: FsStore, root: Path, damage: str
) -> None:
    data = b'{"a":1,"b":[1,2,3]}'
    aid = await store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, data)
    blob = root / "artifacts" / aid[:2] / aid
    damaged = {
        "flip": bytes([data[0] ^ 1]) + data[1:],
        "truncate": data[:-3],
        "append": data + b"\n",
        "empty": b"",
    }[damage]
    blob.write_bytes(damaged)
    for call in (lambda: store.artifacts.get(aid), lambda: store.artifacts.put(ArtifactKind.OUTPUT, data)):
        with pytest.raises(StorageError) as info:
            await call()
        assert (info.value.kind, info.value.code) == (StorageErrorKind.CORRUPTION, "artifact_corruption")
        assert aid in info.value.message
    assert blob.read_bytes() == damaged  # evidence kept, never overwritten
    assert await store.artifacts.exists(aid)


async def test_kind_file_garbled_by_a_crash_before_the_blob_is_replaced(store: FsStore, root: Path) -> None:
    aid = artifact_id_for_bytes(b"late")
    (root / "artifacts" / aid[:2]).mkdir()
    (root / "artifacts" / aid[:2] / f"{aid}.kind").write_bytes(b'"Manif')  # the process died mid-write
    assert await store.artifacts.put(ArtifactKind.MANIFEST, b"late") == aid
    assert await store.artifacts.kind_of(aid) == ArtifactKind.MANIFEST
    assert await store.artifacts.get(aid) == b"late"


async def test_missing_or_garbled_kind_file_is_unknown(store: FsStore, root: Path) -> None:
    aid = await store.artifacts.put(ArtifactKind.MANIFEST, b"m")
    kind_file = root / "artifacts" / aid[:2] / f"{aid}.kind"
    kind_file.write_text("garbage")
    assert await store.artifacts.kind_of(aid) is None
    kind_file.unlink()
    assert await store.artifacts.kind_of(aid) is None
    assert await store.artifacts.get(aid) == b"m"


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


# -- durability and the FsOps seam -----------------------------------------------------------------------------------


class RecordingOps(FsOps):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fd_paths: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
        fd = super().open(path, flags, mode, dir_fd=dir_fd)
        self.fd_paths[fd] = os.path.basename(path)
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.calls.append(("write", self.fd_paths.get(fd)))
        return super().write(fd, data)

    def fdatasync(self, fd: int) -> None:
        self.calls.append(("fdatasync", self.fd_paths.get(fd)))
        super().fdatasync(fd)

    def fsync_dir(self, path: str, fd: int) -> None:
        self.calls.append(("fsync_dir", os.path.basename(path)))
        super().fsync_dir(path, fd)


async def test_append_is_durable_before_it_returns(root: Path) -> None:
    ops = RecordingOps()
    store = FsStore(root, ops=ops)
    run = new_run()
    ops.calls.clear()
    await store.events.append(run, 0, [env(run, 1)])
    assert ops.calls[:5] == [
        ("fsync_dir", "runs"),  # the run directory was created
        ("fsync_dir", run),  # the event file was created
        ("write", "events.jsonl"),
        ("fdatasync", "events.jsonl"),
        ("write", "changes.log"),  # the hint, after the data is durable
    ]
    assert _summary_writes(ops.calls[5:]) == 1  # the summary cache, after the commit, never synced
    ops.calls.clear()
    await store.events.append(run, 1, envs(run, 2, 4))
    assert ops.calls[:3] == [("write", "events.jsonl"), ("fdatasync", "events.jsonl"), ("write", "changes.log")]
    assert _summary_writes(ops.calls[3:]) <= 1


def _summary_writes(calls: list[tuple[str, str | None]]) -> int:
    """How many of ``calls`` are unsynced writes of the summary cache's temp file (anything else fails)."""
    assert all(op == "write" and (path or "").startswith(".tmp-summary-") for op, path in calls), calls
    return len(calls)


async def test_artifact_put_is_durable_before_it_returns(root: Path) -> None:
    ops = RecordingOps()
    store = FsStore(root, ops=ops)
    ops.calls.clear()
    aid = await store.artifacts.put(ArtifactKind.OUTPUT, b"data")
    assert ops.calls[-3:] == [("write", ops.calls[-3][1]), ("fdatasync", ops.calls[-3][1]), ("fsync_dir", aid[:2])]
    assert ops.calls[-3][1].startswith(".tmp-")


class FaultyOps(FsOps):
    """Fails the n-th call of one method with an errno (optionally after writing part of the data)."""

    def __init__(self) -> None:
        self.fail_on: dict[str, tuple[int, int]] = {}
        self.counts: dict[str, int] = {}
        self.short_writes = False
        self.partial_before_failure = False

    def _maybe_fail(self, name: str) -> None:
        n = self.counts[name] = self.counts.get(name, 0) + 1
        if name in self.fail_on and self.fail_on[name][0] == n:
            raise OSError(self.fail_on[name][1], os.strerror(self.fail_on[name][1]))

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if (
            self.partial_before_failure
            and "write" in self.fail_on
            and self.fail_on["write"][0] == 1 + self.counts.get("write", 0)
        ):
            super().write(fd, bytes(data[: len(data) // 2]))
        self._maybe_fail("write")
        return super().write(fd, data[:1] if self.short_writes else data)

    def fdatasync(self, fd: int) -> None:
        self._maybe_fail("fdatasync")
        super().fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._maybe_fail("ftruncate")
        super().ftruncate(fd, length)

    def link(self, src: str, dst: str, **dir_fds: int | None) -> None:
        self._maybe_fail("link")
        super().link(src, dst, **dir_fds)


async def test_short_writes_are_completed(root: Path) -> None:
    ops = FaultyOps()
    ops.short_writes = True
    store = FsStore(root, ops=ops)
    run = new_run()
    assert await store.events.append(run, 0, envs(run, 1, 3)) == 3
    aid = await store.artifacts.put(ArtifactKind.OUTPUT, b"0123456789" * 10)
    again = FsStore(root)
    assert await again.events.read_range(run, 0) == envs(run, 1, 3)
    assert await again.artifacts.get(aid) == b"0123456789" * 10


@pytest.mark.parametrize(
    ("method", "err", "partial", "truncate_fails"),
    [
        ("write", errno.ENOSPC, False, False),
        ("write", errno.ENOSPC, True, False),
        ("write", errno.EIO, True, True),
        ("fdatasync", errno.EIO, False, False),
    ],
)
async def test_failed_append_reports_the_path_and_leaves_nothing_visible(
    root: Path, method: str, err: int, partial: bool, truncate_fails: bool
) -> None:
    ops = FaultyOps()
    store = FsStore(root, ops=ops)
    run = new_run()
    await store.events.append(run, 0, [env(run, 1)])
    ops.counts.clear()
    ops.fail_on[method] = (1, err)
    ops.partial_before_failure = partial
    if truncate_fails:
        ops.fail_on["ftruncate"] = (1, errno.EIO)
    with pytest.raises(StorageError) as info:
        await store.events.append(run, 1, envs(run, 2, 4))
    assert info.value.code == "event_store_io" and info.value.kind is StorageErrorKind.OTHER
    assert str(store.events_path(run)) in info.value.message
    assert info.value.retryable == (err == errno.ENOSPC)
    reader = FsStore(root)
    assert await reader.events.read_range(run, 0) == [env(run, 1)]
    ops.fail_on.clear()
    assert await store.events.append(run, 1, [env(run, 2)]) == 2
    assert await reader.events.read_range(run, 0) == envs(run, 1, 2)


@pytest.mark.parametrize(("method", "nth"), [("write", 1), ("write", 2), ("fdatasync", 1), ("link", 1)])
async def test_failed_artifact_put_leaves_no_artifact(root: Path, method: str, nth: int) -> None:
    ops = FaultyOps()
    store = FsStore(root, ops=ops)
    ops.counts.clear()
    ops.fail_on[method] = (nth, errno.ENOSPC)
    with pytest.raises(StorageError) as info:
        await store.artifacts.put(ArtifactKind.OUTPUT, b"payload")
    assert info.value.code == "artifact_store_io"
    aid = artifact_id_for_bytes(b"payload")
    assert aid in info.value.message
    assert not await store.artifacts.exists(aid)
    ops.fail_on.clear()
    assert await store.artifacts.put(ArtifactKind.OUTPUT, b"payload") == aid
    assert await FsStore(root).artifacts.get(aid) == b"payload"


async def test_failed_fsync_that_cannot_be_taken_back_leaves_the_batch_whole_or_absent(root: Path) -> None:
    """fdatasync and the rollback truncate both fail: the batch may stay, but only whole, and the stream goes on."""
    ops = FaultyOps()
    store = FsStore(root, ops=ops)
    run = new_run()
    await store.events.append(run, 0, [env(run, 1)])
    ops.counts.clear()
    ops.fail_on.update(fdatasync=(1, errno.EIO), ftruncate=(1, errno.EIO))
    with pytest.raises(StorageError):
        await store.events.append(run, 1, envs(run, 2, 4))
    ops.fail_on.clear()
    got = await FsStore(root).events.read_range(run, 0)
    assert got in ([env(run, 1)], envs(run, 1, 4))
    assert await store.events.append(run, len(got), [env(run, len(got) + 1)]) == len(got) + 1


async def test_append_after_the_run_folder_was_removed_and_recreated(root: Path) -> None:
    store = FsStore(root)
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 2))
    shutil.rmtree(store.run_dir(run))  # the cached fds now point at unlinked files
    assert await store.events.head_seq(run) == 0
    assert await store.events.append(run, 0, [env(run, 1)]) == 1
    assert await FsStore(root).events.read_range(run, 0) == [env(run, 1)]


async def test_many_runs_with_few_open_files(root: Path) -> None:
    store = FsStore(root, max_open_runs=2)
    runs = [new_run() for _ in range(6)]
    for round_ in range(2):
        for run in runs:
            await store.events.append(run, round_, [domain(run, round_ + 1)])
    assert len(store._core.writers) == 2
    assert sorted(await store.events.list_runs()) == sorted(runs)
    for run in runs:
        assert await store.events.head_seq(run) == 2


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
