"""The filesystem store: the shared contract suite, its layout, opening a store, ids, symlinks, leftovers and
artifacts: what only a filesystem backend must prove.

Events (reads, torn tails, corruption, the journal) are in test_store_fs_events.py, durability and the FsOps seam
in test_store_fs_durability.py, crash and multi-process cases in test_store_fs_crash.py.
"""

from __future__ import annotations

import asyncio
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
from engine.stores.fs import STORE_VERSION, FsStore, framing
from tests.engine.store_contract import StoreContract, env, envs, new_run


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
