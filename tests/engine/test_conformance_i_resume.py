"""CONFORMANCE I: crash and resume (ENGINE-SPEC §13), attempt-envelope analysis (§4.3)."""

from __future__ import annotations

from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine._runtime.envelopes import EnvelopeViolation, ViolationKind, analyze
from engine.config import Duration, Fixed, RetryPolicy
from engine.engine import RunPhase
from engine.errors import ErrorCategory, RunError, RunErrorKind, StateError, StorageErrorKind
from engine.events import (
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.hashing import canonical_json_bytes
from engine.ids import ArtifactId, OpId, RunId
from engine.plan import ExecutionPlan
from engine.runtime import Engine, Failpoints
from engine.stores import MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    Flaky,
    SetKey,
    WriteKey,
    base_config,
    entered,
    fixed_run_ids,
    make_manifest,
    make_plan,
    read_events,
    sid,
    snapshot_of,
    start_plan,
    store_manifest,
    trace,
)

RUN = RunId("11111111-1111-4111-8111-111111111111")


def _engine(plan: ExecutionPlan | None, **kw: Any) -> Engine:
    return Engine(
        plan_resolver=(lambda m: plan) if plan is not None else None,  # type: ignore[arg-type,return-value]
        clock=FakeClock(),
        sleeper=kw.pop("sleeper", FakeSleeper()),
        run_ids=fixed_run_ids(),
        **kw,
    )


def _env(seq: int, event: Any, run_id: RunId = RUN) -> EventEnvelope:
    return EventEnvelope(run_id=run_id, seq=seq, ts_millis=None, event=event)


async def _seed(
    ms: MemoryStore, cfg: Any = None, initial: dict[str, Any] | None = None
) -> tuple[ArtifactId, ArtifactId]:
    """Store a manifest and an initial snapshot; return (manifest_id, initial_id)."""
    mid = await store_manifest(ms.stores, make_manifest(cfg or base_config()))
    iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes(initial or {}))
    return mid, iid


async def _append(ms: MemoryStore, events: list[Any], run_id: RunId = RUN) -> None:
    head = await ms.events.head_seq(run_id)
    await ms.events.append(run_id, head, [_env(head + 1 + i, ev, run_id) for i, ev in enumerate(events)])


def _rs(mid: ArtifactId, iid: ArtifactId) -> RunStarted:
    return RunStarted(op_id=OpId("op"), manifest_id=mid, initial_snapshot_id=iid)


def _e(s: str, a: int, base: ArtifactId) -> StateEntered:
    return StateEntered(state_id=sid(s), attempt=a, base_snapshot_id=base)


def _f(s: str, code: str, retryable: bool) -> StateFailed:
    return StateFailed(state_id=sid(s), error=StateError.new(code, code, retryable=retryable, state_id=sid(s)))


async def test_i52_orphan_attempt_retried_from_base_snapshot() -> None:
    """I52: failpoint stop-after-handler → Running; resume → Completed {"x":1}, entered [0,1], newest-era trace."""
    ms = MemoryStore()
    plan = make_plan([("s1", SetKey())])
    engine = _engine(plan, failpoints=Failpoints.stop_after_handler())
    first = await start_plan(engine, ms.stores, plan, base_config())
    assert first.phase is RunPhase.RUNNING
    t0 = trace(await read_events(ms.stores, first.run_id))
    i = t0[0][1]
    assert first.final_snapshot_id == i and t0 == [("RS", i), ("E", "s1", 0, i)]
    res = await engine.resume(ms.stores, first.run_id)
    assert res.phase is RunPhase.COMPLETED
    assert await snapshot_of(ms.stores, res.final_snapshot_id) == {"x": 1}  # type: ignore[arg-type]
    envs = await read_events(ms.stores, first.run_id)
    s1 = res.final_snapshot_id
    assert entered(envs, "s1") == [0, 1]
    assert trace(envs) == [
        ("RS", i),
        ("E", "s1", 0, i),
        ("F", "s1", "orphan_attempt_recovered", True),
        ("E", "s1", 1, i),
        ("C", "s1", s1),
        ("RC", "Completed", s1),
    ]
    orphan_failure = envs[2].event
    assert isinstance(orphan_failure, StateFailed)
    assert orphan_failure.error.info.category is ErrorCategory.UNKNOWN
    assert orphan_failure.error.message == "orphaned state attempt recovered during resume"
    assert orphan_failure.error.state_id == sid("s1")


async def test_i52_orphan_restart_not_bounded_by_max_attempts() -> None:
    """I52 [§13 step 9]: with max_attempts 1 the orphan is still re-run (the restart is not bounded)."""
    ms = MemoryStore()
    plan = make_plan([("s1", SetKey())])
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=1, backoff=Fixed(delay=Duration.from_millis(0))))
    engine = _engine(plan, failpoints=Failpoints.stop_after_handler())
    first = await start_plan(engine, ms.stores, plan, cfg)
    res = await engine.resume(ms.stores, first.run_id)
    assert res.phase is RunPhase.COMPLETED
    assert entered(await read_events(ms.stores, first.run_id), "s1") == [0, 1]


async def test_i54_resume_unknown_run() -> None:
    """I54: resume of a random run id → Storage(NotFound) run_not_found."""
    with pytest.raises(RunError) as ei:
        await _engine(make_plan([("s1", SetKey())])).resume(MemoryStore().stores, RUN)
    assert ei.value.kind is RunErrorKind.STORAGE and ei.value.code == "run_not_found"
    assert ei.value.cause is not None and ei.value.cause.kind is StorageErrorKind.NOT_FOUND  # type: ignore[attr-defined]


async def test_i55_resume_finished_run_appends_nothing() -> None:
    """I55: after E24, resume → Completed with the same final id; stream length unchanged."""
    ms = MemoryStore()
    plan = make_plan(
        [("s1", WriteKey("a", 1)), ("s2", WriteKey("b", 2)), ("s3", WriteKey("c", 3))], [("s1", "s2"), ("s2", "s3")]
    )
    engine = _engine(plan)
    first = await start_plan(engine, ms.stores, plan, base_config())
    res = await engine.resume(ms.stores, first.run_id)
    assert res == first
    assert await ms.events.head_seq(first.run_id) == 8


async def test_i56_resume_finalizes_all_completed_run() -> None:
    """I56: stream RS, E(s1,0,I), C(s1,S1) → resume appends RC(Completed,S1) only."""
    ms = MemoryStore()
    mid, iid = await _seed(ms)
    s1 = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes({"x": 1}))
    await _append(ms, [_rs(mid, iid), _e("s1", 0, iid), StateCompleted(state_id=sid("s1"), context_snapshot_id=s1)])
    setkey = SetKey()
    res = await _engine(make_plan([("s1", setkey)])).resume(ms.stores, RUN)
    assert res.phase is RunPhase.COMPLETED and res.final_snapshot_id == s1
    assert trace(await read_events(ms.stores, RUN))[3:] == [("RC", "Completed", s1)]
    assert setkey.calls == 0


async def test_i57_resume_continues_at_next_state() -> None:
    """I57: 2-state plan, stream ends after C(s1,S1) → E(s2,0,S1), C(s2,S2), RC(Completed,S2)."""
    ms = MemoryStore()
    mid, iid = await _seed(ms)
    s1 = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes({"a": 1}))
    await _append(ms, [_rs(mid, iid), _e("s1", 0, iid), StateCompleted(state_id=sid("s1"), context_snapshot_id=s1)])
    plan = make_plan([("s1", WriteKey("a", 1)), ("s2", WriteKey("b", 2))], [("s1", "s2")])
    res = await _engine(plan).resume(ms.stores, RUN)
    s2 = res.final_snapshot_id
    assert trace(await read_events(ms.stores, RUN))[3:] == [
        ("E", "s2", 0, s1),
        ("C", "s2", s2),
        ("RC", "Completed", s2),
    ]
    assert await snapshot_of(ms.stores, s2) == {"a": 1, "b": 2}  # type: ignore[arg-type]


async def test_i58_resume_retries_recorded_retryable_failure_without_sleep() -> None:
    """I58: stream ends with E(s1,0,I), F(s1,flaky,true); max 3 → E(s1,1,I), C, RC; no backoff sleep."""
    ms = MemoryStore()
    cfg = base_config(retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_secs(60))))
    mid, iid = await _seed(ms, cfg)
    await _append(ms, [_rs(mid, iid), _e("s1", 0, iid), _f("s1", "flaky", True)])
    sleeper = FakeSleeper()
    res = await _engine(make_plan([("s1", SetKey())]), sleeper=sleeper).resume(ms.stores, RUN)
    s1 = res.final_snapshot_id
    assert trace(await read_events(ms.stores, RUN))[3:] == [
        ("E", "s1", 1, iid),
        ("C", "s1", s1),
        ("RC", "Completed", s1),
    ]
    assert sleeper.requested == []


@pytest.mark.parametrize(
    "tail",
    [
        [("E", 0), ("F", "boom", False)],
        [("E", 0), ("F", "flaky", True), ("E", 1), ("F", "flaky", True), ("E", 2), ("F", "flaky", True)],
    ],
    ids=["non_retryable", "exhausted"],
)
async def test_i59_resume_cannot_retry(tail: list[tuple[Any, ...]]) -> None:
    """I59: F(s1,boom,false), or F(..,true) at attempt 2 with max 3 → resume appends only RC(Failed, I)."""
    ms = MemoryStore()
    mid, iid = await _seed(ms)
    events: list[Any] = [_rs(mid, iid)]
    for item in tail:
        events.append(_e("s1", item[1], iid) if item[0] == "E" else _f("s1", item[1], item[2]))
    await _append(ms, events)
    setkey = SetKey()
    res = await _engine(make_plan([("s1", setkey)])).resume(ms.stores, RUN)
    assert res.phase is RunPhase.FAILED and res.final_snapshot_id == iid
    assert trace(await read_events(ms.stores, RUN))[len(events) :] == [("RC", "Failed", iid)]
    assert setkey.calls == 0


async def test_i62_plan_drift() -> None:
    """I62: completed s1 absent from resolved plan → recovery_state_not_in_plan; op_id other → plan_op_id_mismatch."""
    ms = MemoryStore()
    mid, iid = await _seed(ms)
    await _append(ms, [_rs(mid, iid), _e("s1", 0, iid), StateCompleted(state_id=sid("s1"), context_snapshot_id=iid)])
    with pytest.raises(RunError) as ei:
        await _engine(make_plan([("s2", SetKey())])).resume(ms.stores, RUN)
    assert ei.value.kind is RunErrorKind.INVALID_PLAN and ei.value.code == "recovery_state_not_in_plan"
    with pytest.raises(RunError) as ei:
        await _engine(make_plan([("s1", SetKey())], op_id="other")).resume(ms.stores, RUN)
    assert ei.value.code == "plan_op_id_mismatch"
    assert await ms.events.head_seq(RUN) == 3


def test_i63a_last_checkpoint_ignores_domain_events() -> None:
    """I63(a): RS, E(s1,0,"2"*64), domain, C(s1,"3"*64), RC → last checkpoint "3"*64; same without the domain event."""
    two, three = ArtifactId("2" * 64), ArtifactId("3" * 64)
    rs = RunStarted(op_id=OpId("op"), manifest_id=ArtifactId("1" * 64), initial_snapshot_id=ArtifactId("0" * 64))
    c = StateCompleted(state_id=sid("s1"), context_snapshot_id=three)
    rc = RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=three)
    with_domain = [rs, _e("s1", 0, two), DomainEvent(name="custom", payload={}), c, rc]
    without = [rs, _e("s1", 0, two), c, rc]
    for events in (with_domain, without):
        h = analyze([_env(i + 1, ev) for i, ev in enumerate(events)])
        assert h.last_checkpoint == three and h.orphans == [] and h.run_completed == rc


def test_i63b_single_entered_is_orphan() -> None:
    """I63(b): a single E(s1, attempt 7, "2"*64) at seq 1 → orphan {attempt 7, entered_seq 1, run_id}."""
    h = analyze([_env(1, _e("s1", 7, ArtifactId("2" * 64)))])
    assert len(h.orphans) == 1
    o = h.orphans[0]
    assert (o.state_id, o.attempt, o.entered_seq, o.run_id, o.base_snapshot_id) == (sid("s1"), 7, 1, RUN, "2" * 64)


def test_i63c_non_monotonic_seq() -> None:
    """I63(c): non-increasing seqs → NonMonotonicSeq (→ invalid_attempt_envelopes)."""
    two = ArtifactId("2" * 64)
    with pytest.raises(EnvelopeViolation) as ei:
        analyze([_env(2, _e("s1", 0, two)), _env(2, DomainEvent(name="x", payload={}))])
    assert ei.value.kind is ViolationKind.NON_MONOTONIC_SEQ
    assert ei.value.to_run_error().code == "invalid_attempt_envelopes"


def test_i63_envelope_violations() -> None:
    """I63 [§4.3]: nested attempt, terminal without entered, RS/RC inside an attempt, foreign run id."""
    two = ArtifactId("2" * 64)
    other = RunId("22222222-2222-4222-8222-222222222222")
    rc = RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=two)
    cases = [
        ([_e("s1", 0, two), _e("s1", 1, two)], ViolationKind.NESTED_ATTEMPT, "invalid_attempt_envelopes"),
        ([_f("s1", "x", False)], ViolationKind.TERMINAL_WITHOUT_ENTERED, "terminal_without_entered"),
        ([_e("s1", 0, two), rc], ViolationKind.RUN_EVENT_INSIDE_ATTEMPT, "invalid_attempt_envelopes"),
        (
            [_e("s1", 0, two), _f("s2", "x", False)],
            ViolationKind.TERMINAL_STATE_MISMATCH,
            "invalid_attempt_envelopes",
        ),
    ]
    for events, kind, code in cases:
        with pytest.raises(EnvelopeViolation) as ei:
            analyze([_env(i + 1, ev) for i, ev in enumerate(events)])
        assert ei.value.kind is kind and ei.value.to_run_error().code == code
    with pytest.raises(EnvelopeViolation) as ei:
        analyze([_env(1, _e("s1", 0, two)), _env(2, DomainEvent(name="x", payload={}), other)])
    assert ei.value.to_run_error().code == "run_id_mismatch"


async def test_i_resume_error_codes_from_store() -> None:
    """I [§13 steps 4-5]: terminal_without_entered, missing_run_started and run_started_op_id_mismatch via resume."""
    plan = make_plan([("s1", SetKey())])
    ms = MemoryStore()
    mid, iid = await _seed(ms)
    await _append(ms, [_rs(mid, iid), _f("s1", "x", False)])
    with pytest.raises(RunError) as ei:
        await _engine(plan).resume(ms.stores, RUN)
    assert ei.value.code == "terminal_without_entered"

    ms = MemoryStore()
    mid, iid = await _seed(ms)
    await _append(ms, [DomainEvent(name="x", payload={})])
    with pytest.raises(RunError) as ei:
        await _engine(plan).resume(ms.stores, RUN)
    assert ei.value.code == "missing_run_started"

    ms = MemoryStore()
    mid, iid = await _seed(ms)
    await _append(ms, [RunStarted(op_id=OpId("zzz"), manifest_id=mid, initial_snapshot_id=iid)])
    with pytest.raises(RunError) as ei:
        await _engine(plan).resume(ms.stores, RUN)
    assert ei.value.code == "run_started_op_id_mismatch"


async def test_i_resume_cancelled_run_is_a_no_op() -> None:
    """I / C3 [§5.2]: a stream ending with RunCompleted{Cancelled} → resume returns Cancelled, appends nothing."""
    ms = MemoryStore()
    mid, iid = await _seed(ms)
    await _append(ms, [_rs(mid, iid), RunCompleted(status=RunStatus.CANCELLED, final_snapshot_id=iid)])
    res = await _engine(make_plan([("s1", SetKey())])).resume(ms.stores, RUN)
    assert res.phase is RunPhase.CANCELLED and res.final_snapshot_id == iid
    assert await ms.events.head_seq(RUN) == 2


async def test_i_resume_without_plan_resolver() -> None:
    """I [this project]: an engine without plan_resolver cannot resume: a clear RunError."""
    ms = MemoryStore()
    mid, iid = await _seed(ms)
    await _append(ms, [_rs(mid, iid)])
    with pytest.raises(RunError) as ei:
        await _engine(None).resume(ms.stores, RUN)
    assert ei.value.code == "plan_resolver_missing"


async def test_i_resume_retry_after_flaky_crash_then_failpoint_again() -> None:
    """I [derived]: two crashes in a row each leave an orphan; resume twice recovers both and completes."""
    ms = MemoryStore()
    flaky = Flaky(failures=0)
    plan = make_plan([("s1", flaky)])
    fp = Failpoints.stop_after_handler()
    engine = _engine(plan, failpoints=fp)
    first = await start_plan(engine, ms.stores, plan, base_config())
    fp.stop_after_handler_once = True
    second = await engine.resume(ms.stores, first.run_id)
    assert second.phase is RunPhase.RUNNING
    res = await engine.resume(ms.stores, first.run_id)
    assert res.phase is RunPhase.COMPLETED
    envs = await read_events(ms.stores, first.run_id)
    assert entered(envs, "s1") == [0, 1, 2]
    assert [t[2] for t in trace(envs) if t[0] == "F"] == ["orphan_attempt_recovered"] * 2


# ------------------------------------------------------------------------------------------- proof op (AT-06..08)


def _proof_plan() -> ExecutionPlan:
    """read_facts → apply_side_effect → write_output (the acceptance tests' proof op)."""
    from engine.hashing import artifact_id_for_json
    from engine.ids import FactKey
    from engine.io import IoCall
    from engine.meta import Idempotency, SideEffectKind, StateMeta
    from engine.plan import DependencyEdge, StateGraph, StateNode
    from engine.testing import FnState

    async def read_facts(ctx: Any, io: Any, rec: Any) -> None:
        res = await io.call(IoCall(namespace="proof.read", request={"q": "facts"}, fact_key=FactKey("proof:read|i:0")))
        ctx.write("facts", res.response)

    async def apply_side_effect(ctx: Any, io: Any, rec: Any) -> None:
        key = artifact_id_for_json(ctx.read("facts"))
        fact_key = f"proof:side_effect|op:proof.main|id:{key}"
        if await io.get_recorded_fact(fact_key) is None:
            await rec.emit(DomainEvent(name="proof_idempotency_key", payload={"idempotency_key": key}))
        res = await io.call(IoCall(namespace="proof.side_effect", request={"id": key}, fact_key=FactKey(fact_key)))
        ctx.write("receipt", res.response)

    async def write_output(ctx: Any, io: Any, rec: Any) -> None:
        out = {"facts": ctx.read("facts"), "receipt": ctx.read("receipt")}
        await io.record_value("proof:output", out)
        ctx.write("output", out)

    se = StateMeta(side_effects=SideEffectKind.APPLY_SIDE_EFFECT, idempotency=Idempotency.key("proof:apply"))
    ids = [f"proof.main.{n}" for n in ("read_facts", "apply_side_effect", "write_output")]
    from engine.ids import StateId

    return ExecutionPlan(
        op_id=OpId("proof"),
        graph=StateGraph(
            states=(
                StateNode(id=StateId(ids[0]), state=FnState(read_facts)),
                StateNode(id=StateId(ids[1]), state=FnState(apply_side_effect, se)),
                StateNode(id=StateId(ids[2]), state=FnState(write_output)),
            ),
            edges=(DependencyEdge.of(ids[0], ids[1]), DependencyEdge.of(ids[1], ids[2])),
        ),
    )


def _proof_engine(plan: ExecutionPlan, factory: Any, **kw: Any) -> Engine:
    return Engine(
        plan_resolver=lambda m: plan,
        transports=[factory],
        clock=FakeClock(),
        sleeper=FakeSleeper(),
        run_ids=kw.pop("run_ids", fixed_run_ids()),
        **kw,
    )


async def test_i64_crash_after_side_effect_keeps_idempotency() -> None:
    """I64 (AT-07/08): failpoint right after the side-effect handler; start → Running; resume → Completed;
    entered(apply_side_effect) = [0,1]; one proof_idempotency_key event; proof.side_effect called once; final id
    equals a clean run's in fresh stores."""
    from engine.config import EventProfile
    from engine.testing import CountingFactory

    cfg = base_config(event_profile=EventProfile.NORMAL)
    plan = _proof_plan()
    ms = MemoryStore()
    factory = CountingFactory(group="proof")
    fp = Failpoints.stop_after_handler("proof.main.apply_side_effect")
    first = await start_plan(_proof_engine(plan, factory, failpoints=fp), ms.stores, plan, cfg)
    assert first.phase is RunPhase.RUNNING
    res = await _proof_engine(plan, factory).resume(ms.stores, first.run_id)
    assert res.phase is RunPhase.COMPLETED
    envs = await read_events(ms.stores, first.run_id)
    assert entered(envs, "proof.main.apply_side_effect") == [0, 1]
    assert [t for t in trace(envs) if t == ("D", "proof_idempotency_key")] == [("D", "proof_idempotency_key")]
    assert factory.calls_to("proof.side_effect") == 1 and factory.calls_to("proof.read") == 1

    clean_factory = CountingFactory(group="proof")
    clean = await start_plan(_proof_engine(plan, clean_factory), MemoryStore().stores, plan, cfg)
    assert clean.final_snapshot_id == res.final_snapshot_id


async def test_i65_live_then_replay_determinism() -> None:
    """I65 (AT-06): run the proof op live (final F); drive each state in topological order with a replay provider
    (attempt 0) over the run's fact index from the initial snapshot → the context's canonical id equals F.
    Live transport counts: proof.read 1, proof.side_effect 1, proof.output 0."""
    from engine._runtime.context_runtime import StagedContext
    from engine._runtime.facts import FactIndex
    from engine.hashing import artifact_id_for_json
    from engine.plan import topological_order
    from engine.replay_io import ReplayIo
    from engine.testing import CountingFactory

    plan = _proof_plan()
    ms = MemoryStore()
    factory = CountingFactory(group="proof")
    live = await start_plan(_proof_engine(plan, factory), ms.stores, plan, base_config())
    assert live.phase is RunPhase.COMPLETED
    assert (
        factory.calls_to("proof.read"),
        factory.calls_to("proof.side_effect"),
        factory.calls_to("proof.output"),
    ) == (
        1,
        1,
        0,
    )
    envs = await read_events(ms.stores, live.run_id)
    facts = FactIndex.rebuild(envs)
    rs = envs[0].event
    assert isinstance(rs, RunStarted)
    ctx_value: dict[str, Any] = await snapshot_of(ms.stores, rs.initial_snapshot_id)

    class _NoopRecorder:
        async def emit(self, event: DomainEvent) -> None:
            return None

        async def emit_many(self, events: Any) -> None:
            return None

    for state_id in topological_order(plan):
        meta = plan.state(state_id).meta()
        ctx = StagedContext(ctx_value)
        io = ReplayIo(
            run_id=live.run_id,
            state_id=state_id,
            attempt=0,
            facts=facts,
            stores=ms.stores,
            side_effect_key=meta.idempotency.key_value,
        )
        await plan.state(state_id).handle(ctx, io, _NoopRecorder())
        ctx_value = ctx.dump()
    assert artifact_id_for_json(ctx_value) == live.final_snapshot_id
    assert len(factory.calls) == 2  # replay touched no transport
