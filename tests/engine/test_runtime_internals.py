"""Runtime internals: incremental snapshot encoding, cheap record construction, the writer, cancellation
corners, concurrency with another writer, injectables."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._runtime.context_runtime import _TOMBSTONE, SnapshotCache, _Members, encode_member
from engine._wire import construct
from engine.config import Duration, EventProfile, FanOutJoin, Fixed, RetryPolicy
from engine.engine import RunPhase, Stores
from engine.errors import RunError, RunErrorKind, StorageError
from engine.events import (
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.hashing import artifact_id_for_bytes, canonical_json_bytes
from engine.ids import ArtifactId, RunId
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
    sid,
    snapshot_of,
    start_plan,
    trace,
)

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_keys = st.text(max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    base=st.dictionaries(_keys, _json, max_size=6),
    delta=st.dictionaries(_keys, st.one_of(_json, st.just("__tombstone__")), max_size=4),
)
def test_incremental_snapshot_bytes_equal_full_canonical_encoding(base: dict[str, Any], delta: dict[str, Any]) -> None:
    """Per-member encoding + join (with insertions, updates and deletions) == canonical_json_bytes of the result."""
    from engine.hashing import CanonicalJsonError

    try:
        canonical_json_bytes(base)
        canonical_json_bytes({k: v for k, v in delta.items() if v != "__tombstone__"})
    except CanonicalJsonError:
        return  # secret-looking generated text: not a snapshot
    members = _Members({k: encode_member(k, v) for k, v in base.items()})
    overlay = {k: (_TOMBSTONE if v == "__tombstone__" else v) for k, v in delta.items()}
    result = dict(base)
    for k, v in overlay.items():
        if v is _TOMBSTONE:
            result.pop(k, None)
        else:
            result[k] = v
    assert members.apply(overlay).join() == canonical_json_bytes(result)
    assert members.join() == canonical_json_bytes(base)


def test_members_order_utf16_code_units() -> None:
    """Keys mixing U+E000..U+FFFF and supplementary characters sort by UTF-16 code units (RFC 8785)."""
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    members = _Members({k: encode_member(k, v) for k, v in value.items()})
    assert members.join() == canonical_json_bytes(value)
    assert members.join().index("\U0001f600".encode()) < members.join().index("\ue000".encode())


async def test_snapshot_cache_write_delta_stores_canonical_bytes() -> None:
    ms = MemoryStore()
    cache = SnapshotCache(ms.artifacts)
    base = {"b": 1, "a": {"x": [1, 2]}}
    base_id = await cache.write(base)
    new_id, value = await cache.write_delta(base_id, base, {"c": "z", "b": _TOMBSTONE})
    assert value == {"a": {"x": [1, 2]}, "c": "z"}
    assert await ms.artifacts.get(new_id) == canonical_json_bytes(value)
    assert new_id == artifact_id_for_bytes(canonical_json_bytes(value))
    assert base == {"b": 1, "a": {"x": [1, 2]}}  # the base is never mutated


def test_construct_matches_validated_records() -> None:
    """``construct`` builds records equal to validated ones, with the same wire form."""
    run = RunId("00000000-0000-4000-8000-000000000001")
    ev = construct(StateEntered, state_id=sid("s1"), attempt=2, base_snapshot_id=ArtifactId("1" * 64))
    assert ev == StateEntered(state_id=sid("s1"), attempt=2, base_snapshot_id=ArtifactId("1" * 64))
    env = construct(EventEnvelope, run_id=run, seq=3, ts_millis=7, event=ev)
    ref = EventEnvelope(run_id=run, seq=3, ts_millis=7, event=ev)
    assert env == ref and env.to_json() == ref.to_json()
    assert EventEnvelope.model_validate_json(env.to_json()) == ref


def _engine(**kw: Any) -> Engine:
    kw.setdefault("clock", FakeClock())
    kw.setdefault("sleeper", FakeSleeper())
    kw.setdefault("run_ids", fixed_run_ids())
    return Engine(**kw)


async def test_sequential_run_uses_n_plus_1_appends() -> None:
    """Appends (issue 12): [RS, E1], then [Cₖ, Eₖ₊₁] per state; the last C shares its append with RunCompleted."""
    ms = MemoryStore()
    engine = _engine()
    plan = make_plan([(f"s{i}", WriteKey(f"k{i}", i)) for i in range(5)], [(f"s{i}", f"s{i + 1}") for i in range(4)])
    res = await start_plan(engine, ms.stores, plan, base_config())
    assert res.phase is RunPhase.COMPLETED and engine.appends == 5 + 1
    envs = await read_events(ms.stores, res.run_id)
    assert envs[-1].ts_millis == envs[-2].ts_millis  # same batch


async def test_cancel_fan_out_closes_every_open_attempt_in_topological_order() -> None:
    """§0.6 + §0.5: cancel with two attempts in flight → two StateFailed run_cancelled (topological order), RC."""
    ms = MemoryStore()
    started = 0
    both = asyncio.Event()

    async def hang(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        nonlocal started
        started += 1
        if started == 2:
            both.set()
        await asyncio.Event().wait()

    plan = make_plan([("a", WriteKey("ka", 1)), ("b", FnState(hang)), ("c", FnState(hang))], [("a", "b"), ("a", "c")])
    token = CancelToken()
    cfg = base_config(execution_mode=FanOutJoin(max_concurrency=2))
    task = asyncio.ensure_future(start_plan(_engine(), ms.stores, plan, cfg, cancel=token))
    await both.wait()
    token.cancel("stop")
    res = await task
    t = trace(await read_events(ms.stores, res.run_id))
    assert res.phase is RunPhase.CANCELLED
    assert t[-3:] == [
        ("F", "b", "run_cancelled", False),
        ("F", "c", "run_cancelled", False),
        ("RC", "Cancelled", t[2][2]),
    ]
    failed = [e.event for e in await read_events(ms.stores, res.run_id) if isinstance(e.event, StateFailed)]
    assert "stop" in failed[0].error.message


async def test_caller_cancelling_start_leaves_no_task_behind() -> None:
    """Cancelling the task running ``start`` cancels the state tasks too; the attempt stays open (an orphan)."""
    ms = MemoryStore()
    entered = asyncio.Event()
    finished: list[str] = []

    async def hang(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            finished.append("cleaned up")

    task = asyncio.ensure_future(start_plan(_engine(), ms.stores, make_plan([("s1", FnState(hang))]), base_config()))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["cleaned up"]
    (run_id,) = await ms.events.list_runs()
    assert [x[0] for x in trace(await read_events(ms.stores, run_id))] == ["RS", "E"]


async def test_concurrent_writer_aborts_invocation_with_storage_concurrency() -> None:
    """§3.4: another writer appends to the run mid-attempt → the next append fails: RunError::Storage, no RC."""
    ms = MemoryStore()

    async def intrude(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        (run_id,) = await ms.events.list_runs()
        head = await ms.events.head_seq(run_id)
        rc = RunCompleted(status=RunStatus.FAILED, final_snapshot_id=ArtifactId("0" * 64))
        await ms.events.append(run_id, head, [EventEnvelope(run_id=run_id, seq=head + 1, event=rc)])
        ctx.write("x", 1)

    with pytest.raises(RunError) as ei:
        await start_plan(_engine(), ms.stores, make_plan([("s1", FnState(intrude))]), base_config())
    assert ei.value.kind is RunErrorKind.STORAGE and ei.value.code == "event_store_concurrency"


async def test_request_cancel_needs_a_control_store() -> None:
    ms = MemoryStore()
    with pytest.raises(StorageError) as ei:
        await request_cancel(
            Stores(events=ms.events, artifacts=ms.artifacts), RunId("0" * 8 + "-0000-4000-8000-" + "0" * 12)
        )
    assert ei.value.code == "control_store_missing"


def test_cancel_token_api() -> None:
    token = CancelToken()
    assert not token.cancelled and token.reason is None
    token.cancel("first")
    token.cancel("second")
    assert token.cancelled and token.reason == "first"


async def test_clock_may_be_a_callable() -> None:
    """``clock`` accepts a zero-argument callable returning millis; ts_millis come from it."""
    ms = MemoryStore()
    res = await start_plan(_engine(clock=lambda: 42), ms.stores, make_plan([("s1", WriteKey("a", 1))]), base_config())
    assert {e.ts_millis for e in await read_events(ms.stores, res.run_id)} == {42}


async def test_fan_out_delete_conflicts_with_write() -> None:
    """§0.5: a delete counts as a write for conflicts (b writes x, c deletes x → conflict)."""
    ms = MemoryStore()
    b_done = asyncio.Event()

    async def b(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("x", 1)
        b_done.set()

    async def c(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        await b_done.wait()
        for _ in range(20):
            await asyncio.sleep(0)
        ctx.delete("x")

    plan = make_plan([("a", WriteKey("ka", 1)), ("b", FnState(b)), ("c", FnState(c))], [("a", "b"), ("a", "c")])
    res = await start_plan(_engine(), ms.stores, plan, base_config(execution_mode=FanOutJoin(max_concurrency=2)))
    t = trace(await read_events(ms.stores, res.run_id))
    assert ("F", "c", "fan_out_write_conflict", False) in t and res.phase is RunPhase.FAILED


async def test_fan_out_resume_remembers_keys_written_before_the_crash() -> None:
    """§0.5 across resume: b wrote x before the crash; c (concurrent with b) writing x after resume conflicts."""
    from engine.runtime import Failpoints

    ms = MemoryStore()
    plan = make_plan(
        [("a", WriteKey("ka", 1)), ("b", WriteKey("x", "b")), ("c", WriteKey("x", "c"))], [("a", "b"), ("a", "c")]
    )
    cfg = base_config(execution_mode=FanOutJoin(max_concurrency=1))
    cfg2 = base_config(execution_mode=FanOutJoin(max_concurrency=2))
    # FanOutJoin{2} run: b completes, crash right after c's handler.
    engine = _engine(plan_resolver=lambda m: plan, failpoints=Failpoints.stop_after_handler("machine.main.c"))
    first = await start_plan(engine, ms.stores, plan, cfg2)
    assert first.phase is RunPhase.RUNNING
    res = await _engine(plan_resolver=lambda m: plan).resume(ms.stores, first.run_id)
    t = trace(await read_events(ms.stores, first.run_id))
    assert res.phase is RunPhase.FAILED and t[-2] == ("F", "c", "fan_out_write_conflict", False)
    # The same plan Sequential-like (FanOutJoin{1}) has no conflict: c overwrites.
    ms2 = MemoryStore()
    ok = await start_plan(_engine(), ms2.stores, plan, cfg)
    assert await snapshot_of(ms2.stores, ok.final_snapshot_id) == {"ka": 1, "x": "c"}  # type: ignore[arg-type]


async def test_orphan_of_retried_state_keeps_backoff_budget() -> None:
    """§13: after an orphan restart, later retryable failures are bounded by max_attempts and backed off."""
    from engine.runtime import Failpoints
    from engine.testing import Fail

    ms = MemoryStore()
    plan = make_plan([("s1", Fail("flaky", retryable=True))])
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_millis(10))))
    first = await start_plan(
        _engine(plan_resolver=lambda m: plan, failpoints=Failpoints.stop_after_handler()), ms.stores, plan, cfg
    )
    sleeper = FakeSleeper()
    res = await _engine(plan_resolver=lambda m: plan, sleeper=sleeper).resume(ms.stores, first.run_id)
    envs = await read_events(ms.stores, first.run_id)
    assert res.phase is RunPhase.FAILED
    assert [e.event.attempt for e in envs if isinstance(e.event, StateEntered)] == [0, 1, 2]
    assert sleeper.requested_ms == [10]  # after attempt 1 only; attempt 2 is the last allowed


class _GatedEvents:
    """An event store whose append of a batch holding a ``gated`` event waits on ``gate`` (a slow disk)."""

    def __init__(self, inner: Any, gated: type = StateCompleted) -> None:
        self.inner = inner
        self.gated = gated
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def head_seq(self, run_id: RunId) -> int:
        return await self.inner.head_seq(run_id)  # type: ignore[no-any-return]

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> Any:
        return await self.inner.read_range(run_id, from_seq, to_seq)

    async def append(self, run_id: RunId, expected_seq: int, events: Any) -> int:
        if any(isinstance(e.event, self.gated) for e in events):
            self.waiting.set()
            await self.gate.wait()
        return await self.inner.append(run_id, expected_seq, events)  # type: ignore[no-any-return]


async def test_cancel_while_an_append_is_in_the_store_keeps_the_writer_consistent() -> None:
    """A cancel arriving while the batch [StateCompleted(s1), StateEntered(s2)] is inside a slow store append waits
    for that append, then cancels: s2's handler never runs, its open attempt is closed with run_cancelled, the
    stream stays contiguous and ends RC(Cancelled, S1)."""
    ms = MemoryStore()
    events = _GatedEvents(ms.events)
    stores = Stores(events=events, artifacts=ms.artifacts)
    token = CancelToken()
    s2 = WriteKey("b", 2)
    plan = make_plan([("s1", WriteKey("a", 1)), ("s2", s2)], [("s1", "s2")])
    task = asyncio.ensure_future(start_plan(_engine(), stores, plan, base_config(), cancel=token))
    await events.waiting.wait()
    token.cancel("now")
    for _ in range(5):
        await asyncio.sleep(0)
    events.gate.set()
    res = await task
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    assert res.phase is RunPhase.CANCELLED and s2.calls == 0
    s1 = t[2][2]
    assert t == [
        ("RS", t[0][1]),
        ("E", "s1", 0, t[0][1]),
        ("C", "s1", s1),
        ("E", "s2", 0, s1),
        ("F", "s2", CODE_RUN_CANCELLED, False),
        ("RC", "Cancelled", s1),
    ]
    assert [e.seq for e in envs] == [1, 2, 3, 4, 5, 6]


async def test_cancel_while_a_handlers_append_is_in_the_store_cancels_once_it_landed() -> None:
    """A cancel arriving while a handler's domain event is inside a slow store append: the append lands, the
    task's cancellation waits for it; the handler (which never suspends again) completes s1, whose StateCompleted
    is written with RunCompleted{Cancelled}; s2 is never entered and the stream stays contiguous."""
    ms = MemoryStore()
    events = _GatedEvents(ms.events, gated=DomainEvent)
    stores = Stores(events=events, artifacts=ms.artifacts)
    token = CancelToken()

    async def emit(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        await rec.emit(construct(DomainEvent, name="note", payload={"n": 1}, payload_ref=None))
        ctx.write("a", 1)

    plan = make_plan([("s1", FnState(emit)), ("s2", WriteKey("b", 2))], [("s1", "s2")])
    cfg = base_config(event_profile=EventProfile.NORMAL)
    task = asyncio.ensure_future(start_plan(_engine(), stores, plan, cfg, cancel=token))
    await events.waiting.wait()
    token.cancel("now")
    for _ in range(5):
        await asyncio.sleep(0)
    events.gate.set()
    res = await task
    envs = await read_events(ms.stores, res.run_id)
    t = trace(envs)
    assert res.phase is RunPhase.CANCELLED
    assert [x[0] for x in t] == ["RS", "E", "D", "C", "RC"] and t[-1] == ("RC", "Cancelled", t[3][2])
    assert [e.seq for e in envs] == [1, 2, 3, 4, 5]
