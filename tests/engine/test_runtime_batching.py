"""The engine batches what the contract allows (issue 12) without changing the stream.

Each rule is checked twice: the ``EventStore.append`` calls (a wrapped memory store records every batch) and the
resulting stream, which must be the unbatched one of ENGINE-SPEC §14 / CONFORMANCE (same order, seqs, payloads and
``ts_millis``: a clock that ticks on every read gives every event the timestamp the unbatched runtime gave it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from engine._runtime.envelopes import analyze
from engine.config import Duration, EventProfile, FanOutJoin, Fixed, RetryPolicy
from engine.engine import RunPhase, Stores
from engine.errors import RunError, RunErrorKind
from engine.events import EventEnvelope, StateCompleted, StateEntered
from engine.ids import RunId
from engine.io import IoProvider
from engine.recorder import EventRecorder
from engine.runtime import CancelToken, Engine, Failpoints
from engine.stores import MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    Flaky,
    FnState,
    WriteKey,
    base_config,
    fixed_run_ids,
    make_plan,
    read_events,
    snapshot_of,
    start_plan,
    trace,
)


class CountingEvents:
    """The memory store's events, recording every ``append`` call as the §14 shorthand of its batch.

    At each call it also checks that every snapshot the batch names is already stored (a ``StateCompleted``
    must never be durable before its snapshot) and notes how many backoff sleeps preceded it."""

    def __init__(self, ms: MemoryStore, sleeper: FakeSleeper | None = None) -> None:
        self.ms = ms
        self.inner = ms.events
        self.sleeper = sleeper
        self.batches: list[list[str]] = []
        self.sleeps_before: list[int] = []

    async def head_seq(self, run_id: RunId) -> int:
        return await self.inner.head_seq(run_id)

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        return await self.inner.read_range(run_id, from_seq, to_seq)

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        for env in events:
            ev = env.event
            named = ev.context_snapshot_id if isinstance(ev, StateCompleted) else None
            if isinstance(ev, StateEntered):
                named = ev.base_snapshot_id
            if named is not None:
                assert await self.ms.artifacts.exists(named), f"seq {env.seq} names snapshot {named}, not stored yet"
        self.batches.append([_short(t) for t in trace(events)])
        self.sleeps_before.append(0 if self.sleeper is None else len(self.sleeper.requested))
        return await self.inner.append(run_id, expected_seq, events)


def _short(t: tuple[Any, ...]) -> str:
    if t[0] in ("E", "C", "F"):
        return f"{t[0]}({t[1]})"
    return t[0] if t[0] != "D" else f"D({t[1]})"


def _setup(sleeper: FakeSleeper | None = None, **kw: Any) -> tuple[MemoryStore, CountingEvents, Stores, Engine]:
    ms = MemoryStore()
    events = CountingEvents(ms, sleeper)
    stores = Stores(events=events, artifacts=ms.artifacts, control=ms.events)
    kw.setdefault("clock", FakeClock(step=1))
    engine = Engine(sleeper=sleeper or FakeSleeper(), run_ids=fixed_run_ids(), **kw)
    return ms, events, stores, engine


def _chain(n: int) -> Any:
    return make_plan(
        [(f"s{i}", WriteKey(f"k{i}", i)) for i in range(1, n + 1)], [(f"s{i}", f"s{i + 1}") for i in range(1, n)]
    )


async def test_sequential_completed_with_next_entered_started_with_first_last_with_run_completed() -> None:
    """CONFORMANCE 24's run in N+1 appends: [RS, E1], [C1, E2], [C2, E3], [C3, RC]; the stream is the unbatched
    one (same trace, seqs 1..8, one clock read per former append: ts 0..6 with RC sharing C3's)."""
    ms, events, stores, engine = _setup()
    res = await start_plan(engine, stores, _chain(3), base_config())
    assert events.batches == [["RS", "E(s1)"], ["C(s1)", "E(s2)"], ["C(s2)", "E(s3)"], ["C(s3)", "RC"]]
    assert engine.appends == 3 + 1
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    i, s1, s2, s3 = t[0][1], t[2][2], t[4][2], t[6][2]
    assert t == [
        ("RS", i),
        ("E", "s1", 0, i),
        ("C", "s1", s1),
        ("E", "s2", 0, s1),
        ("C", "s2", s2),
        ("E", "s3", 0, s2),
        ("C", "s3", s3),
        ("RC", "Completed", s3),
    ]
    assert [e.seq for e in envs] == list(range(1, 9))
    start = envs[0].ts_millis
    assert start is not None
    assert [e.ts_millis for e in envs] == [start + d for d in (0, 1, 2, 3, 4, 5, 6, 6)]
    assert res.phase is RunPhase.COMPLETED and res.final_snapshot_id == s3


async def test_cancel_check_comes_before_the_first_batch() -> None:
    """A run started with a cancelled token: RunStarted goes out with RunCompleted{Cancelled}, nothing entered."""
    token = CancelToken()
    token.cancel("early")
    ms, events, stores, engine = _setup()
    res = await start_plan(engine, stores, _chain(2), base_config(), cancel=token)
    assert res.phase is RunPhase.CANCELLED
    assert events.batches == [["RS", "RC"]]
    t = trace(await read_events(ms.stores, res.run_id))
    assert t == [("RS", t[0][1]), ("RC", "Cancelled", t[0][1])]


async def test_zero_delay_retry_travels_with_the_next_entered() -> None:
    """CONFORMANCE 26 (Normal profile, Fixed 0): [RS, E], [F, retry_scheduled, E], [C, RC]; stream unchanged."""
    ms, events, stores, engine = _setup()
    plan = make_plan([("s1", Flaky())])
    res = await start_plan(engine, stores, plan, base_config(event_profile=EventProfile.NORMAL))
    assert events.batches == [["RS", "E(s1)"], ["F(s1)", "D(retry_scheduled)", "E(s1)"], ["C(s1)", "RC"]]
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    i, s1 = t[0][1], t[5][2]
    assert t == [
        ("RS", i),
        ("E", "s1", 0, i),
        ("F", "s1", "flaky", True),
        ("D", "retry_scheduled"),
        ("E", "s1", 1, i),
        ("C", "s1", s1),
        ("RC", "Completed", s1),
    ]
    assert [e.seq for e in envs] == list(range(1, 8))
    start = envs[0].ts_millis
    assert start is not None
    assert [e.ts_millis for e in envs] == [start + d for d in (0, 1, 2, 2, 3, 4, 4)]  # 2: the failure time


async def test_backoff_sleep_separates_the_failure_from_the_next_entered() -> None:
    """A real backoff: StateFailed + retry_scheduled are durable before the sleep, the retry's StateEntered after."""
    clock = FakeClock()
    sleeper = FakeSleeper(clock)
    cfg = base_config(
        event_profile=EventProfile.NORMAL,
        retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_millis(10))),
    )
    ms, events, stores, engine = _setup(sleeper, clock=clock)
    res = await start_plan(engine, stores, make_plan([("s1", Flaky())]), cfg)
    assert res.phase is RunPhase.COMPLETED and sleeper.requested_ms == [10]
    assert events.batches == [["RS", "E(s1)"], ["F(s1)", "D(retry_scheduled)"], ["E(s1)"], ["C(s1)", "RC"]]
    assert events.sleeps_before == [0, 0, 1, 1]
    t = trace(await read_events(ms.stores, res.run_id))
    assert [x[0] for x in t] == ["RS", "E", "F", "D", "E", "C", "RC"]


async def test_resume_recovery_travels_with_the_restart() -> None:
    """§14 trace 5: the start stops after s1's handler ([RS, E] only); resume appends [F(orphan), E(s1, 1)], then
    [C, RC]; the stream is the unbatched one."""
    plan = make_plan([("s1", WriteKey("x", 1))])
    ms, events, stores, engine = _setup(plan_resolver=lambda m: plan, failpoints=Failpoints.stop_after_handler())
    first = await start_plan(engine, stores, plan, base_config())
    assert first.phase is RunPhase.RUNNING and events.batches == [["RS", "E(s1)"]]
    res = await engine.resume(stores, first.run_id)
    assert events.batches[1:] == [["F(s1)", "E(s1)"], ["C(s1)", "RC"]]
    t = trace(await read_events(ms.stores, res.run_id))
    i, s1 = t[0][1], t[4][2]
    assert t == [
        ("RS", i),
        ("E", "s1", 0, i),
        ("F", "s1", "orphan_attempt_recovered", True),
        ("E", "s1", 1, i),
        ("C", "s1", s1),
        ("RC", "Completed", s1),
    ]


async def test_replay_seed_facts_travel_with_run_started_and_the_first_entered() -> None:
    """Replay of a past run: RunStarted, the copied fact bindings and the first StateEntered in one append."""

    async def clocked(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("t", await io.now_millis())

    plan = make_plan([("s1", FnState(clocked)), ("s2", WriteKey("k", 2))], [("s1", "s2")])
    _ms, events, stores, engine = _setup(plan_resolver=lambda m: plan)
    src = await start_plan(engine, stores, plan, base_config())
    assert events.batches == [["RS", "E(s1)"], ["D(fact_recorded)"], ["C(s1)", "E(s2)"], ["C(s2)", "RC"]]
    verdict = await engine.replay(stores, src.run_id)
    assert verdict.deterministic
    assert events.batches[4:] == [["RS", "D(fact_recorded)", "E(s1)"], ["C(s1)", "E(s2)"], ["C(s2)", "RC"]]


async def test_fan_out_completions_and_entries_at_one_boundary_share_an_append() -> None:
    """a → {b, c} → d under FanOutJoin{2}: b and c enter together with a's completion; d enters with both
    completions; the stream passes the envelope analysis with b and c open at once from a's checkpoint."""
    plan = make_plan(
        [("a", WriteKey("a", 1)), ("b", WriteKey("b", 2)), ("c", WriteKey("c", 3)), ("d", WriteKey("d", 4))],
        [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
    )
    ms, events, stores, engine = _setup()
    res = await start_plan(engine, stores, plan, base_config(execution_mode=FanOutJoin(max_concurrency=2)))
    assert res.phase is RunPhase.COMPLETED
    assert events.batches == [["RS", "E(a)"], ["C(a)", "E(b)", "E(c)"], ["C(b)", "C(c)", "E(d)"], ["C(d)", "RC"]]
    envs = await read_events(ms.stores, res.run_id)
    analyze(envs, res.run_id)
    t = trace(envs)
    sa, sb, sc, sd = t[2][2], t[5][2], t[6][2], t[8][2]
    assert t[1:] == [
        ("E", "a", 0, t[0][1]),
        ("C", "a", sa),
        ("E", "b", 0, sa),
        ("E", "c", 0, sa),
        ("C", "b", sb),
        ("C", "c", sc),
        ("E", "d", 0, sc),
        ("C", "d", sd),
        ("RC", "Completed", sd),
    ]
    assert await snapshot_of(ms.stores, sd) == {"a": 1, "b": 2, "c": 3, "d": 4}


async def test_fan_out_completion_with_nothing_to_enter_is_flushed_at_once() -> None:
    """A fan-out state completing while another still runs and nothing can enter: its StateCompleted is appended
    alone at that boundary (not held until the other one finishes)."""

    release = asyncio.Event()
    seen_when_released: list[list[list[str]]] = []

    async def slow(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        await release.wait()
        ctx.write("slow", 1)

    async def fast(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("fast", 1)

    plan = make_plan([("slow", FnState(slow)), ("fast", FnState(fast))])
    _ms, events, stores, engine = _setup()
    run = asyncio.ensure_future(
        start_plan(engine, stores, plan, base_config(execution_mode=FanOutJoin(max_concurrency=2)))
    )
    for _ in range(20):
        await asyncio.sleep(0)
    seen_when_released.append([list(b) for b in events.batches])
    release.set()
    res = await run
    assert res.phase is RunPhase.COMPLETED
    assert seen_when_released == [[["RS", "E(slow)", "E(fast)"], ["C(fast)"]]]
    assert events.batches[2:] == [["C(slow)", "RC"]]


async def test_a_failing_combined_batch_keeps_what_was_written_before_it() -> None:
    """§3.3/§12.3: a state id that looks secret makes its StateEntered fail the append. The StateCompleted of the
    state before it, written with that batch, still lands (the writer falls back to the unbatched order), so the
    stream is the unbatched one: RS, E(s1), C(s1), and the run aborts with a storage error."""
    plan = make_plan([("s1", WriteKey("a", 1)), ("password_reset", WriteKey("b", 2))], [("s1", "password_reset")])
    ms, events, stores, engine = _setup()
    with pytest.raises(RunError) as info:
        await start_plan(engine, stores, plan, base_config())
    assert info.value.kind is RunErrorKind.STORAGE and info.value.code == "secrets_detected"
    assert events.batches[-2:] == [["C(s1)"], ["E(password_reset)"]]  # the combined batch, then the fallback
    run_id = (await ms.events.list_runs())[0]
    assert [x[0] for x in trace(await read_events(ms.stores, run_id))] == ["RS", "E", "C"]
