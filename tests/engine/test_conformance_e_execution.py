"""CONFORMANCE E: normal execution, failures, retries, backoff, error redaction."""

from __future__ import annotations

import json

import pytest

from engine.config import Duration, Exponential, Fixed, RetryPolicy
from engine.engine import RunPhase
from engine.errors import StateError
from engine.events import StateFailed
from engine.ids import ArtifactId
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.testing import (
    Fail,
    FakeClock,
    FakeSleeper,
    Flaky,
    FnState,
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


def _engine(sleeper: FakeSleeper | None = None) -> Engine:
    return Engine(clock=FakeClock(), sleeper=sleeper or FakeSleeper(), run_ids=fixed_run_ids())


async def test_e24_three_state_success_trace() -> None:
    """E24: s1→s2→s3 writing a, b, c → Completed; the exact 8-event trace; every ts filled (§0.4)."""
    ms = MemoryStore()
    plan = make_plan(
        [("s1", WriteKey("a", 1)), ("s2", WriteKey("b", 2)), ("s3", WriteKey("c", 3))], [("s1", "s2"), ("s2", "s3")]
    )
    res = await start_plan(_engine(), ms.stores, plan, base_config())
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
    assert res.phase is RunPhase.COMPLETED and res.final_snapshot_id == s3
    assert await snapshot_of(ms.stores, s3) == {"a": 1, "b": 2, "c": 3}
    assert all(e.ts_millis is not None for e in envs)


async def test_e25_non_retryable_failure_mid_plan() -> None:
    """E25: s2 fails boom non-retryable → Failed, final S1, s3 never entered, error.state_id filled."""
    ms = MemoryStore()
    s3 = WriteKey("c", 3)
    plan = make_plan([("s1", WriteKey("a", 1)), ("s2", Fail("boom")), ("s3", s3)], [("s1", "s2"), ("s2", "s3")])
    res = await start_plan(_engine(), ms.stores, plan, base_config())
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    i, s1 = t[0][1], t[2][2]
    assert t == [
        ("RS", i),
        ("E", "s1", 0, i),
        ("C", "s1", s1),
        ("E", "s2", 0, s1),
        ("F", "s2", "boom", False),
        ("RC", "Failed", s1),
    ]
    failed = envs[4].event
    assert isinstance(failed, StateFailed)
    assert failed.error.state_id == "machine.main.s2" and failed.failure_snapshot_id is None
    assert res.phase is RunPhase.FAILED and res.final_snapshot_id == s1
    assert s3.calls == 0


async def test_e26_retryable_error_retried() -> None:
    """E26: Flaky → Completed; entered [0,1]; RS, E0, F(flaky,true), E1, C, RC; handler invoked twice."""
    ms = MemoryStore()
    flaky = Flaky()
    res = await start_plan(_engine(), ms.stores, make_plan([("s1", flaky)]), base_config())
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    i, s1 = t[0][1], t[4][2]
    assert t == [
        ("RS", i),
        ("E", "s1", 0, i),
        ("F", "s1", "flaky", True),
        ("E", "s1", 1, i),
        ("C", "s1", s1),
        ("RC", "Completed", s1),
    ]
    assert entered(envs, "s1") == [0, 1] and flaky.calls == 2 and res.phase is RunPhase.COMPLETED


@pytest.mark.parametrize(("max_attempts", "expected"), [(3, [0, 1, 2]), (1, [0]), (0, [0])])
async def test_e27_retry_exhaustion(max_attempts: int, expected: list[int]) -> None:
    """E27: always-retryable failure → entered [0..max-1] (0 and 1 mean once), then RC(Failed, I)."""
    ms = MemoryStore()
    sleeper = FakeSleeper()
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=max_attempts, backoff=Fixed(delay=Duration.from_millis(5))))
    res = await start_plan(_engine(sleeper), ms.stores, make_plan([("s1", Fail("flaky", retryable=True))]), cfg)
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    assert entered(envs, "s1") == expected
    assert [x for x in t if x[0] == "F"] == [("F", "s1", "flaky", True)] * len(expected)
    assert t[-1] == ("RC", "Failed", t[0][1])
    assert res.phase is RunPhase.FAILED and res.final_snapshot_id == t[0][1]
    assert sleeper.requested_ms == [5] * (len(expected) - 1)  # no sleep after the final failing attempt


@pytest.mark.parametrize(
    ("backoff", "attempts", "expected_ms"),
    [
        (
            Exponential(base_delay=Duration.from_millis(100), max_delay=Duration.from_millis(1000)),
            12,
            [100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000, 1000, 1000],
        ),
        (Fixed(delay=Duration.from_millis(250)), 4, [250, 250, 250]),
        (Fixed(delay=Duration.from_millis(0)), 4, []),
    ],
    ids=["exponential", "fixed", "zero"],
)
async def test_e29_backoff_values(backoff: Fixed | Exponential, attempts: int, expected_ms: list[int]) -> None:
    """E29: the engine sleeps backoff(failed attempt): exponential 100,200,400,800,1000…; fixed 250; zero → no sleep."""
    ms = MemoryStore()
    sleeper = FakeSleeper()
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=attempts, backoff=backoff))
    await start_plan(_engine(sleeper), ms.stores, make_plan([("s1", Fail("flaky", retryable=True))]), cfg)
    assert sleeper.requested_ms == expected_ms


def test_e29_backoff_policy_unit() -> None:
    """E29: RetryPolicy.backoff_after for attempts 0,1,2,3,4,10."""
    policy = RetryPolicy(
        max_attempts=3, backoff=Exponential(base_delay=Duration.from_millis(100), max_delay=Duration.from_millis(1000))
    )
    assert [policy.backoff_after(a).total_millis for a in (0, 1, 2, 3, 4, 10)] == [100, 200, 400, 800, 1000, 1000]


async def test_e30_error_redaction_before_persistence() -> None:
    """E30: secret message and details → state_id filled, message "error details redacted", details null."""
    ms = MemoryStore()

    async def fail(ctx: object, io: object, rec: object) -> None:
        raise StateError.new(
            "secret_error", "password leaked: hunter2", details={"private_key": "0123abcd"}, retryable=False
        )

    res = await start_plan(_engine(), ms.stores, make_plan([("s1", FnState(fail))]), base_config())
    assert res.phase is RunPhase.FAILED
    envs = await read_events(ms.stores, res.run_id)
    failed = [e.event for e in envs if isinstance(e.event, StateFailed)]
    assert len(failed) == 1
    err = failed[0].error
    assert err.state_id == "machine.main.s1" and err.message == "error details redacted" and err.info.details is None
    assert err.code == "secret_error"
    blob = "".join(e.to_json() for e in envs).lower()
    assert "hunter2" not in blob and "private_key" not in blob


async def test_e_details_dropped_even_when_clean() -> None:
    """E [derived §8 step 8]: details are dropped from every persisted error, the clean message kept."""
    ms = MemoryStore()

    async def fail(ctx: object, io: object, rec: object) -> None:
        raise StateError.new("plain", "nothing secret here", details={"k": 1})

    res = await start_plan(_engine(), ms.stores, make_plan([("s1", FnState(fail))]), base_config())
    envs = await read_events(ms.stores, res.run_id)
    ev = envs[2].event
    assert isinstance(ev, StateFailed) and ev.error.info.details is None and ev.error.message == "nothing secret here"


async def test_e_handler_exception_becomes_state_failure() -> None:
    """E [this project]: a handler raising a non-contract exception fails the state (non-retryable), no crash."""
    ms = MemoryStore()

    async def boom(ctx: object, io: object, rec: object) -> None:
        raise ZeroDivisionError("x")

    res = await start_plan(_engine(), ms.stores, make_plan([("s1", FnState(boom))]), base_config())
    t = trace(await read_events(ms.stores, res.run_id))
    assert t[2] == ("F", "s1", "state_handler_exception", False) and res.phase is RunPhase.FAILED


async def test_e_unchanged_context_keeps_snapshot_id() -> None:
    """E [§8 step 9]: a state that writes nothing completes with its base snapshot id."""
    ms = MemoryStore()

    async def noop(ctx: object, io: object, rec: object) -> None:
        return None

    res = await start_plan(_engine(), ms.stores, make_plan([("s1", FnState(noop))]), base_config(), {"k": "v"})
    t = trace(await read_events(ms.stores, res.run_id))
    assert t[2] == ("C", "s1", t[0][1]) and res.final_snapshot_id == ArtifactId(t[0][1])
    assert json.loads(await ms.artifacts.get(res.final_snapshot_id)) == {"k": "v"}
