"""Damage in a run log (issue 12, "Damage handling"): only an incomplete LAST record with nothing valid after it is a
crash leftover; damage followed by a valid record is corruption. For each case: what still reads, the code an append
gets, that nothing is moved aside or truncated, and that a resume runs no completed state again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.doctor import check_store, repair_store
from engine.engine import RunPhase
from engine.errors import MfmError, StorageError, StorageErrorKind
from engine.events import encode_envelope
from engine.runtime import Engine, Failpoints
from engine.stores._base import Blob
from engine.stores.fs import FsOps, FsStore, framing
from engine.testing import (
    FakeClock,
    FakeSleeper,
    WriteKey,
    base_config,
    entered,
    fixed_run_ids,
    make_plan,
    read_events,
    start_plan,
)
from tests.engine.store_contract import env, envs, new_run


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _flip(line: bytes, at: int) -> bytes:
    return line[:at] + bytes([line[at] ^ 0x01]) + line[at + 1 :]


async def _five_commits(root: Path) -> tuple[FsStore, Any, list[Any]]:
    """A run log of 5 single-event commits, the third carrying a blob record first."""
    store = FsStore(root)
    run = new_run()
    batch = envs(run, 1, 5)
    for i, e in enumerate(batch):
        blobs = [Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"n":3}')] if i == 2 else []
        await store.events.commit(run, i, [e], blobs)
    return store, run, batch


def _assert_corrupt(err: BaseException, code: str) -> None:
    assert isinstance(err, StorageError)
    assert (err.kind, err.code) == (StorageErrorKind.CORRUPTION, "run_log_corrupt")
    details = err.info.details
    assert isinstance(details, dict) and details["damage"] == code


# line index → how it is damaged → (the damage code, events that still read)
CASES: dict[str, tuple[Callable[[list[bytes]], list[bytes]], str, int]] = {
    # a flipped byte inside the envelope JSON of event 2 (line 1): its checksum no longer matches
    "flipped_byte_in_event": (lambda ls: [ls[0], _flip(ls[1], len(ls[1]) - 5), *ls[2:]], "record_checksum_mismatch", 1),
    # a flipped byte in the blob record (line 2, before event 3)
    "flipped_byte_in_blob": (
        lambda ls: [*ls[:2], _flip(ls[2], len(ls[2]) - 2), *ls[3:]],
        "record_checksum_mismatch",
        2,
    ),
    # a garbage line between event 2 and the blob record
    "garbage_line": (lambda ls: [*ls[:2], b"#!garbage here", *ls[2:]], "record_malformed", 2),
    # event 2's line twice: its checksum is valid, its seq is not the next one
    "duplicated_line": (lambda ls: [ls[0], ls[1], ls[1], *ls[2:]], "event_seq_gap", 2),
    # a record with correct framing and checksum whose body is not JSON
    "undecodable_with_valid_framing": (
        lambda ls: [ls[0], framing.record(framing.EVENT_RECORD, True, b'{"run_id": nope')[:-1], *ls[1:]],
        "event_line_undecodable",
        1,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_damage_followed_by_valid_records_is_corruption(tmp_path: Path, case: str) -> None:
    damage, code, readable = CASES[case]
    root = tmp_path / "store"
    _, run, batch = await _five_commits(root)
    path = FsStore(root).events_path(run)
    lines = _lines(path)
    assert len(lines) == 6  # 5 events + 1 blob record
    _write(path, damage(lines))
    before = path.read_bytes()

    reader = FsStore(root)
    assert await reader.events.head_seq(run) == readable
    got = await reader.events.read_range(run, 1)
    assert got == batch[:readable]  # what precedes the damage still reads...
    _assert_corrupt(got.damage, code)  # type: ignore[attr-defined]  # ...and the read says it stopped
    assert await reader.events.read_range(run, 1, readable) == batch[:readable]  # a range before it: plain
    assert not hasattr(await reader.events.read_range(run, 1, readable), "damage")
    after = await reader.events.read_range(run, readable + 1)  # a follower reading on from the head: told again
    assert after == [] and after.damage.code == "run_log_corrupt"  # type: ignore[attr-defined]
    err = reader.events.damage(run)
    assert err is not None and err.code == "run_log_corrupt"
    for writer in (reader, FsStore(root)):  # appends refused, by this store object and a fresh one
        with pytest.raises(StorageError) as info:
            await writer.events.append(run, readable, [env(run, readable + 1)])
        _assert_corrupt(info.value, code)
    # nothing moved aside or truncated
    assert path.read_bytes() == before
    assert not list(reader.run_dir(run).glob("events.jsonl.torn-*"))


async def test_other_runs_read_and_write_normally_next_to_a_damaged_one(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store, run, _ = await _five_commits(root)
    path = store.events_path(run)
    lines = _lines(path)
    _write(path, [lines[0], _flip(lines[1], 40), *lines[2:]])
    other = new_run()
    assert await store.events.append(other, 0, envs(other, 1, 3)) == 3
    assert sorted(await store.events.list_runs()) == sorted([run, other])
    assert await FsStore(root).events.read_range(other, 1) == envs(other, 1, 3)
    assert store.events.damage(other) is None


@pytest.mark.parametrize("last_records", [1, 3])
async def test_torn_last_record_at_every_byte_offset_is_a_crash_leftover(tmp_path: Path, last_records: int) -> None:
    """Any prefix of the last commit (here with a blob record when it has 3 records): the committed events read,
    no damage is reported, and the next append quarantines the tail and lands after the committed prefix."""
    root = tmp_path / "store"
    store = FsStore(root)
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 2))
    path = store.events_path(run)
    good = path.read_bytes()
    blobs = [Blob.of(ArtifactKind.OUTPUT, b"binary\n\x00\xff")] if last_records == 3 else []
    await store.events.commit(run, 2, envs(run, 3, 2 + last_records - len(blobs)), blobs)
    full = path.read_bytes()
    for cut in range(len(good), len(full)):
        path.write_bytes(full[:cut])
        for p in store.run_dir(run).glob("events.jsonl.torn-*"):
            p.unlink()
        reader = FsStore(root)
        assert await reader.events.head_seq(run) == 2, cut
        got = await reader.events.read_range(run, 1)
        assert got == envs(run, 1, 2) and not hasattr(got, "damage"), cut
        assert reader.events.damage(run) is None, cut
        assert path.read_bytes() == full[:cut]  # readers never repair
        assert await reader.events.append(run, 2, [env(run, 3)]) == 3, cut
        assert path.read_bytes() == good + framing.record(framing.EVENT_RECORD, True, encode_envelope(env(run, 3)))
        if cut > len(good):
            (torn,) = reader.run_dir(run).glob("events.jsonl.torn-*")
            assert torn.read_bytes() == full[len(good) : cut]


async def test_damaged_last_record_with_nothing_valid_after_is_a_torn_tail(tmp_path: Path) -> None:
    """A complete last line whose checksum fails and nothing valid after it: a crash leftover (quarantined by the
    next append), not corruption."""
    root = tmp_path / "store"
    store = FsStore(root)
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 2))
    path = store.events_path(run)
    lines = _lines(path)
    _write(path, [lines[0], _flip(lines[1], 30)])
    reader = FsStore(root)
    assert reader.events.damage(run) is None
    assert await reader.events.read_range(run, 1) == []  # the commit of events 1-2 lost its commit mark
    assert await reader.events.append(run, 0, [env(run, 1)]) == 1


# -- blobs: a missing or bad copy is rebuilt from the run log --------------------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "flipped", "empty"])
async def test_bad_artifact_copy_is_rebuilt_from_the_run_log(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "store"
    store = FsStore(root)
    run = new_run()
    data = b'{"context":[1,2,3]}'
    blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, data)
    await store.events.commit(run, 0, [env(run, 1)], [blob])
    copy = root / framing.artifact_file(blob.artifact_id)
    assert not copy.exists()  # the commit writes no copy: the first read that needs one does
    assert await store.artifacts.get(blob.artifact_id) == data
    assert copy.read_bytes() == data
    if damage == "missing":
        copy.unlink()
    else:
        copy.write_bytes(b"" if damage == "empty" else _flip(data, 3))
    fresh = FsStore(root)  # knows nothing yet: finds the blob record by scanning the run logs
    assert await fresh.artifacts.exists(blob.artifact_id)
    assert copy.read_bytes() == data
    copy.unlink()
    assert await fresh.artifacts.get(blob.artifact_id) == data
    assert copy.read_bytes() == data


async def test_flipped_byte_in_a_blob_record_and_its_copy_is_reported(tmp_path: Path) -> None:
    """Both the copy and the log's blob record damaged: ``artifact_corruption`` (exit 6), never wrong bytes."""
    root = tmp_path / "store"
    store = FsStore(root)
    run = new_run()
    data = b'{"k":"v"}'
    blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, data)
    await store.events.commit(run, 0, [env(run, 1)], [blob])
    await store.events.append(run, 1, [env(run, 2)])
    path = store.events_path(run)
    lines = _lines(path)
    _write(path, [_flip(lines[0], len(lines[0]) - 3), *lines[1:]])
    copy = root / framing.artifact_file(blob.artifact_id)
    copy.parent.mkdir(mode=0o700, exist_ok=True)  # the commit wrote no copy: plant a bad one
    copy.write_bytes(b'{"k":"w"}')
    fresh = FsStore(root)
    with pytest.raises(StorageError) as info:
        await fresh.artifacts.get(blob.artifact_id)
    assert info.value.code == "artifact_corruption"
    assert fresh.events.damage(run) is not None  # and the run log says it is damaged


async def test_commit_writes_blobs_and_events_in_one_write_and_one_fdatasync(tmp_path: Path) -> None:
    calls: list[str] = []

    class Counting(FsOps):
        def write(self, fd: int, data: Any) -> int:
            calls.append("write")
            return super().write(fd, data)

        def fdatasync(self, fd: int) -> None:
            calls.append("fdatasync")
            super().fdatasync(fd)

        def fsync(self, fd: int) -> None:
            calls.append("fsync")
            super().fsync(fd)

    store = FsStore(tmp_path / "store", ops=Counting())
    run = new_run()
    await store.events.append(run, 0, [env(run, 1)])  # creates the file (and syncs its folder)
    calls.clear()
    blobs = [Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"a":%d}' % i) for i in range(3)]
    assert await store.events.commit(run, 1, envs(run, 2, 3), blobs) == 3
    assert calls.count("fdatasync") == 1 and calls.count("fsync") == 0
    log_writes = calls.index("fdatasync")
    assert calls[:log_writes] == ["write"]  # one write of the whole commit, then its one fdatasync
    for b in blobs:
        assert await store.artifacts.get(b.artifact_id) == b.data
    records = _lines(store.events_path(run))
    assert [r[:2] for r in records] == [b"E.", b"B+", b"B+", b"B+", b"E+", b"E."]


# -- the engine on a damaged run log: resume runs nothing again ------------------------------------------------------


def _engine(plan: Any, **kw: Any) -> Engine:
    return Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids(), **kw)


async def test_resume_of_a_damaged_run_is_refused_and_runs_no_state_again(tmp_path: Path) -> None:
    plan = make_plan(
        [("s1", WriteKey("a", 1)), ("s2", WriteKey("b", 2)), ("s3", WriteKey("c", 3))], [("s1", "s2"), ("s2", "s3")]
    )
    root = tmp_path / "store"
    store = FsStore(root)
    fp = Failpoints.stop_after_handler("machine.main.s3")
    first = await start_plan(_engine(plan, failpoints=fp), store.stores, plan, base_config())
    assert first.phase is RunPhase.RUNNING
    path = store.events_path(first.run_id)
    events_before = await read_events(store.stores, first.run_id)
    lines = _lines(path)
    event_lines = [i for i, ln in enumerate(lines) if ln.startswith(b"E")]
    k = event_lines[2]  # damage the third event: the ones after it are valid
    lines[k] = _flip(lines[k], len(lines[k]) - 4)
    _write(path, lines)
    before = path.read_bytes()
    with pytest.raises(MfmError) as info:
        await _engine(plan).resume(FsStore(root).stores, first.run_id)
    assert "run_log_corrupt" in (info.value.code, str(info.value))
    assert path.read_bytes() == before  # nothing appended, nothing moved aside
    assert not list(store.run_dir(first.run_id).glob("events.jsonl.torn-*"))
    assert len(events_before) > 3


async def test_resume_after_a_torn_tail_runs_no_completed_state_again(tmp_path: Path) -> None:
    plan = make_plan(
        [("s1", WriteKey("a", 1)), ("s2", WriteKey("b", 2)), ("s3", WriteKey("c", 3))], [("s1", "s2"), ("s2", "s3")]
    )
    root = tmp_path / "store"
    store = FsStore(root)
    fp = Failpoints.stop_after_handler("machine.main.s3")
    first = await start_plan(_engine(plan, failpoints=fp), store.stores, plan, base_config())
    path = store.events_path(first.run_id)
    with open(path, "ab") as f:
        f.write(framing.record(framing.EVENT_RECORD, False, b'{"run_id":"x"}')[:-9])  # a torn last record
    res = await _engine(plan).resume(FsStore(root).stores, first.run_id)
    assert res.phase is RunPhase.COMPLETED
    envs_after = await read_events(FsStore(root).stores, first.run_id)
    assert entered(envs_after, "s1") == [0] and entered(envs_after, "s2") == [0]
    assert [e.seq for e in envs_after] == list(range(1, len(envs_after) + 1))


# -- what the user sees ----------------------------------------------------------------------------------------------


def _mfm(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MFM_STORE"}
    return subprocess.run(
        [sys.executable, "-m", "mfm_tui", "--store", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("case", ["flipped_byte_in_event", "duplicated_line", "undecodable_with_valid_framing"])
async def test_cli_prints_what_precedes_the_damage_then_exits_6(tmp_path: Path, case: str) -> None:
    damage, code, readable = CASES[case]
    root = tmp_path / "store"
    _, run, _ = await _five_commits(root)
    other = new_run()
    await FsStore(root).events.append(other, 0, envs(other, 1, 2))
    path = FsStore(root).events_path(run)
    _write(path, damage(_lines(path)))
    before = path.read_bytes()

    res = _mfm(root, "events", str(run), "--json")
    assert res.returncode == 6, res.stderr
    assert [json.loads(line)["seq"] for line in res.stdout.splitlines()] == list(range(1, readable + 1))
    (err,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert err.startswith("error[run_log_corrupt]: ") and "Traceback" not in res.stderr
    assert code in err

    res = _mfm(root, "runs", "--json")
    assert res.returncode == 6, res.stderr
    statuses = {r["run_id"]: r["status"] for r in json.loads(res.stdout)}
    assert statuses[str(run)] == "damaged" and statuses[str(other)] != "damaged"
    assert res.stderr.startswith(f"error[run_log_corrupt]: run {run}: ")

    res = _mfm(root, "runs")
    assert res.returncode == 6
    (row,) = [ln for ln in res.stdout.splitlines() if ln.startswith(str(run)[:8])]
    assert "damaged" in row

    res = _mfm(root, "doctor", "--json")
    assert res.returncode == 1
    assert path.read_bytes() == before  # unchanged by all of that


async def test_doctor_reports_a_bad_blob_copy_and_repair_rebuilds_it_from_the_log(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsStore(root)
    run = new_run()
    data = b'{"snapshot":true}'
    blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, data)
    await store.events.commit(run, 0, [env(run, 1)], [blob])
    copy = root / framing.artifact_file(blob.artifact_id)
    assert not copy.exists()
    assert not [c for c in check_store(root).codes() if c.startswith("artifact_copy")]  # no copy yet is normal
    assert await store.artifacts.get(blob.artifact_id) == data
    copy.write_bytes(_flip(data, 2))
    report = check_store(root)
    (finding,) = [f for f in report.findings if f.code == "artifact_copy_bad"]
    assert finding.severity == "warning" and finding.repairable
    assert "artifact_hash_mismatch" not in report.codes()
    moved = repair_store(root, report)
    assert [m.what for m in moved if m.what == "artifact_copy_rebuilt"] == ["artifact_copy_rebuilt"]
    assert copy.read_bytes() == data
    (kept,) = (root / "quarantine").rglob(str(blob.artifact_id))  # the damaged copy is kept as evidence
    assert kept.read_bytes() == _flip(data, 2)
    assert "artifact_copy_bad" not in check_store(root).codes()


async def test_the_tui_watcher_shows_a_damaged_run_as_a_load_error_and_keeps_it(tmp_path: Path) -> None:
    from mfm_tui.store_watcher import StoreWatcher  # the TUI's runs list reads the store through it

    root = tmp_path / "store"
    _, run, _ = await _five_commits(root)
    other = new_run()
    await FsStore(root).events.append(other, 0, envs(other, 1, 2))
    path = FsStore(root).events_path(run)
    lines = _lines(path)
    _write(path, [lines[0], _flip(lines[1], 50), *lines[2:]])
    watcher = StoreWatcher(FsStore(root).stores, use_watchfiles=False)
    async for _ in watcher.load_batches():
        pass
    for _ in range(2):  # a later poll re-reads the runs in error: the damage is still shown
        await watcher.poll(force_side=True)
        model = watcher.models[run]
        assert model.load_error is not None and model.load_error[0] == "run_log_corrupt"
        assert model.last_seq == 1
        assert watcher.models[other].load_error is None and watcher.models[other].last_seq == 2


async def test_doctor_does_not_offer_resume_for_a_run_whose_log_is_damaged(tmp_path: Path) -> None:
    """A worker-less run whose log is damaged in the middle: doctor reports the damage, and no longer adds the
    'worker lost; mfm resume continues it' hint (resume refuses the run with run_log_corrupt)."""
    root = tmp_path / "store"
    store = FsStore(root)
    run = new_run()
    for i, e in enumerate(envs(run, 1, 4)):  # RunStarted .. StateFailed: unfinished
        await store.events.commit(run, i, [e], [])
    lease = root / framing.lease_file(run)
    lease.write_bytes(b"{}")  # a lease whose lock nobody holds: the worker is gone
    lease.chmod(0o600)
    assert "stale_lease" in [f.code for f in check_store(root).findings]  # intact: the hint is right
    path = store.events_path(run)
    lines = _lines(path)
    _write(path, [lines[0], _flip(lines[1], len(lines[1]) - 5), *lines[2:]])
    codes = [f.code for f in check_store(root).findings]
    assert "record_checksum_mismatch" in codes and "stale_lease" not in codes
