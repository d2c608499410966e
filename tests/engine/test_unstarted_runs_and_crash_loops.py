"""Runs whose worker died before ``RunStarted`` (listed, resumable, discardable; the doctor cleans failed starts) and
crash loops (consecutive orphan recoveries of one state, counted as a pure function of the stream)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
from pathlib import Path

import pytest

from engine.doctor import check_store, repair_store
from engine.errors import StateError
from engine.events import (
    DomainEvent,
    Event,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.ids import ArtifactId, OpId, RunId, StateId
from engine.operations import load_registry, prepare_run
from engine.stores import MemoryStore
from engine.stores.fs import FsStore
from engine.workers import (
    CODE_ORPHAN_RECOVERED,
    DOMAIN_EVENT_CRASH_LOOP_RESET,
    Lease,
    LeaseState,
    OrphanStreak,
    OrphanStreakCounter,
    WorkerError,
    discard_run,
    exit_code_for,
    list_run_ids,
    max_orphan_recoveries,
    orphan_streak,
    pending_run,
    pending_runs,
    reset_crash_loop,
    worker_log_tail,
    write_pending,
)

RUN = RunId("00000000-0000-4000-8000-00000000c1a0")
I = ArtifactId("0" * 64)  # noqa: E741 - the spec's notation for the initial snapshot
S1 = ArtifactId("1" * 64)
a, b = StateId("m.main.a"), StateId("m.main.b")


def stream(*events: Event) -> list[EventEnvelope]:
    return [EventEnvelope(run_id=RUN, seq=i + 1, ts_millis=1000 + i, event=e) for i, e in enumerate(events)]


def RS() -> RunStarted:
    return RunStarted(op_id=OpId("op"), manifest_id=ArtifactId("f" * 64), initial_snapshot_id=I)


def E(s: StateId, attempt: int) -> StateEntered:
    return StateEntered(state_id=s, attempt=attempt, base_snapshot_id=I)


def ORPHAN(s: StateId) -> StateFailed:
    """What resume appends for an open attempt it finds (ENGINE-SPEC §13 step 9)."""
    return StateFailed(
        state_id=s,
        error=StateError.new(CODE_ORPHAN_RECOVERED, "orphaned state attempt recovered during resume", retryable=True),
    )


def FAIL(s: StateId) -> StateFailed:
    return StateFailed(state_id=s, error=StateError.new("upstream_down", "no", retryable=True))


RESET = DomainEvent(name=DOMAIN_EVENT_CRASH_LOOP_RESET, payload={"state_id": str(a), "orphan_recoveries": 3})


# -- the count: a pure function of the stream ------------------------------------------------------------------


def test_no_orphan_recovery_no_streak() -> None:
    assert orphan_streak([]) is None
    assert orphan_streak(stream(RS(), E(a, 0), StateCompleted(state_id=a, context_snapshot_id=S1))) is None
    assert orphan_streak(stream(RS(), E(a, 0))) is None  # an open attempt is not a recovery (yet)


def test_consecutive_orphan_recoveries_of_one_state_are_counted() -> None:
    envs = stream(RS(), E(a, 0), ORPHAN(a), E(a, 1), ORPHAN(a), E(a, 2), ORPHAN(a), E(a, 3))
    assert orphan_streak(envs) == OrphanStreak(a, 3)
    counter = OrphanStreakCounter().feed_all(envs)
    assert counter.crash_loop(3) == OrphanStreak(a, 3) and counter.crash_loop(4) is None
    assert [orphan_streak(envs[:n]) for n in (2, 4, 6)] == [None, OrphanStreak(a, 1), OrphanStreak(a, 2)]


@pytest.mark.parametrize(
    ("ending", "why"),
    [
        (StateCompleted(state_id=a, context_snapshot_id=S1), "the state completed"),
        (FAIL(a), "the attempt failed by itself (bounded by max_attempts)"),
        (RESET, "an explicit resume reset the count"),
    ],
)
def test_a_streak_ends(ending: Event, why: str) -> None:
    envs = stream(RS(), E(a, 0), ORPHAN(a), E(a, 1), ORPHAN(a), E(a, 2), ending)
    assert orphan_streak(envs) is None, why
    later = stream(RS(), E(a, 0), ORPHAN(a), E(a, 1), ORPHAN(a), E(a, 2), ending, E(a, 3), ORPHAN(a), E(a, 4))
    assert orphan_streak(later) == OrphanStreak(a, 1), why


def test_streaks_are_per_state_and_a_finished_run_never_loops() -> None:
    envs = stream(RS(), E(a, 0), ORPHAN(a), E(a, 1), ORPHAN(a), E(b, 0), ORPHAN(b), E(b, 1))
    assert orphan_streak(envs) == OrphanStreak(a, 2)
    envs = stream(RS(), E(a, 0), ORPHAN(a), E(b, 0), ORPHAN(b), E(b, 1), ORPHAN(b), E(b, 2))
    assert orphan_streak(envs) == OrphanStreak(b, 2)
    tie = stream(RS(), E(a, 0), E(b, 0), ORPHAN(a), ORPHAN(b))
    assert orphan_streak(tie) == OrphanStreak(b, 1)  # the latest on a tie
    done = stream(RS(), E(a, 0), ORPHAN(a), E(a, 1), ORPHAN(a), RunCompleted(status=RunStatus.CANCELLED))
    assert OrphanStreakCounter().feed_all(done).crash_loop(1) is None


def test_the_limit_comes_from_one_environment_variable() -> None:
    assert max_orphan_recoveries({}) == 3
    assert max_orphan_recoveries({"MFM_MAX_ORPHAN_RECOVERIES": " 5 "}) == 5
    for bad in ("0", "-1", "three", "2.5"):
        with pytest.raises(WorkerError) as exc:
            max_orphan_recoveries({"MFM_MAX_ORPHAN_RECOVERIES": bad})
        assert exc.value.code == "usage" and "MFM_MAX_ORPHAN_RECOVERIES" in exc.value.message


async def test_an_explicit_resume_of_a_crash_looping_run_appends_one_reset_marker() -> None:
    store = MemoryStore()
    looping = stream(RS(), E(a, 0), ORPHAN(a), E(a, 1), ORPHAN(a), E(a, 2))
    await store.events.append(RUN, 0, looping)
    assert await reset_crash_loop(store.stores, RUN, 3, now_millis=5) is None  # 2 < 3: nothing written
    assert await store.events.head_seq(RUN) == len(looping)
    assert await reset_crash_loop(store.stores, RUN, 2, now_millis=5) == OrphanStreak(a, 2)
    after = await store.events.read_range(RUN, 1)
    assert len(after) == len(looping) + 1 and after[-1].kind == DOMAIN_EVENT_CRASH_LOOP_RESET
    assert orphan_streak(after) is None
    assert await reset_crash_loop(store.stores, RUN, 2, now_millis=6) is None  # once


# -- runs that never started -----------------------------------------------------------------------------------


async def _pending(store: FsStore, *, lease: bool = True) -> RunId:
    """A run whose launcher wrote its start record, then whose worker died before RunStarted."""
    prepared = await prepare_run(
        store.stores,
        load_registry(["engine.demo_ops"], entry_points=False),
        "demo_big",
        {"states": 2},
        run_id=RunId.new_v4(),
    )
    if lease:
        Lease.acquire(store, prepared.run_id, "run").release()
    write_pending(store, prepared.run_id, prepared.manifest_id)
    return prepared.run_id


async def test_a_run_whose_worker_died_before_run_started_is_listed(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "s")
    run = await _pending(store)
    [pending] = await pending_runs(store)
    assert pending.run_id == run and pending.manifest_id is not None and pending.requested_millis
    assert pending.lease.state is LeaseState.STALE
    assert run in await list_run_ids(store)
    assert await pending_run(store, run) == pending
    with Lease.acquire(store, run, "run"):  # a worker starting it right now
        live = await pending_run(store, run)
        assert live is not None and live.lease.state is LeaseState.HELD
    assert await pending_runs(MemoryStore()) == []  # no workers, no start records


async def test_discard_moves_a_run_that_never_started_into_quarantine_and_refuses_the_others(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "s")
    run = await _pending(store)
    with Lease.acquire(store, run, "run"):
        with pytest.raises(WorkerError) as held:
            await discard_run(store, run)
        assert held.value.code == "lease_held" and exit_code_for(held.value) == 4
    with_events = await _pending(store)
    await store.events.append(with_events, 0, [EventEnvelope(run_id=with_events, seq=1, event=RS())])
    with pytest.raises(WorkerError) as started:
        await discard_run(store, with_events)
    assert started.value.code == "run_already_started" and exit_code_for(started.value) == 4
    with pytest.raises(WorkerError) as unknown:
        await discard_run(store, RunId("00000000-0000-4000-8000-0000000000ee"))
    assert unknown.value.code == "run_not_found" and exit_code_for(unknown.value) == 3

    old = os.umask(0)
    try:
        where = Path(await discard_run(store, run))
    finally:
        os.umask(old)
    assert not store.run_dir(run).exists() and (where / "start.json").is_file()
    assert where.is_relative_to(store.root / "quarantine")
    for folder in (where.parent, where.parent.parent, where.parent.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert run not in await list_run_ids(store) and await pending_run(store, run) is None


def test_worker_log_tail_withholds_secret_lines(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "s")
    run = RunId("00000000-0000-4000-8000-0000000000bb")
    store.run_dir(run, create=True)
    lines = [f"line {i}" for i in range(10)] + ["Authorization: Bearer abc", "x" * 1000, "last"]
    (store.run_dir(run) / "worker.log").write_text("\n".join(lines) + "\n")
    tail = asyncio.run(worker_log_tail(store, run, 3))
    assert tail[0] == "[line withheld: it looks like it carries a secret]"
    assert tail[1].startswith("xxx") and len(tail[1]) <= 300 and tail[2] == "last"
    assert "Bearer" not in "".join(tail)
    assert asyncio.run(worker_log_tail(store, RunId("00000000-0000-4000-8000-0000000000cc"))) == []


# -- the doctor and failed starts (ENOSPC) ---------------------------------------------------------------------


def _failed_start(root: Path, run: str, **files: bytes) -> Path:
    """What a start that failed on a full disk leaves: a run folder, a 0-byte lease (and maybe more)."""
    folder = root / "runs" / run
    folder.mkdir(mode=0o700, parents=True)
    for name, data in {"lease": b"", **files}.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o600)
    return folder


def test_doctor_reports_and_removes_the_empty_run_folder_of_a_failed_start(tmp_path: Path) -> None:
    root = tmp_path / "s"
    FsStore(root).close()
    empty = _failed_start(root, "00000000-0000-4000-8000-0000000000e1")
    with_data = _failed_start(root, "00000000-0000-4000-8000-0000000000e2", **{"worker.log": b"No space left"})
    report = check_store(root)
    assert report.codes() == ["run_dir_empty", "run_dir_empty"]
    assert all(f.repairable for f in report.findings)
    assert report.findings[1].details == {"files": 2, "files_with_data": 1}
    old = os.umask(0)
    try:
        moved = repair_store(root, report)
    finally:
        os.umask(old)
    assert [(m.what, m.removed) for m in moved] == [("empty_run_dir", True), ("empty_run_dir", False)]
    assert not empty.exists() and not with_data.exists()
    kept = root / moved[1].destination
    assert (kept / "worker.log").read_bytes() == b"No space left"  # data is never deleted
    for folder in (kept.parent, kept.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert check_store(root).ok


def test_doctor_leaves_a_run_folder_whose_lease_is_held(tmp_path: Path) -> None:
    root = tmp_path / "s"
    FsStore(root).close()
    folder = _failed_start(root, "00000000-0000-4000-8000-0000000000e3")
    fd = os.open(folder / "lease", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a launcher that has just created it
        assert check_store(root).ok
        fcntl.flock(fd, fcntl.LOCK_UN)
        report = check_store(root)
        assert report.codes() == ["run_dir_empty"]
        fcntl.flock(fd, fcntl.LOCK_EX)  # taken again before the repair: nothing is touched
        assert repair_store(root, report) == [] and folder.is_dir()
    finally:
        os.close(fd)


async def test_doctor_names_resume_and_discard_for_a_run_that_never_started(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "s")
    run = await _pending(store)
    report = check_store(store.root)
    assert report.codes() == ["stale_lease"]
    assert f"mfm resume {run[:8]}" in report.findings[0].message
    assert f"mfm discard {run[:8]}" in report.findings[0].message
    assert not report.findings[0].repairable
