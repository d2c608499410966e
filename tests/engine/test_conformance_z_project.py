"""CONFORMANCE Z: this project's additions — fan-out (F1-F4), cancellation (C1-C3), retry visibility (R1),
replay verdict (R2), side-effect declaration (S1). ENGINE-SPEC §0.5-§0.7, §0.10, §0.11."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from engine._runtime.envelopes import analyze
from engine.config import Duration, EventProfile, FanOutJoin, Fixed, RetryPolicy, RunConfig
from engine.engine import RunPhase
from engine.errors import RunError, RunErrorKind, StateError, StorageError
from engine.events import DomainEvent, RetryScheduled, StateCompleted, StateEntered, StateFailed
from engine.exec_transport import ExecTransportFactory
from engine.ids import FactKey
from engine.io import IoCall, IoProvider
from engine.meta import Idempotency, SideEffectKind, StateMeta
from engine.plan import ExecutionPlan
from engine.process_exec import ProcessEvent
from engine.recorder import EventRecorder
from engine.runtime import CancelToken, Engine, Failpoints, request_cancel
from engine.stores import MemoryStore
from engine.testing import (
    Fail,
    FakeClock,
    FakeSleeper,
    Flaky,
    FnState,
    WriteKey,
    base_config,
    counting_random,
    entered,
    fixed_run_ids,
    make_plan,
    read_events,
    sid,
    snapshot_of,
    start_plan,
    trace,
)

_RUN_IDS = fixed_run_ids()  # one sequence for the module: engines sharing a store never collide


def _engine(plan: ExecutionPlan | None = None, **kw: Any) -> Engine:
    kw.setdefault("clock", FakeClock())
    kw.setdefault("sleeper", FakeSleeper())
    kw.setdefault("run_ids", _RUN_IDS)
    return Engine(plan_resolver=(lambda m: plan) if plan is not None else None, **kw)


def _fan_out(n: int = 2) -> RunConfig:
    return base_config(execution_mode=FanOutJoin(max_concurrency=n))


def _max_open(envs: list[Any]) -> int:
    open_: set[str] = set()
    peak = 0
    for e in envs:
        ev = e.event
        if isinstance(ev, StateEntered):
            open_.add(ev.state_id)
            peak = max(peak, len(open_))
        elif isinstance(ev, StateCompleted | StateFailed):
            open_.discard(ev.state_id)
    return peak


class _Gate:
    """Lets ``n`` handlers overlap: each waits until ``n`` have started (or the gate is open)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = 0
        self.open = asyncio.Event()

    async def enter(self) -> None:
        self.started += 1
        if self.started >= self.n:
            self.open.set()
        await self.open.wait()


def _diamond(
    gate: _Gate, writes: dict[str, tuple[str, Any]], block: dict[str, asyncio.Event] | None = None
) -> ExecutionPlan:
    """a → {b, c, d} → e; b, c, d pass the gate then write ``writes[name]``; e records its base."""

    def mid(name: str) -> FnState:
        async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
            await gate.enter()
            if block and name in block:
                await block[name].wait()
            key, value = writes[name]
            ctx.write(key, value)

        return FnState(handler)

    async def e(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("e", sorted(k for k in ("kb", "kc", "kd") if ctx.read(k) is not None))

    return make_plan(
        [("a", WriteKey("ka", 1)), ("b", mid("b")), ("c", mid("c")), ("d", mid("d")), ("e", FnState(e))],
        [("a", "b"), ("a", "c"), ("a", "d"), ("b", "e"), ("c", "e"), ("d", "e")],
    )


WRITES = {"b": ("kb", "B"), "c": ("kc", "C"), "d": ("kd", "D")}


async def test_f1_fan_out_order_and_cap() -> None:
    """F1: a → {b,c,d} → e, FanOutJoin{2}: ≤2 attempts open (and 2 reached); e after b,c,d; e's base has all three
    keys; the final snapshot id equals the Sequential run's."""
    ms = MemoryStore()
    res = await start_plan(_engine(), ms.stores, _diamond(_Gate(2), WRITES), _fan_out(2))
    assert res.phase is RunPhase.COMPLETED
    envs = await read_events(ms.stores, res.run_id)
    assert _max_open(envs) == 2
    t = trace(envs)
    e_entered = next(i for i, x in enumerate(t) if x[:2] == ("E", "e"))
    completed_before = {x[1] for x in t[:e_entered] if x[0] == "C"}
    assert {"b", "c", "d"} <= completed_before
    base = await snapshot_of(ms.stores, t[e_entered][3])
    assert {"kb", "kc", "kd"} <= set(base)
    seq = await start_plan(_engine(), MemoryStore().stores, _diamond(_Gate(1), WRITES), base_config())
    assert res.final_snapshot_id == seq.final_snapshot_id
    assert await snapshot_of(ms.stores, res.final_snapshot_id) == {  # type: ignore[arg-type]
        "ka": 1,
        "kb": "B",
        "kc": "C",
        "kd": "D",
        "e": ["kb", "kc", "kd"],
    }
    analyze(envs)  # the per-state envelope rule holds


async def test_f1_ready_set_in_topological_order() -> None:
    """F1 [§0.5]: with max_concurrency 3 the ready states b, c, d are entered in topological order."""
    ms = MemoryStore()
    res = await start_plan(_engine(), ms.stores, _diamond(_Gate(3), WRITES), _fan_out(3))
    t = trace(await read_events(ms.stores, res.run_id))
    assert [x[1] for x in t if x[0] == "E"] == ["a", "b", "c", "d", "e"]
    assert _max_open(await read_events(ms.stores, res.run_id)) == 3


async def test_f2_write_conflict() -> None:
    """F2: b and c both write x → the second to complete (c) fails fan_out_write_conflict naming x, b and c
    (non-retryable); the run ends Failed; no snapshot contains c's write."""
    ms = MemoryStore()
    gate = _Gate(2)
    b_done = asyncio.Event()

    async def b(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        await gate.enter()
        ctx.write("x", "from-b")
        b_done.set()

    async def c(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        await gate.enter()
        await b_done.wait()
        while not any(
            isinstance(e.event, StateCompleted) and e.event.state_id == sid("b")
            for e in await ms.events.read_range(run_ids[0], 1)
        ):
            await asyncio.sleep(0)
        ctx.write("x", "from-c")

    run_ids: list[Any] = []

    def next_id() -> Any:
        rid = fixed_run_ids()()
        run_ids.append(rid)
        return rid

    plan = make_plan(
        [("a", WriteKey("ka", 1)), ("b", FnState(b)), ("c", FnState(c)), ("e", WriteKey("ke", 1))],
        [("a", "b"), ("a", "c"), ("b", "e"), ("c", "e")],
    )
    res = await start_plan(_engine(run_ids=next_id), ms.stores, plan, _fan_out(2))
    assert res.phase is RunPhase.FAILED
    envs = await read_events(ms.stores, res.run_id)
    failed = [e.event for e in envs if isinstance(e.event, StateFailed)]
    assert len(failed) == 1 and failed[0].state_id == sid("c")
    err = failed[0].error
    assert err.code == "fan_out_write_conflict" and not err.retryable
    assert "'x'" in err.message and "machine.main.b" in err.message and "machine.main.c" in err.message
    assert entered(envs, "e") == []
    for blob in ms.artifacts.all_bytes():
        assert b"from-c" not in blob
    assert await snapshot_of(ms.stores, res.final_snapshot_id) == {"ka": 1, "x": "from-b"}  # type: ignore[arg-type]


async def test_f2_sequential_writers_may_share_keys() -> None:
    """F2 [§0.5]: the conflict rule is about concurrency; Sequential (FanOutJoin{1}) lets later states overwrite."""
    plan = make_plan([("a", WriteKey("x", 1)), ("b", WriteKey("x", 2))])
    for cfg in (base_config(), _fan_out(1)):
        ms = MemoryStore()
        res = await start_plan(_engine(), ms.stores, plan, cfg)
        assert res.phase is RunPhase.COMPLETED
        assert await snapshot_of(ms.stores, res.final_snapshot_id) == {"x": 2}  # type: ignore[arg-type]


async def test_f3_fan_out_resume() -> None:
    """F3: crash while b and c are both open → resume closes both orphans (topological order), re-runs them and
    completes with the final snapshot id of an uninterrupted run."""
    ms = MemoryStore()
    block_b = asyncio.Event()
    plan = _diamond(_Gate(2), WRITES, block={"b": block_b})
    fp = Failpoints.stop_after_handler("machine.main.c")
    first = await start_plan(_engine(plan, failpoints=fp), ms.stores, plan, _fan_out(2))
    assert first.phase is RunPhase.RUNNING
    envs = await read_events(ms.stores, first.run_id)
    assert {o.state_id for o in analyze(envs).orphans} == {sid("b"), sid("c")}
    block_b.set()
    res = await _engine(plan).resume(ms.stores, first.run_id)
    assert res.phase is RunPhase.COMPLETED
    t = trace(await read_events(ms.stores, first.run_id))
    tail = t[len(envs) :]
    assert tail[:2] == [("F", "b", "orphan_attempt_recovered", True), ("F", "c", "orphan_attempt_recovered", True)]
    clean = await start_plan(_engine(), MemoryStore().stores, _diamond(_Gate(2), WRITES), _fan_out(2))
    assert res.final_snapshot_id == clean.final_snapshot_id
    assert entered(await read_events(ms.stores, first.run_id), "b") == [0, 1]


async def test_f4_max_concurrency_zero() -> None:
    """F4: FanOutJoin{max_concurrency: 0} → invalid plan before anything is stored."""
    ms = MemoryStore()
    with pytest.raises(RunError) as ei:
        await start_plan(_engine(), ms.stores, make_plan([("a", WriteKey("x", 1))]), _fan_out(0))
    assert ei.value.kind is RunErrorKind.INVALID_PLAN and ei.value.code == "invalid_plan"
    assert await ms.events.list_runs() == [] and ms.artifacts.all_bytes() != []  # only the test's manifest


async def test_f_terminal_failure_lets_in_flight_finish() -> None:
    """F [§0.5 choice]: b fails terminally while c is in flight → c still completes, d never starts, RC(Failed)."""
    ms = MemoryStore()
    gate = _Gate(2)
    c_release = asyncio.Event()

    async def b(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        await gate.enter()
        c_release.set()
        raise StateError.new("boom", "b fails", retryable=False)

    async def c(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        await gate.enter()
        await c_release.wait()
        for _ in range(5):
            await asyncio.sleep(0)
        ctx.write("kc", 1)

    plan = make_plan(
        [("a", WriteKey("ka", 1)), ("b", FnState(b)), ("c", FnState(c)), ("d", WriteKey("kd", 1))],
        [("a", "b"), ("a", "c"), ("a", "d")],
    )
    res = await start_plan(_engine(), ms.stores, plan, _fan_out(2))
    t = trace(await read_events(ms.stores, res.run_id))
    assert res.phase is RunPhase.FAILED
    assert ("C", "c", res.final_snapshot_id) in t and entered(await read_events(ms.stores, res.run_id), "d") == []
    assert t[-1] == ("RC", "Failed", res.final_snapshot_id)


# ------------------------------------------------------------------------------------------- cancellation


async def test_c1_cancel_during_backoff() -> None:
    """C1: retryable failure with Fixed{60 s}; cancel during the wait → the wait ends, RC(Cancelled, last
    checkpoint), no further attempt entered."""
    ms = MemoryStore()
    sleeper = FakeSleeper(block=True)
    token = CancelToken()
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_secs(60))))
    plan = make_plan([("s0", WriteKey("k", 1)), ("s1", Flaky())], [("s0", "s1")])
    task = asyncio.ensure_future(start_plan(_engine(sleeper=sleeper), ms.stores, plan, cfg, cancel=token))
    await sleeper.sleeping.wait()
    token.cancel("operator said stop")
    res = await task
    assert res.phase is RunPhase.CANCELLED and sleeper.requested == [60.0] and sleeper.interrupted == 1
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    s0 = t[2][2]
    assert entered(envs, "s1") == [0]
    assert t[-2:] == [("F", "s1", "flaky", True), ("RC", "Cancelled", s0)]
    assert res.final_snapshot_id == s0


async def test_c1_cancel_from_another_process_via_control_store() -> None:
    """C1 [§0.6]: a cancel request recorded in the control store (request_cancel) is noticed by polling."""
    ms = MemoryStore()
    sleeper = FakeSleeper(block=True)
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_secs(60))))
    engine = _engine(sleeper=sleeper, cancel_poll_interval=0.005)
    task = asyncio.ensure_future(start_plan(engine, ms.stores, make_plan([("s1", Flaky())]), cfg))
    await sleeper.sleeping.wait()
    (run_id,) = await ms.events.list_runs()
    req = await request_cancel(ms.stores, run_id, "from the TUI")
    assert req.reason == "from the TUI"
    res = await task
    assert res.phase is RunPhase.CANCELLED
    assert trace(await read_events(ms.stores, run_id))[-1][:2] == ("RC", "Cancelled")


async def test_c1_cancel_requested_before_start_of_resume() -> None:
    """C1 [§0.6]: a pending cancel request is honoured at the next attempt boundary (resume enters nothing)."""
    ms = MemoryStore()
    plan = make_plan([("s1", WriteKey("a", 1)), ("s2", WriteKey("b", 2))], [("s1", "s2")])
    first = await start_plan(
        _engine(plan, failpoints=Failpoints.stop_after_handler("machine.main.s2")), ms.stores, plan, base_config()
    )
    await ms.events.request_cancel(first.run_id, "stop")
    res = await _engine(plan).resume(ms.stores, first.run_id)
    t = trace(await read_events(ms.stores, first.run_id))
    assert res.phase is RunPhase.CANCELLED
    assert t[-2:] == [("F", "s2", "orphan_attempt_recovered", True), ("RC", "Cancelled", t[2][2])]


def _script(tmp: Path, name: str, body: str) -> str:
    path = tmp / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IRUSR)
    return str(path)


async def test_c2_cancel_during_exec(tmp_path: Path) -> None:
    """C2: a state runs an exec program sleeping 60 s; cancel → SIGTERM to the child, the attempt closed with
    StateFailed run_cancelled (non-retryable), then RunCompleted{Cancelled}; the child is reaped (no zombie)."""
    root = tmp_path.resolve()
    program = _script(root, "sleepy.sh", "sleep 60\n")
    events: list[ProcessEvent] = []
    spawned = asyncio.Event()

    def observe(ev: ProcessEvent) -> None:
        events.append(ev)
        if ev.kind == "spawned":
            spawned.set()

    factory = ExecTransportFactory([str(root) + "/", os.path.realpath("/bin/sh")], grace_period_s=1.0, observer=observe)

    async def run_it(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        await io.call(IoCall(namespace="exec", request={"kind": "run_program_v1", "program_path": program}))

    token = CancelToken()
    ms = MemoryStore()
    task = asyncio.ensure_future(
        start_plan(
            _engine(transports=[factory]), ms.stores, make_plan([("s1", FnState(run_it))]), base_config(), cancel=token
        )
    )
    await spawned.wait()
    token.cancel("operator")
    res = await task
    assert res.phase is RunPhase.CANCELLED
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    assert t[-2:] == [("F", "s1", "run_cancelled", False), ("RC", "Cancelled", t[0][1])]
    kinds = [(e.kind, e.signal) for e in events]
    assert ("signal_sent", signal.SIGTERM) in kinds and kinds[-1][0] == "reaped"
    pid = events[0].pid
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: not our child any more, no zombie


async def test_c3_resume_cancelled_run_and_cancel_finished_run() -> None:
    """C3: resuming a cancelled run returns Cancelled and appends nothing; cancelling a completed run is a
    clear error (run_already_finished); an unknown run → run_not_found."""
    ms = MemoryStore()
    sleeper = FakeSleeper(block=True)
    token = CancelToken()
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_secs(60))))
    plan = make_plan([("s1", Flaky())])
    task = asyncio.ensure_future(start_plan(_engine(sleeper=sleeper), ms.stores, plan, cfg, cancel=token))
    await sleeper.sleeping.wait()
    token.cancel()
    cancelled = await task
    head = await ms.events.head_seq(cancelled.run_id)
    res = await _engine(plan).resume(ms.stores, cancelled.run_id)
    assert res.phase is RunPhase.CANCELLED and res.final_snapshot_id == cancelled.final_snapshot_id
    assert await ms.events.head_seq(cancelled.run_id) == head

    with pytest.raises(StorageError) as ei:
        await request_cancel(ms.stores, cancelled.run_id, "again")
    assert ei.value.code == "run_already_finished" and "already finished" in ei.value.message
    other_id = fixed_run_ids("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa")
    done = await start_plan(_engine(run_ids=other_id), ms.stores, make_plan([("s1", WriteKey("a", 1))]), base_config())
    with pytest.raises(StorageError) as ei:
        await request_cancel(ms.stores, done.run_id)
    assert ei.value.code == "run_already_finished"
    with pytest.raises(StorageError) as ei:
        await request_cancel(ms.stores, fixed_run_ids("99999999-9999-4999-8999-999999999999")())
    assert ei.value.code == "run_not_found"


# ------------------------------------------------------------------------------------------- retry visibility


async def test_r1_retry_scheduled_event() -> None:
    """R1: Normal profile; a retried state emits retry_scheduled with delay_ms = backoff(failed attempt) and
    not_before_millis = StateFailed time + delay."""
    ms = MemoryStore()
    clock = FakeClock(start_millis=5_000_000, step=3)
    sleeper = FakeSleeper(clock)
    cfg = base_config(
        event_profile=EventProfile.NORMAL,
        retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_millis(250))),
    )
    res = await start_plan(_engine(clock=clock, sleeper=sleeper), ms.stores, make_plan([("s1", Flaky(2))]), cfg)
    assert res.phase is RunPhase.COMPLETED
    envs = await read_events(ms.stores, res.run_id)
    sched = [
        (i, e) for i, e in enumerate(envs) if isinstance(e.event, DomainEvent) and e.event.name == "retry_scheduled"
    ]
    assert len(sched) == 2
    for n, (i, env) in enumerate(sched):
        assert isinstance(env.event, DomainEvent)
        payload = RetryScheduled.model_validate(env.event.payload)
        failed = envs[i - 1]
        assert isinstance(failed.event, StateFailed)
        assert (payload.state_id, payload.failed_attempt, payload.next_attempt) == (sid("s1"), n, n + 1)
        assert payload.delay_ms == 250
        assert failed.ts_millis is not None and payload.not_before_millis == failed.ts_millis + 250
    assert sleeper.requested_ms == [250, 250]


# ------------------------------------------------------------------------------------------- replay verdict


class _Recorder:
    """A state recording time, randomness and an exec fact, writing what it saw (deterministic under replay)."""

    def __init__(self, program: str, tweak: str = "") -> None:
        self.program = program
        self.tweak = tweak

    def plan(self) -> ExecutionPlan:
        async def t(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
            ctx.write("t", await io.now_millis())

        async def r(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
            ctx.write("r", (await io.random_bytes(4)).hex() + self.tweak)

        async def x(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
            call = IoCall(
                namespace="exec",
                request={"kind": "run_program_v1", "program_path": self.program},
                fact_key=FactKey("demo:exec|n:0"),
            )
            ctx.write("x", (await io.call(call)).response)

        return make_plan([("t", FnState(t)), ("r", FnState(r)), ("x", FnState(x))], [("t", "r"), ("r", "x")])


async def test_r2_replay_verdict(tmp_path: Path) -> None:
    """R2: run live (time, randomness, exec fact); "replay run R" → a new Replay run with R's final id:
    deterministic, no transport used. A changed op → diverged naming the changed state."""
    root = tmp_path.resolve()
    program = _script(root, "answer.sh", "cat >/dev/null; printf '{\"ok\":1}'\n")
    factory = ExecTransportFactory([str(root) + "/", os.path.realpath("/bin/sh")])
    ms = MemoryStore()
    live_plan = _Recorder(program).plan()
    live = await start_plan(
        _engine(live_plan, transports=[factory], random_source=os.urandom), ms.stores, live_plan, base_config()
    )
    assert live.phase is RunPhase.COMPLETED
    assert (await snapshot_of(ms.stores, live.final_snapshot_id))["x"] == {"ok": 1}  # type: ignore[arg-type]

    from engine.testing import CountingFactory

    tracking = CountingFactory(group="exec")
    verdict = await _engine(live_plan, transports=[tracking]).replay(ms.stores, live.run_id)
    assert verdict.verdict == "deterministic" and verdict.deterministic and verdict.diverged_state is None
    assert verdict.replay_run_id != live.run_id and verdict.result.phase is RunPhase.COMPLETED
    assert verdict.source_final == verdict.replay_final == live.final_snapshot_id
    assert tracking.make_count == 0
    replay_envs = await read_events(ms.stores, verdict.replay_run_id)
    from engine._runtime.executor import load_manifest

    rs = replay_envs[0].event
    manifest = await load_manifest(ms.stores, rs.manifest_id)  # type: ignore[union-attr]
    assert str(manifest.run_config.io_mode) == "Replay"

    changed = _Recorder(program, tweak="!").plan()
    verdict = await _engine(changed, transports=[tracking]).replay(ms.stores, live.run_id)
    assert verdict.verdict == "diverged" and verdict.diverged_state == sid("r")
    assert verdict.replay_final != verdict.source_final


async def test_r2_replay_of_unknown_run() -> None:
    """R2 [§0.11]: replaying a run that does not exist → run_not_found."""
    with pytest.raises(RunError) as ei:
        await _engine(make_plan([("s1", WriteKey("a", 1))])).replay(
            MemoryStore().stores, fixed_run_ids("99999999-9999-4999-8999-999999999999")()
        )
    assert ei.value.code == "run_not_found"


# ------------------------------------------------------------------------------------------- side effects


async def test_s1_side_effect_without_idempotency_key_rejected() -> None:
    """S1: an ApplySideEffect state with Idempotency::None → missing_idempotency_key before anything is stored."""
    ms = MemoryStore()
    meta = StateMeta(side_effects=SideEffectKind.APPLY_SIDE_EFFECT, idempotency=Idempotency.NONE)
    plan = make_plan([("s1", WriteKey("y", 2, meta))])
    with pytest.raises(RunError) as ei:
        await start_plan(_engine(), ms.stores, plan, base_config())
    assert ei.value.kind is RunErrorKind.INVALID_PLAN and ei.value.code == "missing_idempotency_key"
    assert await ms.events.list_runs() == []
    empty = StateMeta(side_effects=SideEffectKind.APPLY_SIDE_EFFECT, idempotency=Idempotency.key(""))
    with pytest.raises(RunError) as ei:
        await start_plan(_engine(), ms.stores, make_plan([("s1", WriteKey("y", 2, empty))]), base_config())
    assert ei.value.code == "missing_idempotency_key"


async def test_s1_fail_state_unaffected() -> None:
    """S1 [control]: a plain failing state is not a side-effect declaration problem."""
    res = await start_plan(_engine(), MemoryStore().stores, make_plan([("s1", Fail())]), base_config())
    assert res.phase is RunPhase.FAILED


async def test_z_deterministic_random_source() -> None:
    """Z [testing]: counting_random makes random facts reproducible across engines."""
    assert counting_random(4) == bytes([0, 1, 2, 3])
