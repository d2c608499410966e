"""Retry now: an operator's control request cuts a retry backoff short (issue 14, "Retry now").

The request is stored through the ``ControlStore`` (like a cancel request) and the engine's backoff wait polls for
it. Each test proves the early retry from the times the engine recorded: the retry's ``StateEntered`` lands before
the ``not_before_millis`` its ``retry_scheduled`` announced.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.config import Duration, EventProfile, Fixed, RetryPolicy
from engine.engine import RunPhase
from engine.errors import StorageError
from engine.events import DomainEvent, EventEnvelope, StateEntered
from engine.runtime import Engine, request_retry_now
from engine.stores import FsStore, MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    Flaky,
    base_config,
    fixed_run_ids,
    make_plan,
    read_events,
    sid,
    start_plan,
)

_BACKOFF = RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_secs(600)))


def _retry_config() -> Any:
    return base_config(event_profile=EventProfile.NORMAL, retry_policy=_BACKOFF)


def _retry_scheduled(envs: list[EventEnvelope]) -> list[EventEnvelope]:
    return [e for e in envs if isinstance(e.event, DomainEvent) and e.event.name == "retry_scheduled"]


def _entered(envs: list[EventEnvelope], attempt: int) -> EventEnvelope:
    return next(e for e in envs if isinstance(e.event, StateEntered) and e.event.attempt == attempt)


async def _wait_for_backoff(stores: Any) -> tuple[Any, list[EventEnvelope]]:
    """The run's id and events once its ``retry_scheduled`` is in the store."""
    for _ in range(2000):
        runs = await stores.events.list_runs()
        if runs:
            envs = await read_events(stores, runs[0])
            if _retry_scheduled(envs):
                return runs[0], envs
        await asyncio.sleep(0.005)
    raise AssertionError("the run never reached its backoff")


async def test_retry_now_cuts_a_blocked_backoff_short() -> None:
    """A backoff that would never end on its own (blocking sleeper) ends when retry-now is requested."""
    ms = MemoryStore()
    sleeper = FakeSleeper(block=True)
    engine = Engine(clock=FakeClock(), sleeper=sleeper, run_ids=fixed_run_ids(), cancel_poll_interval=0.005)
    task = asyncio.ensure_future(start_plan(engine, ms.stores, make_plan([("s1", Flaky(1))]), _retry_config()))
    await sleeper.sleeping.wait()
    run_id, envs = await _wait_for_backoff(ms.stores)
    (sched,) = _retry_scheduled(envs)
    assert isinstance(sched.event, DomainEvent) and isinstance(sched.event.payload, dict)
    assert sched.event.payload["next_attempt"] == 1
    req = await request_retry_now(ms.stores, run_id, str(sid("s1")), 1)
    assert (req.state_id, req.attempt) == (str(sid("s1")), 1)
    res = await task
    assert res.phase is RunPhase.COMPLETED
    assert sleeper.requested == [600.0] and sleeper.interrupted == 1
    envs = await read_events(ms.stores, run_id)
    retry = _entered(envs, 1)
    assert retry.ts_millis is not None and retry.ts_millis < sched.event.payload["not_before_millis"]


@pytest.mark.parametrize("backend", ["memory", "fs"])
async def test_retry_now_with_the_real_sleeper_retries_before_not_before(backend: str, tmp_path: Path) -> None:
    """With the real asyncio sleeper and a 600 s backoff, the request from another handle on the store starts the
    next attempt long before the announced ``not_before_millis`` (recorded times)."""
    store: Any = MemoryStore() if backend == "memory" else FsStore(tmp_path / "store")
    other: Any = store if backend == "memory" else FsStore(tmp_path / "store")
    engine = Engine(run_ids=fixed_run_ids(), cancel_poll_interval=0.05)
    task = asyncio.ensure_future(start_plan(engine, store.stores, make_plan([("s1", Flaky(1))]), _retry_config()))
    run_id, envs = await _wait_for_backoff(other.stores)
    (sched,) = _retry_scheduled(envs)
    assert isinstance(sched.event, DomainEvent) and isinstance(sched.event.payload, dict)
    await request_retry_now(other.stores, run_id, str(sid("s1")), 1)
    res = await task
    assert res.phase is RunPhase.COMPLETED
    envs = await read_events(store.stores, run_id)
    retry = _entered(envs, 1)
    assert retry.ts_millis is not None and retry.ts_millis < sched.event.payload["not_before_millis"]


async def test_retry_now_for_another_attempt_does_not_cut_the_wait() -> None:
    """A request names the attempt it is for: a stale one (an earlier backoff) never shortens a later one."""
    ms = MemoryStore()
    sleeper = FakeSleeper(block=True)
    engine = Engine(clock=FakeClock(), sleeper=sleeper, run_ids=fixed_run_ids(), cancel_poll_interval=0.005)
    task = asyncio.ensure_future(start_plan(engine, ms.stores, make_plan([("s1", Flaky(1))]), _retry_config()))
    run_id, _ = await _wait_for_backoff(ms.stores)
    await ms.events.request_retry_now(run_id, str(sid("s1")), 2)  # not the attempt it waits for
    await asyncio.sleep(0.1)  # twenty polls
    assert not task.done()
    await request_retry_now(ms.stores, run_id, str(sid("s1")), 1)
    assert (await task).phase is RunPhase.COMPLETED


async def test_request_retry_now_refuses_what_is_not_waiting() -> None:
    ms = MemoryStore()
    sleeper = FakeSleeper(block=True)
    engine = Engine(clock=FakeClock(), sleeper=sleeper, run_ids=fixed_run_ids(), cancel_poll_interval=0.005)
    task = asyncio.ensure_future(start_plan(engine, ms.stores, make_plan([("s1", Flaky(1))]), _retry_config()))
    run_id, _ = await _wait_for_backoff(ms.stores)
    with pytest.raises(StorageError) as info:
        await request_retry_now(ms.stores, run_id, str(sid("s1")), 2)
    assert info.value.code == "not_in_backoff"
    await request_retry_now(ms.stores, run_id, str(sid("s1")), 1)
    await task
    with pytest.raises(StorageError) as info:
        await request_retry_now(ms.stores, run_id, str(sid("s1")), 1)
    assert info.value.code == "run_already_finished"
