"""A sequential run's states run in the scheduler's own task (issue 12: engine CPU per state), with the semantics of a
state task: the run's cancel interrupts a suspended handler, a caller's cancel still reaches the caller, and a
handler's own ``asyncio.timeout`` cancels the handler, never the run."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

from engine.config import FanOutJoin
from engine.engine import RunPhase
from engine.errors import StateError
from engine.io import IoProvider
from engine.recorder import EventRecorder
from engine.runtime import CODE_RUN_CANCELLED, CancelToken, Engine, request_cancel
from engine.stores import MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    FnState,
    WriteKey,
    base_config,
    fixed_run_ids,
    make_plan,
    read_events,
    start_plan,
    trace,
)


def _engine() -> Engine:
    return Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())


def _chain(n: int) -> Any:
    states = [(f"s{i}", WriteKey(f"k{i}", i)) for i in range(n)]
    return make_plan(states, [(f"s{i}", f"s{i + 1}") for i in range(n - 1)])


async def _tasks_made_by(coro: Coroutine[Any, Any, Any]) -> tuple[Any, int]:
    """Run ``coro`` in a task of its own; return its result and how many tasks were made meanwhile (that one aside)."""
    loop = asyncio.get_running_loop()
    made = 0

    def factory(lp: asyncio.AbstractEventLoop, c: Generator[Any, None, Any] | Coroutine[Any, Any, Any]) -> Any:
        nonlocal made
        made += 1
        return asyncio.Task(c, loop=lp)

    old = loop.get_task_factory()
    loop.set_task_factory(factory)
    try:
        result = await asyncio.ensure_future(coro)
    finally:
        loop.set_task_factory(old)
    return result, made - 1


async def test_a_sequential_run_makes_no_task_per_state() -> None:
    """Before: one task per state (40 states: 40+ tasks). Now the count does not grow with the states."""
    _, small = await _tasks_made_by(start_plan(_engine(), MemoryStore().stores, _chain(2), base_config()))
    res, large = await _tasks_made_by(start_plan(_engine(), MemoryStore().stores, _chain(40), base_config()))
    assert res.phase is RunPhase.COMPLETED
    assert large == small


async def test_fan_out_still_runs_each_state_in_its_own_task() -> None:
    cfg = base_config(execution_mode=FanOutJoin(max_concurrency=2))
    _, small = await _tasks_made_by(start_plan(_engine(), MemoryStore().stores, _chain(2), cfg))
    _, large = await _tasks_made_by(start_plan(_engine(), MemoryStore().stores, _chain(40), cfg))
    assert large - small == 38


async def test_run_cancel_interrupts_a_suspended_handler_and_the_run_ends_cancelled() -> None:
    ms = MemoryStore()
    entered = asyncio.Event()
    seen: list[str] = []

    async def hang(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    token = CancelToken()
    plan = make_plan([("a", WriteKey("a", 1)), ("b", FnState(hang)), ("c", WriteKey("c", 3))], [("a", "b"), ("b", "c")])
    task = asyncio.ensure_future(start_plan(_engine(), ms.stores, plan, base_config(), cancel=token))
    await entered.wait()
    token.cancel("stop")
    res = await task
    t = trace(await read_events(ms.stores, res.run_id))
    assert res.phase is RunPhase.CANCELLED and seen == ["cancelled"]
    assert [x[0] for x in t] == ["RS", "E", "C", "E", "F", "RC"]
    assert t[4] == ("F", "b", CODE_RUN_CANCELLED, False) and t[5][1] == "Cancelled"
    assert asyncio.current_task() is not None and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_handler_that_swallows_the_run_cancel_still_ends_the_run_cancelled() -> None:
    ms = MemoryStore()
    entered = asyncio.Event()

    async def stubborn(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed: the state completes
            await asyncio.Event().wait()
        ctx.write("b", 2)
        await asyncio.sleep(0)  # and suspends again: nothing is cancelled twice

    token = CancelToken()
    plan = make_plan([("b", FnState(stubborn)), ("c", WriteKey("c", 3))], [("b", "c")])
    task = asyncio.ensure_future(start_plan(_engine(), ms.stores, plan, base_config(), cancel=token))
    await entered.wait()
    token.cancel("stop")
    res = await task
    t = trace(await read_events(ms.stores, res.run_id))
    assert res.phase is RunPhase.CANCELLED
    assert [x[0] for x in t] == ["RS", "E", "C", "RC"] and t[-1][1] == "Cancelled"


async def test_a_callers_cancel_reaches_the_caller_not_the_run() -> None:
    ms = MemoryStore()
    entered = asyncio.Event()

    async def hang(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(start_plan(_engine(), ms.stores, make_plan([("s1", FnState(hang))]), base_config()))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (run_id,) = await ms.events.list_runs()
    assert [x[0] for x in trace(await read_events(ms.stores, run_id))] == ["RS", "E"]  # left open: an orphan


async def test_a_handlers_own_timeout_fails_the_state_not_the_run() -> None:
    """``asyncio.timeout`` entered before the handler's first suspension binds to the task running the handler."""
    ms = MemoryStore()

    async def slow(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            raise StateError.new("too_slow", "timed out", retryable=False) from None

    plan = make_plan([("a", FnState(slow)), ("b", WriteKey("b", 2))], [("a", "b")])
    res = await start_plan(_engine(), ms.stores, plan, base_config())
    t = trace(await read_events(ms.stores, res.run_id))
    assert res.phase is RunPhase.FAILED
    assert t[2] == ("F", "a", "too_slow", False) and t[-1][1] == "Failed"


async def test_a_token_cancelled_by_a_handler_stops_before_the_next_state() -> None:
    """No yield to the loop is needed between states for the cancel to count: the next state is never entered."""
    ms = MemoryStore()
    token = CancelToken()

    async def cancel_it(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("a", 1)
        token.cancel("enough")

    nxt = WriteKey("b", 2)
    plan = make_plan([("a", FnState(cancel_it)), ("b", nxt)], [("a", "b")])
    res = await start_plan(_engine(), ms.stores, plan, base_config(), cancel=token)
    t = trace(await read_events(ms.stores, res.run_id))
    assert res.phase is RunPhase.CANCELLED and nxt.calls == 0
    assert [x[0] for x in t] == ["RS", "E", "C", "RC"]


async def test_a_long_run_of_states_that_never_suspend_still_lets_the_loop_run() -> None:
    """A cancel asked through the control store by another task lands mid-run (the run yields every few states)."""
    ms = MemoryStore()
    engine = Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids(), cancel_poll_interval=0)
    task = asyncio.ensure_future(start_plan(engine, ms.stores, _chain(400), base_config()))
    while not await ms.events.list_runs():
        await asyncio.sleep(0)
    (run_id,) = await ms.events.list_runs()
    await request_cancel(ms.stores, run_id, "from another task")
    res = await task
    t = trace(await read_events(ms.stores, res.run_id))
    assert res.phase is RunPhase.CANCELLED
    assert len(t) < 400


_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("mfm_test_var", default="unset")


async def test_a_context_variable_a_handler_sets_stays_in_its_state() -> None:
    """As with a task per state: each handler sees the caller's value, never one set by an earlier state's handler,
    and the caller does not see the handlers' values after the run (before: the next state and the caller saw them)."""
    seen: list[str] = []

    async def set_it(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        seen.append(_VAR.get())
        _VAR.set("set by a")

    async def read_it(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        seen.append(_VAR.get())

    token = _VAR.set("caller")
    try:
        plan = make_plan([("a", FnState(set_it)), ("b", FnState(read_it))], [("a", "b")])
        res = await start_plan(_engine(), MemoryStore().stores, plan, base_config())
        after = _VAR.get()
    finally:
        _VAR.reset(token)
    assert res.phase is RunPhase.COMPLETED
    assert seen == ["caller", "caller"] and after == "caller"


async def test_a_handler_keeps_its_context_across_suspensions_and_sees_a_failed_await() -> None:
    """The state's context holds while its handler waits on futures (woken by another task, or failed)."""
    seen: list[str] = []
    wake = asyncio.Event()

    async def waits(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        _VAR.set("mine")
        await asyncio.sleep(0)
        await wake.wait()
        seen.append(_VAR.get())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_exception, KeyError("boom"))
        try:
            await fut
        except KeyError:
            seen.append(f"{_VAR.get()} caught")
        raise StateError.new("done_waiting", "failed after waiting", retryable=False)

    ms = MemoryStore()
    task = asyncio.ensure_future(start_plan(_engine(), ms.stores, make_plan([("a", FnState(waits))]), base_config()))
    for _ in range(5):
        await asyncio.sleep(0)
    wake.set()
    res = await task
    assert seen == ["mine", "mine caught"] and _VAR.get() == "unset"
    assert res.phase is RunPhase.FAILED
    assert trace(await read_events(ms.stores, res.run_id))[2] == ("F", "a", "done_waiting", False)
