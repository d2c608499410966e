"""Recovery of a failed run ("fix it, then resume"): ``Engine.recover`` and ``plan_recovery``.

A run that ended ``RunCompleted{Failed}`` is final (ENGINE-SPEC §13 step 7). Recovery starts a new
run that carries the completed states over (same snapshots, handlers not called again), drops the
observations made by the failed attempts, and continues at the failed state.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.context import DynContext
from engine.errors import RunError, StateError
from engine.events import DomainEvent, RunCompleted
from engine.io import IoCall, IoProvider
from engine.recorder import EventRecorder
from engine.runtime import Engine, plan_recovery
from engine.stores import MemoryStore
from engine.testing import (
    CountingFactory,
    FakeClock,
    FakeSleeper,
    FnState,
    base_config,
    fixed_run_ids,
    make_plan,
    read_events,
    sid,
    start_plan,
    trace,
)

SOURCE = "11111111-1111-4111-8111-111111111111"
RECOVERY = "22222222-2222-4222-8222-222222222222"


class World:
    """The outside world the failing state observes: ``ready`` is what the operator fixes."""

    def __init__(self) -> None:
        self.ready = False

    def respond(self, namespace: str, request: Any, n: int) -> Any:
        if request.get("q") == "read":
            return {"value": 41}
        return {"ready": self.ready}


def _plan(world: World) -> tuple[Any, FnState, FnState, FnState]:
    async def read(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        res = await io.call(IoCall(namespace="test", request={"q": "read"}, fact_key="read:1"))
        ctx.write("a", res.response["value"])

    async def check(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        res = await io.call(IoCall(namespace="test", request={"q": "check"}, fact_key="check:1"))
        if not res.response["ready"]:
            raise StateError.new("needs_fix", "the outside world is not ready")
        ctx.write("b", ctx.read("a") + 1)

    async def report(ctx: DynContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("c", "done")

    s1, s2, s3 = FnState(read), FnState(check), FnState(report)
    plan = make_plan([("s1", s1), ("s2", s2), ("s3", s3)], [("s1", "s2"), ("s2", "s3")])
    return plan, s1, s2, s3


def _engine(plan: Any, factory: CountingFactory) -> Engine:
    return Engine(
        plan_resolver=lambda manifest: plan,
        transports=[factory],
        clock=FakeClock(),
        sleeper=FakeSleeper(),
        run_ids=fixed_run_ids(SOURCE, RECOVERY),
    )


async def test_recover_failed_run_continues_at_failed_state_with_fresh_observations() -> None:
    world = World()
    plan, s1, s2, s3 = _plan(world)
    factory = CountingFactory(respond=world.respond)
    engine = _engine(plan, factory)
    store = MemoryStore()
    first = await start_plan(engine, store.stores, plan, base_config())
    assert str(first.phase) == "Failed"
    source_events = await read_events(store.stores, first.run_id)

    described = await plan_recovery(store.stores, first.run_id, plan)
    assert described.failed_state_id == sid("s2")
    assert described.carried_states == (sid("s1"),)
    assert described.next_states == (sid("s2"), sid("s3"))

    world.ready = True  # the operator fixes the cause outside
    result = await engine.recover(store.stores, first.run_id)

    assert str(result.phase) == "Completed"
    assert str(result.run_id) == RECOVERY
    assert s1.calls == 1, "a carried-over state is not run again"
    assert s2.calls == 2 and s3.calls == 1
    assert factory.calls_to("test") == 3  # read once, check twice (the failed observation is not reused)
    assert await read_events(store.stores, first.run_id) == source_events, "the failed run is never changed"

    events = await read_events(store.stores, result.run_id)
    shape = trace(events)
    i1 = source_events[1].event.base_snapshot_id  # type: ignore[union-attr]
    s1_snap = source_events[3].event.context_snapshot_id  # type: ignore[union-attr]
    assert shape[0] == ("RS", i1)
    assert shape[1] == ("D", "recovered_from")
    assert events[1].event.payload == {  # type: ignore[union-attr]
        "source_run_id": SOURCE,
        "failed_state_id": "machine.main.s2",
        "carried_states": 1,
    }
    carried = [
        e.event.payload["key"]  # type: ignore[index, call-overload]
        for e in events
        if isinstance(e.event, DomainEvent)
        and e.event.name == "fact_recorded"
        and e.event.payload.get("meta", {}).get("recovered_from") == SOURCE  # type: ignore[union-attr]
    ]
    assert carried == ["read:1"], "the failed attempt's observation check:1 is not carried over"
    assert ("E", "s1", 0, i1) in shape and ("C", "s1", s1_snap) in shape
    assert shape.index(("C", "s1", s1_snap)) < shape.index(("E", "s2", 0, s1_snap))
    assert isinstance(events[-1].event, RunCompleted)


async def test_recovery_run_replays_deterministically() -> None:
    world = World()
    plan, *_ = _plan(world)
    factory = CountingFactory(respond=world.respond)
    engine = _engine(plan, factory)
    store = MemoryStore()
    first = await start_plan(engine, store.stores, plan, base_config())
    world.ready = True
    recovered = await engine.recover(store.stores, first.run_id)
    calls = len(factory.calls)
    verdict = await engine.replay(store.stores, recovered.run_id)
    assert verdict.deterministic, verdict
    assert verdict.replay_final == recovered.final_snapshot_id
    assert len(factory.calls) == calls, "replay never calls a transport"


async def test_recover_refuses_a_run_that_did_not_fail() -> None:
    world = World()
    world.ready = True
    plan, *_ = _plan(world)
    engine = _engine(plan, CountingFactory(respond=world.respond))
    store = MemoryStore()
    done = await start_plan(engine, store.stores, plan, base_config())
    assert str(done.phase) == "Completed"
    before = await store.stores.events.list_runs()  # type: ignore[attr-defined]
    with pytest.raises(RunError) as info:
        await engine.recover(store.stores, done.run_id)
    assert info.value.code == "run_not_failed"
    assert "completed" in info.value.message
    assert await store.stores.events.list_runs() == before  # type: ignore[attr-defined]


async def test_recover_unknown_run_is_not_found() -> None:
    plan, *_ = _plan(World())
    engine = _engine(plan, CountingFactory())
    with pytest.raises(RunError) as info:
        await engine.recover(MemoryStore().stores, "33333333-3333-4333-8333-333333333333")  # type: ignore[arg-type]
    assert info.value.code == "run_not_found"
