"""The crash loop (bench/crashloop.py), small and seeded, and the resume rule it found broken.

Workers of the demo operations are killed with SIGKILL at random instants and resumed until done; every run must
end with its uncrashed twin's final snapshot, no committed event may vanish, no side effect may be applied twice,
and ``mfm doctor`` must find no error. The bench prints the same figures at 1,000+ crash points.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.config import Duration, Fixed, RetryPolicy
from engine.engine import RunPhase
from engine.errors import ErrorCategory, ErrorInfo, StateError
from engine.events import EventEnvelope, RunStarted, StateEntered, StateFailed
from engine.hashing import canonical_json_bytes
from engine.ids import OpId, RunId
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.stores.fs import FsStore, framing
from engine.testing import (
    FakeClock,
    FakeSleeper,
    SetKey,
    WriteKey,
    base_config,
    fixed_run_ids,
    make_manifest,
    make_plan,
    read_events,
    sid,
    start_plan,
    store_manifest,
    trace,
)

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mfm_bench_crashloop", ROOT / "bench" / "crashloop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_crash_loop_small(tmp_path: Path) -> None:
    bench = _bench()
    summary = bench.run_crashloop(tmp_path, crash_points=60, seed=20261126, parallel=2)
    print("\n" + "\n".join(summary.lines()))
    assert summary.crash_points >= 60
    assert summary.runs >= len(bench.OPS)
    assert summary.per_op.keys() == set(bench.OPS)
    assert summary.lost_states == 0 and summary.changed_events == 0
    assert summary.double_effects == 0, summary.problems
    assert summary.final_mismatches == 0, summary.problems
    assert summary.completed_like_twin == summary.runs
    assert summary.doctor_errors == 0, summary.problems
    assert summary.doctor_after_repair == 0, summary.problems
    assert not summary.problems


RUN = RunId("22222222-2222-4222-8222-222222222222")


def _env(seq: int, event: object) -> EventEnvelope:
    return EventEnvelope(run_id=RUN, seq=seq, ts_millis=None, event=event)  # type: ignore[arg-type]


async def test_crash_between_orphan_recovery_and_restart_does_not_exhaust_attempts() -> None:
    """Found by the crash loop: attempt 2 of 3 was an orphan; resume wrote its ``orphan_attempt_recovered``
    failure and was killed before ``StateEntered``. The next resume must still restart the state (the orphan
    restart is not bounded by ``max_attempts``, §13 step 9), not fail the run as if retries were exhausted."""
    ms = MemoryStore()
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_millis(0))))
    mid = await store_manifest(ms.stores, make_manifest(cfg))
    iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes({}))
    s1 = sid("s1")
    orphan = StateError(
        ErrorInfo.new(
            "orphan_attempt_recovered",
            "orphaned state attempt recovered during resume",
            category=ErrorCategory.UNKNOWN,
            retryable=True,
        ),
        s1,
    )
    events = [
        RunStarted(op_id=OpId("op"), manifest_id=mid, initial_snapshot_id=iid),
        StateEntered(state_id=s1, attempt=0, base_snapshot_id=iid),
        StateFailed(state_id=s1, error=orphan),
        StateEntered(state_id=s1, attempt=1, base_snapshot_id=iid),
        StateFailed(state_id=s1, error=orphan),
        StateEntered(state_id=s1, attempt=2, base_snapshot_id=iid),
        StateFailed(state_id=s1, error=orphan),
    ]
    await ms.events.append(RUN, 0, [_env(i + 1, ev) for i, ev in enumerate(events)])
    engine = Engine(
        plan_resolver=lambda m: make_plan([("s1", SetKey())]),
        clock=FakeClock(),
        sleeper=FakeSleeper(),
        run_ids=fixed_run_ids(),
    )
    result = await engine.resume(ms.stores, RUN)
    assert result.phase is RunPhase.COMPLETED
    tail = trace(await read_events(ms.stores, RUN))[len(events) :]
    assert tail[0] == ("E", "s1", 3, iid)
    assert tail[-1][:2] == ("RC", "Completed")


async def _small_v1_store(root: Path) -> list[str]:
    store = FsStore(root, new_version=1)
    plan = make_plan([(f"s{i}", WriteKey(f"k{i}", i)) for i in range(3)], [("s0", "s1"), ("s1", "s2")])
    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    for _ in range(2):
        assert (await start_plan(engine, store.stores, plan, base_config())).phase is RunPhase.COMPLETED
    runs = [str(r) for r in await store.events.list_runs()]
    store.close()
    return runs


def _exhaustive(bench: ModuleType, store: Path, runs: list[str]) -> Any:
    """As many kills as there are kill points: one before every disk-changing call, one inside every write, one
    after the last call."""
    probe = bench.migration_crashes(store, runs, 1, random.Random(0))
    return bench.migration_crashes(store, runs, probe.calls + probe.writes + 1, random.Random(0))


def test_migration_is_killed_before_every_disk_changing_call_and_inside_every_write(tmp_path: Path) -> None:
    """bench/crashloop.py --migrate-kills: each kill on a fresh copy of a version-1 store, at an offset in the
    migration's own system calls; every copy opens as version 1 or 2, reads every event as before, and finishes
    migrating when asked again."""
    bench = _bench()
    store = tmp_path / "store"
    runs = asyncio.run(_small_v1_store(store))  # the bench reads with asyncio.run: this test is synchronous
    result = _exhaustive(bench, store, runs)
    assert result.problems == [] and result.bad == 0
    assert result.calls >= 10 * len(runs)  # opens, writes, fsyncs and renames of every run log, then store.json
    assert result.distinct == result.kills  # every kill point a different one
    assert result.finished == 1  # only the point after the last call lets the migration end first
    assert result.torn == result.writes >= len(runs) + 1  # the temp log of each run and the new store.json, torn
    assert result.resumed == result.kills
    assert result.opened_as[1] > 0 and result.opened_as[2] > 0  # killed before and after the version flip


def test_the_migration_crash_loop_catches_a_migration_that_rewrites_logs_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that truncates the log and writes it again in place finishes correctly when not killed, but a
    kill between the truncation and the write loses the run's events: the kill points find it."""
    from engine.doctor import _migrate

    real_write_temp = _migrate._write_temp

    def in_place(dfd: int, name: str, data: bytes) -> None:
        if name.startswith(f"{framing.TEMP_PREFIX}migrate-"):  # a run log's new version (not store.json)
            fd = os.open(framing.EVENTS_FILE, os.O_WRONLY | os.O_TRUNC, dir_fd=dfd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        real_write_temp(dfd, name, data)

    bench = _bench()
    store = tmp_path / "store"
    runs = asyncio.run(_small_v1_store(store))  # the bench reads with asyncio.run: this test is synchronous
    monkeypatch.setattr(_migrate, "_write_temp", in_place)
    result = bench.migration_crashes(store, runs, 60, random.Random(0))
    assert result.bad > 0
    assert any("events differ" in p or "damaged" in p for p in result.problems), result.problems
