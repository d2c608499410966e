"""The runtime on the filesystem store: a full run, crash + resume in a fresh store object, cancel requested
through the store's control folder (as another process would), replay verdict."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from engine.config import Duration, Fixed, RetryPolicy
from engine.engine import RunPhase
from engine.runtime import Engine, Failpoints, request_cancel
from engine.stores.fs import FsStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    Flaky,
    SetKey,
    WriteKey,
    base_config,
    entered,
    fixed_run_ids,
    make_plan,
    read_events,
    snapshot_of,
    start_plan,
    trace,
)


def _engine(plan: Any = None, **kw: Any) -> Engine:
    return Engine(
        plan_resolver=(lambda m: plan) if plan is not None else None,
        clock=FakeClock(),
        sleeper=kw.pop("sleeper", FakeSleeper()),
        run_ids=kw.pop("run_ids", fixed_run_ids()),
        **kw,
    )


async def test_fs_three_states_then_crash_resume_in_new_store_object(tmp_path: Path) -> None:
    """E24 + I52 on FsStore: the stream written through one FsStore is resumed through another."""
    plan = make_plan(
        [("s1", WriteKey("a", 1)), ("s2", SetKey("b")), ("s3", WriteKey("c", 3))], [("s1", "s2"), ("s2", "s3")]
    )
    store = FsStore(tmp_path / "store")
    fp = Failpoints.stop_after_handler("machine.main.s2")
    first = await start_plan(_engine(plan, failpoints=fp), store.stores, plan, base_config())
    assert first.phase is RunPhase.RUNNING

    again = FsStore(tmp_path / "store")
    res = await _engine(plan).resume(again.stores, first.run_id)
    assert res.phase is RunPhase.COMPLETED
    envs = await read_events(again.stores, first.run_id)
    assert entered(envs, "s2") == [0, 1]
    assert await snapshot_of(again.stores, res.final_snapshot_id) == {"a": 1, "b": 1, "c": 3}  # type: ignore[arg-type]
    assert [e.seq for e in envs] == list(range(1, len(envs) + 1))


async def test_fs_cancel_request_from_another_store_object(tmp_path: Path) -> None:
    """C1 on FsStore: request_cancel through a second FsStore (another process's view) stops the backoff wait."""
    store = FsStore(tmp_path / "store")
    sleeper = FakeSleeper(block=True)
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_secs(60))))
    engine = _engine(sleeper=sleeper, cancel_poll_interval=0.01)
    task = asyncio.ensure_future(start_plan(engine, store.stores, make_plan([("s1", Flaky())]), cfg))
    await sleeper.sleeping.wait()
    other = FsStore(tmp_path / "store")
    (run_id,) = await other.events.list_runs()
    await request_cancel(other.stores, run_id, "from the TUI")
    res = await task
    assert res.phase is RunPhase.CANCELLED
    assert trace(await read_events(other.stores, run_id))[-1][:2] == ("RC", "Cancelled")


async def test_fs_replay_verdict(tmp_path: Path) -> None:
    """R2 on FsStore: time + randomness recorded live, replayed deterministically."""

    class TimeAndRandom:
        def meta(self) -> Any:
            from engine.meta import StateMeta

            return StateMeta()

        async def handle(self, ctx: Any, io: Any, rec: Any) -> Any:
            from engine.state import StateOutcome

            ctx.write("t", await io.now_millis())
            ctx.write("r", (await io.random_bytes(8)).hex())
            return StateOutcome()

    plan = make_plan([("s1", TimeAndRandom())])
    store = FsStore(tmp_path / "store")
    ids = fixed_run_ids()
    live = await start_plan(_engine(plan, run_ids=ids), store.stores, plan, base_config())
    verdict = await _engine(plan, run_ids=ids).replay(store.stores, live.run_id)
    assert verdict.verdict == "deterministic" and verdict.replay_final == live.final_snapshot_id
