"""CONFORMANCE G: facts and Live IO (ENGINE-SPEC §11.1), plus side-effect fact keys (§0.10)."""

from __future__ import annotations

from typing import Any

from engine._kinds import ArtifactKind
from engine.engine import RunPhase
from engine.errors import IoError, StateError
from engine.events import DomainEvent, FactRecorded
from engine.ids import ArtifactId, FactKey
from engine.io import IoCall, IoProvider
from engine.meta import Idempotency, SideEffectKind, StateMeta
from engine.recorder import EventRecorder
from engine.runtime import Engine, Failpoints, side_effect_fact_key
from engine.stores import MemoryStore
from engine.testing import (
    CountingFactory,
    FakeClock,
    FakeSleeper,
    FnState,
    base_config,
    counting_random,
    entered,
    fixed_run_ids,
    make_plan,
    read_events,
    sid,
    start_plan,
)


def _engine(factory: Any = None, **kw: Any) -> Engine:
    return Engine(
        transports=factory,
        clock=kw.pop("clock", FakeClock()),
        sleeper=FakeSleeper(),
        run_ids=fixed_run_ids(),
        random_source=counting_random,
        **kw,
    )


def _facts(envs: list[Any]) -> list[FactRecorded]:
    return [
        FactRecorded.model_validate(e.event.payload)
        for e in envs
        if isinstance(e.event, DomainEvent) and e.event.name == "fact_recorded"
    ]


async def test_g37_facts_single_assignment_across_retries() -> None:
    """G37: fact key k recorded on attempt 0; the retry gets the recorded {"n":0}; transport called once."""
    ms = MemoryStore()
    factory = CountingFactory()
    seen: list[Any] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        res = await io.call(IoCall(namespace="test", request={"q": 1}, fact_key=FactKey("k")))
        seen.append(res.response)
        assert res.response == {"n": 0} and res.recorded_payload_id is not None
        if len(seen) == 1:
            raise StateError.new("flaky", "first time", retryable=True)
        ctx.write("x", 1)

    res = await start_plan(_engine(factory), ms.stores, make_plan([("s1", FnState(handler))]), base_config())
    envs = await read_events(ms.stores, res.run_id)
    assert res.phase is RunPhase.COMPLETED and len(factory.calls) == 1
    assert [f.key for f in _facts(envs)] == ["k"] and entered(envs, "s1") == [0, 1]
    assert seen == [{"n": 0}, {"n": 0}]


async def test_g38_time_and_randomness_recorded() -> None:
    """G38: now_millis twice then random_bytes(8) → 3 fact_recorded with derived keys, ordinals 0,1,2, attempt 0."""
    ms = MemoryStore()
    clock = FakeClock(start_millis=1_000, step=7)
    got: list[Any] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        got.append(await io.now_millis())
        got.append(await io.now_millis())
        got.append(await io.random_bytes(8))

    res = await start_plan(_engine(clock=clock), ms.stores, make_plan([("s1", FnState(handler))]), base_config())
    assert res.phase is RunPhase.COMPLETED
    facts = _facts(await read_events(ms.stores, res.run_id))
    prefix = f"|run:{res.run_id}|state:machine.main.s1|attempt:0|ord:"
    assert [f.key for f in facts] == [
        f"mfm:now_millis{prefix}0",
        f"mfm:now_millis{prefix}1",
        f"mfm:random_bytes{prefix}2",
    ]
    for f in facts:
        assert await ms.artifacts.exists(f.payload_id)
    assert await ms.artifacts.get(facts[2].payload_id) == bytes(range(8)) == got[2]
    assert await ms.artifacts.get(facts[0].payload_id) == str(got[0]).encode()
    assert ms.artifacts.kinds[facts[2].payload_id] == ArtifactKind.FACT_PAYLOAD


async def test_g39_live_fact_with_secret_is_not_recorded() -> None:
    """G39: transport answers {"password":"hunter2"} for key test:fact → secrets_detected; nothing recorded."""
    ms = MemoryStore()
    factory = CountingFactory(respond=lambda ns, req, n: {"password": "hunter2"})
    errors: list[IoError] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        try:
            await io.call(IoCall(namespace="test", request={}, fact_key=FactKey("test:fact")))
        except IoError as exc:
            errors.append(exc)
            raise StateError.new(exc.code, "io failed") from None

    res = await start_plan(_engine(factory), ms.stores, make_plan([("s1", FnState(handler))]), base_config())
    envs = await read_events(ms.stores, res.run_id)
    assert res.phase is RunPhase.FAILED and [e.code for e in errors] == ["secrets_detected"]
    assert _facts(envs) == []
    for blob in ms.artifacts.all_bytes():
        assert b"password" not in blob and b"hunter2" not in blob


async def test_g40_record_value_conflict() -> None:
    """G40: record_value("fact:key", {"a":1}) then {"a":2} → IoError::Other fact_payload_conflict; same value ok."""
    ms = MemoryStore()
    out: list[Any] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        first = await io.record_value("fact:key", {"a": 1})
        out.append(first)
        out.append(await io.record_value("fact:key", {"a": 1}))
        try:
            await io.record_value("fact:key", {"a": 2})
        except IoError as exc:
            out.append(exc)
        out.append(await io.get_recorded_fact("fact:key"))
        out.append(await io.get_recorded_fact("nope"))

    await start_plan(_engine(), ms.stores, make_plan([("s1", FnState(handler))]), base_config())
    assert out[0] == out[1] == out[3] and out[4] is None
    assert isinstance(out[2], IoError) and out[2].code == "fact_payload_conflict" and str(out[2].kind) == "Other"


async def test_g42_no_fact_key_calls_transport_every_time() -> None:
    """G42: a call without fact key → transport every time, recorded_payload_id null, no fact_recorded."""
    ms = MemoryStore()
    factory = CountingFactory()
    results: list[Any] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        for _ in range(2):
            results.append(await io.call(IoCall(namespace="test", request={})))

    res = await start_plan(_engine(factory), ms.stores, make_plan([("s1", FnState(handler))]), base_config())
    assert [(r.response, r.recorded_payload_id) for r in results] == [({"n": 0}, None), ({"n": 1}, None)]
    assert _facts(await read_events(ms.stores, res.run_id)) == []


async def test_g43_unconfigured_transport() -> None:
    """G43: engine without a live factory → io_unimplemented delivered to the handler."""
    ms = MemoryStore()
    errors: list[IoError] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        try:
            await io.call(IoCall(namespace="anything", request={}, fact_key=FactKey("k")))
        except IoError as exc:
            errors.append(exc)

    res = await start_plan(_engine(None), ms.stores, make_plan([("s1", FnState(handler))]), base_config())
    assert res.phase is RunPhase.COMPLETED and [e.code for e in errors] == ["io_unimplemented"]


async def test_g_float_response_not_recorded() -> None:
    """G [§11.1]: a float response with a fact key → fact_payload_not_canonical, nothing recorded."""
    ms = MemoryStore()
    factory = CountingFactory(respond=lambda ns, req, n: {"v": 1.5})
    errors: list[IoError] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        try:
            await io.call(IoCall(namespace="test", request={}, fact_key=FactKey("k")))
        except IoError as exc:
            errors.append(exc)

    res = await start_plan(_engine(factory), ms.stores, make_plan([("s1", FnState(handler))]), base_config())
    assert [e.code for e in errors] == ["fact_payload_not_canonical"]
    assert _facts(await read_events(ms.stores, res.run_id)) == []


async def test_g_secret_fact_key_refused() -> None:
    """G [§12.2]: a secret-looking fact key → IoError::Other secrets_detected, transport not called."""
    ms = MemoryStore()
    factory = CountingFactory()
    errors: list[IoError] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        try:
            await io.call(IoCall(namespace="test", request={}, fact_key=FactKey("api_key:1")))
        except IoError as exc:
            errors.append(exc)

    await start_plan(_engine(factory), ms.stores, make_plan([("s1", FnState(handler))]), base_config())
    assert [e.code for e in errors] == ["secrets_detected"] and factory.calls == []


class _LyingArtifacts:
    """An artifact store answering "f"*64 to every put of the given kinds (CONFORMANCE B12)."""

    def __init__(self, inner: Any, *kinds: ArtifactKind) -> None:
        self.inner = inner
        self.kinds = kinds

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        aid: ArtifactId = await self.inner.put(kind, data)
        return ArtifactId("f" * 64) if kind in self.kinds else aid

    async def get(self, artifact_id: ArtifactId) -> bytes:
        return await self.inner.get(artifact_id)  # type: ignore[no-any-return]

    async def exists(self, artifact_id: ArtifactId) -> bool:
        return await self.inner.exists(artifact_id)  # type: ignore[no-any-return]


async def test_g_b12_verified_put() -> None:
    """G / B12: a store lying about put ids → fact recording fails fact_payload_put_failed (to the handler);
    a lying snapshot put aborts start with Storage Corruption artifact_put_id_mismatch."""
    from engine.engine import Stores
    from engine.errors import RunError, RunErrorKind

    ms = MemoryStore()
    errors: list[IoError] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        try:
            await io.record_value("k", {"a": 1})
        except IoError as exc:
            errors.append(exc)

    lying = Stores(events=ms.events, artifacts=_LyingArtifacts(ms.artifacts, ArtifactKind.FACT_PAYLOAD))
    res = await start_plan(_engine(), lying, make_plan([("s1", FnState(handler))]), base_config())
    assert res.phase is RunPhase.COMPLETED and [e.code for e in errors] == ["fact_payload_put_failed"]
    assert _facts(await read_events(ms.stores, res.run_id)) == []

    ms = MemoryStore()
    lying = Stores(events=ms.events, artifacts=_LyingArtifacts(ms.artifacts, ArtifactKind.CONTEXT_SNAPSHOT))
    try:
        await start_plan(_engine(), lying, make_plan([("s1", FnState(handler))]), base_config())
    except RunError as exc:
        assert exc.kind is RunErrorKind.STORAGE and exc.code == "artifact_put_id_mismatch"
    else:
        raise AssertionError("start on a lying store must fail")
    assert await ms.events.list_runs() == []


async def test_g_side_effect_key_derived_from_idempotency_key() -> None:
    """G / §0.10: an ApplySideEffect state's unkeyed call is recorded under side_effect_fact_key; after a
    crash right after the handler, resume re-runs the state without calling the transport again."""
    ms = MemoryStore()
    factory = CountingFactory(group="proof")
    meta = StateMeta(side_effects=SideEffectKind.APPLY_SIDE_EFFECT, idempotency=Idempotency.key("pay:42"))

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        res = await io.call(IoCall(namespace="proof.side_effect", request={"amount": 1}))
        ctx.write("receipt", res.response)

    plan = make_plan([("s1", FnState(handler, meta))])
    engine = Engine(
        plan_resolver=lambda m: plan,
        transports=[factory],
        clock=FakeClock(),
        sleeper=FakeSleeper(),
        run_ids=fixed_run_ids(),
        failpoints=Failpoints.stop_after_handler(),
    )
    first = await start_plan(engine, ms.stores, plan, base_config())
    assert first.phase is RunPhase.RUNNING
    res = await engine.resume(ms.stores, first.run_id)
    envs = await read_events(ms.stores, first.run_id)
    assert res.phase is RunPhase.COMPLETED and len(factory.calls) == 1
    assert entered(envs, "s1") == [0, 1]
    assert [f.key for f in _facts(envs)] == [side_effect_fact_key(sid("s1"), "pay:42", 0)]
