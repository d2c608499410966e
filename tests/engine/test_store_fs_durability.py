"""The filesystem store's durability: what is synced before a call returns, and failures injected through the FsOps
seam."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.errors import StorageError, StorageErrorKind
from engine.hashing import artifact_id_for_bytes
from engine.stores.fs import FsOps, FsStore
from tests.engine.store_contract import domain, env, envs, new_run


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


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
