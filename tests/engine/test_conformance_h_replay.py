"""CONFORMANCE H: Replay IO (ENGINE-SPEC §11.2) — facts only, no transport ever built."""

from __future__ import annotations

from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.config import Duration, Fixed, RetryPolicy
from engine.engine import RunPhase
from engine.errors import ErrorCategory, IoError, IoErrorKind
from engine.events import DomainEvent, EventEnvelope, RunStarted, StateFailed
from engine.hashing import canonical_json_bytes
from engine.ids import ArtifactId, FactKey, OpId, RunId
from engine.io import IoCall, IoProvider
from engine.recorder import EventRecorder
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.testing import (
    CountingFactory,
    FakeClock,
    FakeSleeper,
    FnState,
    RecordFactAndWrite,
    entered,
    fixed_run_ids,
    make_manifest,
    make_plan,
    read_events,
    replay_config,
    snapshot_of,
    store_manifest,
    trace,
)

RUN = RunId("00000000-0000-0000-0000-000000000000")


async def _seed(ms: MemoryStore, facts: dict[str, ArtifactId], cfg: Any = None) -> None:
    mid = await store_manifest(ms.stores, make_manifest(cfg or replay_config()))
    iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, b"{}")
    events: list[Any] = [RunStarted(op_id=OpId("op"), manifest_id=mid, initial_snapshot_id=iid)]
    for k, pid in facts.items():
        events.append(DomainEvent(name="fact_recorded", payload={"key": k, "payload_id": pid, "meta": {}}))
    await ms.events.append(RUN, 0, [EventEnvelope(run_id=RUN, seq=i + 1, event=e) for i, e in enumerate(events)])


SLEEPER = FakeSleeper()


def _engine(plan: Any, factory: CountingFactory | None = None) -> Engine:
    return Engine(
        plan_resolver=lambda m: plan,
        transports=factory,
        clock=FakeClock(),
        sleeper=SLEEPER,
        run_ids=fixed_run_ids(),
    )


async def _run_handler(ms: MemoryStore, fn: Any, cfg: Any = None) -> Any:
    plan = make_plan([("s1", FnState(fn))])
    return await _engine(plan, CountingFactory()).resume(ms.stores, RUN)


async def test_h44_replay_serves_recorded_facts_never_builds_transport() -> None:
    """H44: RS(replay manifest) + fact_recorded{k → {"n":0}}; resume → Completed; factory make 0, calls 0."""
    ms = MemoryStore()
    pid = await ms.artifacts.put(ArtifactKind.FACT_PAYLOAD, canonical_json_bytes({"n": 0}))
    await _seed(ms, {"k": pid})
    factory = CountingFactory()
    res = await _engine(make_plan([("s1", RecordFactAndWrite())]), factory).resume(ms.stores, RUN)
    assert res.phase is RunPhase.COMPLETED
    assert factory.make_count == 0 and factory.calls == []
    assert await snapshot_of(ms.stores, res.final_snapshot_id) == {"x": 1}  # type: ignore[arg-type]


async def test_h45_replay_missing_fact() -> None:
    """H45: only RS → Failed; StateFailed code missing_fact, retryable false, category Rpc; factory unused."""
    ms = MemoryStore()
    await _seed(ms, {})
    factory = CountingFactory()
    state = RecordFactAndWrite()
    res = await _engine(make_plan([("s1", state)]), factory).resume(ms.stores, RUN)
    assert res.phase is RunPhase.FAILED and factory.make_count == 0
    failed = [e.event for e in await read_events(ms.stores, RUN) if isinstance(e.event, StateFailed)]
    assert len(failed) == 1
    info = failed[0].error.info
    assert (info.code, info.retryable, info.category) == ("missing_fact", False, ErrorCategory.RPC)
    assert state.errors[0].kind is IoErrorKind.MISSING_FACT and state.errors[0].key == "k"


async def test_h46_missing_fact_retryable_by_config() -> None:
    """H46: replay_missing_fact_retryable, max 3 → entered [0,1,2], each F(missing_fact,true), RC(Failed)."""
    ms = MemoryStore()
    cfg = replay_config(
        replay_missing_fact_retryable=True,
        retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_millis(0))),
    )
    await _seed(ms, {}, cfg)
    res = await _engine(make_plan([("s1", RecordFactAndWrite())])).resume(ms.stores, RUN)
    envs = await read_events(ms.stores, RUN)
    assert res.phase is RunPhase.FAILED and entered(envs, "s1") == [0, 1, 2]
    assert [t for t in trace(envs) if t[0] == "F"] == [("F", "s1", "missing_fact", True)] * 3
    assert trace(envs)[-1][:2] == ("RC", "Failed")


async def _io_probe(ms: MemoryStore, probe: Any) -> list[Any]:
    out: list[Any] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        try:
            out.append(await probe(io))
        except IoError as exc:
            out.append(exc)

    await _run_handler(ms, handler)
    return out


async def test_h47_replay_call_without_fact_key() -> None:
    """H47: Replay call without fact key → IoError::MissingFactKey, code missing_fact_key, not retryable."""
    ms = MemoryStore()
    await _seed(ms, {})
    (err,) = await _io_probe(ms, lambda io: io.call(IoCall(namespace="test", request={})))
    assert isinstance(err, IoError) and err.kind is IoErrorKind.MISSING_FACT_KEY
    assert err.code == "missing_fact_key" and not err.retryable


@pytest.mark.parametrize(
    ("data", "store_under", "code"),
    [
        (b'{ "a": 1 }', None, "artifact_not_canonical"),
        (b'{"a":1.5}', None, "artifact_float_not_allowed"),
        (b'{"password":"not-a-real-secret"}', None, "secrets_detected"),
        (b'{"a":1}', "0" * 64, "artifact_content_address_mismatch"),
    ],
    ids=["not_canonical", "float", "secret", "content_address"],
)
async def test_h48_replay_payload_integrity(data: bytes, store_under: str | None, code: str) -> None:
    """H48: bound payload bytes must be canonical, float-free, secret-free and match their id."""
    ms = MemoryStore()
    if store_under is None:
        pid = await ms.artifacts.put(ArtifactKind.FACT_PAYLOAD, data)
    else:
        pid = ArtifactId(store_under)
        ms.artifacts._blobs[pid] = data
    await _seed(ms, {"k": pid})
    (err,) = await _io_probe(ms, lambda io: io.call(IoCall(namespace="t", request={}, fact_key=FactKey("k"))))
    assert isinstance(err, IoError) and err.kind is IoErrorKind.OTHER and err.code == code


async def test_h49_replay_random_bytes_and_time() -> None:
    """H49: derived random key bound to raw [0,1,2,255] → random_bytes(4) returns them; (3) → fact_payload_invalid;
    a bound time payload "x" → fact_payload_invalid."""
    ms = MemoryStore()
    raw = bytes([0, 1, 2, 255])
    key0 = f"mfm:random_bytes|run:{RUN}|state:machine.main.s1|attempt:0|ord:0"
    assert key0 == "mfm:random_bytes|run:00000000-0000-0000-0000-000000000000|state:machine.main.s1|attempt:0|ord:0"
    rid = await ms.artifacts.put(ArtifactKind.FACT_PAYLOAD, raw)
    await _seed(ms, {key0: rid})
    assert await _io_probe(ms, lambda io: io.random_bytes(4)) == [raw]

    ms = MemoryStore()
    rid = await ms.artifacts.put(ArtifactKind.FACT_PAYLOAD, raw)
    await _seed(ms, {key0: rid})
    (err,) = await _io_probe(ms, lambda io: io.random_bytes(3))
    assert isinstance(err, IoError) and err.code == "fact_payload_invalid"

    ms = MemoryStore()
    tid = await ms.artifacts.put(ArtifactKind.FACT_PAYLOAD, b'"x"')
    await _seed(ms, {key0.replace("random_bytes", "now_millis"): tid})
    (err,) = await _io_probe(ms, lambda io: io.now_millis())
    assert isinstance(err, IoError) and err.code == "fact_payload_invalid"

    ms = MemoryStore()
    tid = await ms.artifacts.put(ArtifactKind.FACT_PAYLOAD, b"1234")
    await _seed(ms, {key0.replace("random_bytes", "now_millis"): tid})
    assert await _io_probe(ms, lambda io: io.now_millis()) == [1234]

    ms = MemoryStore()
    await _seed(ms, {})
    (err,) = await _io_probe(ms, lambda io: io.now_millis())
    assert isinstance(err, IoError) and err.kind is IoErrorKind.MISSING_FACT


async def test_h50_replay_sleep_returns_immediately() -> None:
    """H50: sleep_ms(60000) returns at once with an empty fact index."""
    ms = MemoryStore()
    await _seed(ms, {})
    SLEEPER.requested.clear()
    assert await _io_probe(ms, lambda io: io.sleep_ms(60_000)) == [None]
    assert SLEEPER.requested == []  # not even the (fake) sleeper was asked


async def test_h51_replay_record_value() -> None:
    """H51: bound {"a":1}: record_value same → bound id; {"a":2} → fact_payload_conflict; unbound → MissingFact."""
    ms = MemoryStore()
    pid = await ms.artifacts.put(ArtifactKind.FACT_PAYLOAD, canonical_json_bytes({"a": 1}))
    await _seed(ms, {"key": pid})

    async def probe(io: IoProvider) -> list[Any]:
        out: list[Any] = [await io.record_value("key", {"a": 1})]
        for key, value in (("key", {"a": 2}), ("unbound", {"a": 1})):
            try:
                await io.record_value(key, value)
            except IoError as exc:
                out.append(exc)
        return out

    ((same, conflict, missing),) = await _io_probe(ms, probe)
    assert same == pid
    assert conflict.code == "fact_payload_conflict" and missing.kind is IoErrorKind.MISSING_FACT
    assert len(await read_events(ms.stores, RUN)) == 5  # RS, fact, E, C, RC: replay writes no facts


async def test_h_fact_index_rebuild_errors() -> None:
    """§11.3: malformed fact_recorded → Corruption fact_recorded_malformed {seq}; a key bound to two ids →
    fact_recorded_conflict {seq, key} (key omitted when it looks secret); re-binding the same id is fine."""
    from engine.errors import RunError, RunErrorKind

    plan = make_plan([("s1", RecordFactAndWrite())])
    a = ArtifactId("a" * 64)
    b = ArtifactId("b" * 64)

    async def resume_with(*payloads: Any) -> Any:
        ms = MemoryStore()
        mid = await store_manifest(ms.stores, make_manifest(replay_config()))
        iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, b"{}")
        events: list[Any] = [RunStarted(op_id=OpId("op"), manifest_id=mid, initial_snapshot_id=iid)]
        events += [DomainEvent(name="fact_recorded", payload=p) for p in payloads]
        await ms.events.append(RUN, 0, [EventEnvelope(run_id=RUN, seq=i + 1, event=e) for i, e in enumerate(events)])
        return await _engine(plan).resume(ms.stores, RUN)

    with pytest.raises(RunError) as ei:
        await resume_with({"key": "k"})
    assert ei.value.kind is RunErrorKind.STORAGE and ei.value.code == "fact_recorded_malformed"
    assert ei.value.info.details == {"seq": 2}

    fact = {"key": "k", "payload_id": a, "meta": {}}
    with pytest.raises(RunError) as ei:
        await resume_with(fact, {**fact, "payload_id": b})
    assert ei.value.code == "fact_recorded_conflict" and ei.value.info.details == {"seq": 3, "key": "k"}

    # A secret-looking key never reaches a validated store; the index still omits it (unit level).
    from engine._runtime.facts import FactIndex
    from engine.errors import StorageError

    secret = {"key": "api_key:1", "payload_id": a, "meta": {}}
    envs = [
        EventEnvelope.model_construct(
            run_id=RUN, seq=n, ts_millis=None, event=DomainEvent(name="fact_recorded", payload=p)
        )
        for n, p in ((1, secret), (2, {**secret, "payload_id": b}))
    ]
    with pytest.raises(StorageError) as se:
        FactIndex.rebuild(envs)
    assert se.value.code == "fact_recorded_conflict" and se.value.info.details == {"seq": 2}
    assert "api_key" not in se.value.message

    good = await ms_payload_run(fact)
    assert good.phase is RunPhase.COMPLETED


async def ms_payload_run(fact: dict[str, Any]) -> Any:
    """Re-binding ``k`` to the same payload twice is accepted; the replay serves it."""
    ms = MemoryStore()
    pid = await ms.artifacts.put(ArtifactKind.FACT_PAYLOAD, canonical_json_bytes({"n": 0}))
    await _seed(ms, {"k": pid})
    head = await ms.events.head_seq(RUN)
    again = DomainEvent(name="fact_recorded", payload={"key": "k", "payload_id": pid, "meta": {}})
    await ms.events.append(RUN, head, [EventEnvelope(run_id=RUN, seq=head + 1, event=again)])
    return await _engine(make_plan([("s1", RecordFactAndWrite())])).resume(ms.stores, RUN)
