"""The filesystem store's hot path (issue 12): a durable state is ONE write and ONE fdatasync of its run log; no other
file is created, renamed, linked or synced for it. A blob committed with a run's events gets its copy under
``artifacts/`` only when a read first needs one, so every reader (another store object, another process, after a
kill -9) finds every committed blob from the run logs: ``get``, ``exists``, ``kind_of``, ``ids_with_prefix``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import engine.stores.fs._summary as fs_summary
from engine._kinds import ArtifactKind
from engine.engine import RunPhase
from engine.events import DomainEvent, EventEnvelope
from engine.ids import ArtifactId
from engine.runtime import Engine
from engine.stores._base import Blob
from engine.stores.fs import FsOps, FsStore, framing
from engine.testing import FakeClock, FakeSleeper, WriteKey, base_config, fixed_run_ids, make_plan, start_plan
from tests.engine.store_contract import env, new_run

ROOT = Path(__file__).resolve().parents[2]


class CountingOps(FsOps):
    """Counts what the store does to the filesystem, by file name (fds are mapped to the names they were opened as)."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.ops: Counter[str] = Counter()

    def open(self, path: str, flags: int, mode: int = framing.FILE_MODE, *, dir_fd: int | None = None) -> int:
        fd = super().open(path, flags, mode, dir_fd=dir_fd)
        name = _kind(path)
        self.names[fd] = name
        if flags & os.O_CREAT:
            self.ops[f"create {name}"] += 1
        return fd

    def write(self, fd: int, data: Any) -> int:
        self.ops[f"write {self.names.get(fd, '?')}"] += 1
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self.ops["fsync"] += 1
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.ops[f"fdatasync {self.names.get(fd, '?')}"] += 1
        super().fdatasync(fd)

    def rename(self, src: str, dst: str, **kw: Any) -> None:
        self.ops[f"rename {_kind(dst)}"] += 1
        super().rename(src, dst, **kw)

    def link(self, src: str, dst: str, **kw: Any) -> None:
        self.ops[f"link {_kind(dst)}"] += 1
        super().link(src, dst, **kw)

    def mkdir(self, path: str, mode: int = framing.DIR_MODE, *, dir_fd: int | None = None) -> bool:
        made = super().mkdir(path, mode, dir_fd=dir_fd)
        self.ops["mkdir"] += made
        return made


def _kind(path: str) -> str:
    name = path.rpartition("/")[2]
    if framing.ARTIFACT_NAME.fullmatch(name):
        return "artifact"
    if name.startswith(framing.TEMP_PREFIX):
        return "temp"
    return name


async def _run_states(root: Path, n: int) -> Counter[str]:
    """The filesystem operations of one sequential run of ``n`` states, each writing a new key (so each state makes
    a new context snapshot durable with its events)."""
    ops = CountingOps()
    store = FsStore(root, ops=ops)
    plan = make_plan(
        [(f"s{i}", WriteKey(f"k{i}", i)) for i in range(n)], [(f"s{i}", f"s{i + 1}") for i in range(n - 1)]
    )
    engine = Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    result = await start_plan(engine, store.stores, plan, base_config(), {"seed": "x" * 200})
    assert result.phase is RunPhase.COMPLETED
    store.close()
    return ops.ops


async def test_a_durable_state_is_one_write_and_one_fdatasync_of_its_run_log_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The summary cache is rewritten when the run ends (and every WRITE_EVERY_SECONDS of appends: not per state);
    # the clock must not decide what this test counts.
    monkeypatch.setattr(fs_summary, "WRITE_EVERY_SECONDS", 1e9)
    short = await _run_states(tmp_path / "short", 4)
    long = await _run_states(tmp_path / "long", 24)
    per_20_states = {k: long[k] - short[k] for k in long.keys() | short.keys() if long[k] != short[k]}
    # 20 more states: 20 more commits of the run log (one write, one fdatasync each) and 20 more lines of the change
    # journal (a hint, never synced); no copy, kind file, temp file, rename, link, folder or fsync.
    assert per_20_states == {
        "write events.jsonl": 20,
        "fdatasync events.jsonl": 20,
        "write changes.log": 20,
    }
    # What a run (and a new store) does once, whatever its length: its folders and log, the manifest (a durable file:
    # it is written before the run has a log), the summary cache when the run ends.
    assert long["link artifact"] == short["link artifact"] == 1


async def _committed_blob(root: Path) -> tuple[Blob, Path]:
    store = FsStore(root)
    run = new_run()
    blob = Blob.of(ArtifactKind.other("report"), b'{"payload":"' + b"p" * 300 + b'"}')
    await store.events.commit(run, 0, [env(run, 1)], [blob])
    store.close()
    copy = root / framing.artifact_file(blob.artifact_id)
    assert not copy.exists() and not copy.with_name(copy.name + framing.KIND_SUFFIX).exists()
    return blob, copy


async def _assert_found_by_every_reader(root: Path, blob: Blob, copy: Path) -> None:
    aid = blob.artifact_id
    fresh = FsStore(root, create=False)  # knows nothing yet: another process's view
    assert await fresh.artifacts.kind_of(aid) == ArtifactKind.other("report")
    assert await fresh.artifacts.ids_with_prefix(aid[:6], 10) == [aid]
    assert await fresh.artifacts.ids_with_prefix(aid, 10) == [aid]
    assert await FsStore(root, create=False).artifacts.exists(aid)
    assert await FsStore(root, create=False).artifacts.get(aid) == bytes(blob.data)
    assert copy.read_bytes() == bytes(blob.data)  # the first read wrote the copy
    assert await FsStore(root, create=False).artifacts.get(aid) == bytes(blob.data)  # and the next uses it


async def test_a_committed_blob_without_a_copy_is_found_by_a_fresh_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    blob, copy = await _committed_blob(root)
    other = ArtifactId("0" * 64)
    assert not await FsStore(root).artifacts.exists(other)
    assert await FsStore(root).artifacts.kind_of(other) is None
    await _assert_found_by_every_reader(root, blob, copy)


async def test_a_committed_blob_without_a_copy_is_found_after_a_kill_9(tmp_path: Path) -> None:
    """A writer killed right after its commit returned (before anything else happened): the blob reads, from the
    log; a copy left half-written by a killed reader is replaced with the right bytes."""
    root = tmp_path / "store"
    blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"k":"' + b"v" * 500 + b'"}')
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from engine._kinds import ArtifactKind
        from engine.stores._base import Blob
        from engine.stores.fs import FsStore
        from tests.engine.store_contract import env, new_run
        store = FsStore({str(root)!r})
        run = new_run()
        blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, {bytes(blob.data)!r})
        asyncio.run(store.events.commit(run, 0, [env(run, 1)], [blob]))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False
    )
    assert proc.returncode == -9
    aid = blob.artifact_id
    copy = root / framing.artifact_file(aid)
    assert not copy.exists()
    fresh = FsStore(root, create=False)
    assert await fresh.artifacts.kind_of(aid) == ArtifactKind.CONTEXT_SNAPSHOT
    assert await fresh.artifacts.ids_with_prefix(aid[:3], 5) == [aid]
    copy.parent.mkdir(mode=0o700, exist_ok=True)
    copy.write_bytes(bytes(blob.data)[:100])  # a copy torn by a crash of the process writing it
    assert await FsStore(root, create=False).artifacts.exists(aid)
    assert await FsStore(root, create=False).artifacts.get(aid) == bytes(blob.data)
    assert copy.read_bytes() == bytes(blob.data)


async def test_an_uncommitted_blob_record_is_found_by_no_reader(tmp_path: Path) -> None:
    """A blob record whose commit never got its commit mark (a torn commit) is not a committed blob: no reader
    returns it, even though its bytes (and a valid checksum) are in the file."""
    root = tmp_path / "store"
    store = FsStore(root)
    run = new_run()
    await store.events.append(run, 0, [env(run, 1)])
    blob = Blob.of(ArtifactKind.OUTPUT, b"torn")
    data, _, _ = framing.frame_commit([framing.encode_line(env(run, 2))], [(blob.artifact_id, blob.kind, b"torn")])
    with open(store.events_path(run), "ab") as fh:
        fh.write(data[: data.index(b"\n") + 1])  # the blob record, without the event that carries the mark
    fresh = FsStore(root, create=False)
    assert not await fresh.artifacts.exists(blob.artifact_id)
    assert await fresh.artifacts.kind_of(blob.artifact_id) is None
    assert await fresh.artifacts.ids_with_prefix(blob.artifact_id[:8], 5) == []


async def test_the_appenders_summary_folds_its_appends_in_one_batch_when_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary cache is not folded per commit: the appender keeps the new envelopes and folds them in one batch
    when the summary is read (or the file is due), so a read right after any commit is exact."""
    monkeypatch.setattr(fs_summary, "WRITE_EVERY_SECONDS", 1e9)
    folds: list[int] = []
    real_apply = fs_summary.apply

    def counting_apply(summary: Any, envelopes: Any) -> Any:
        envelopes = list(envelopes)
        folds.append(len(envelopes))
        return real_apply(summary, envelopes)

    monkeypatch.setattr(fs_summary, "apply", counting_apply)
    store = FsStore(tmp_path / "store")
    run = new_run()

    def note(seq: int) -> EventEnvelope:  # a run that does not finish (a finished run's summary is written at once)
        return EventEnvelope(run_id=run, seq=seq, ts_millis=seq, event=DomainEvent(name="note", payload={"n": seq}))

    for seq in range(1, 11):
        await store.events.append(run, seq - 1, [note(seq)])
    assert folds == []  # ten commits, no fold yet
    summary = await store.events.run_summary(run)
    assert summary is not None and summary.head == 10 and folds == [10]
    await store.events.append(run, 10, [note(11)])
    summary = await store.events.run_summary(run)
    assert summary is not None and summary.head == 11 and folds == [10, 1]
    fresh = await FsStore(tmp_path / "store", create=False).events.run_summary(run)  # another process's view
    assert fresh is not None and fresh.head == 11
