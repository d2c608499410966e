"""The run model: a run's envelopes folded into run status, per-state status, attempts and timers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.config import Duration, Exponential, Fixed, RetryPolicy, RunConfig, RunManifest
from engine.errors import StateError
from engine.events import (
    DomainEvent,
    Event,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.events import RunStatus as EngineStatus
from engine.ids import ArtifactId, OpId, RunId, StateId
from engine.meta import StateMeta
from engine.state import StateOutcome
from engine.stores import MemoryStore
from engine.testing import make_plan
from mfm_tui.run_model import (
    URGENCY,
    LeaseStatus,
    PlanShape,
    RunDisplayStatus,
    RunModel,
    StateStatus,
    lease_status_of,
    run_json,
)
from tests.tui import fixtures as fx

RUN = RunId("00000000-0000-4000-8000-0000000000aa")
I = ArtifactId("0" * 64)  # noqa: E741 - the spec's notation for the initial snapshot
S1, S2, S3 = (ArtifactId(c * 64) for c in "123")
M = ArtifactId("f" * 64)
s1, s2, s3 = (StateId(f"m.main.s{i}") for i in (1, 2, 3))
T0 = 1_000_000


def envs(*events: Event, start_seq: int = 1, dt: int = 100) -> list[EventEnvelope]:
    return [
        EventEnvelope(run_id=RUN, seq=start_seq + i, ts_millis=T0 + (start_seq + i) * dt, event=e)
        for i, e in enumerate(events)
    ]


def RS() -> RunStarted:
    return RunStarted(op_id=OpId("op"), manifest_id=M, initial_snapshot_id=I)


def E(s: StateId, a: int, base: ArtifactId) -> StateEntered:
    return StateEntered(state_id=s, attempt=a, base_snapshot_id=base)


def C(s: StateId, snap: ArtifactId) -> StateCompleted:
    return StateCompleted(state_id=s, context_snapshot_id=snap)


def F(s: StateId, code: str = "boom", retryable: bool = False) -> StateFailed:
    return StateFailed(state_id=s, error=StateError.new(code, f"{code} happened", retryable=retryable))


def RC(status: EngineStatus, final: ArtifactId) -> RunCompleted:
    return RunCompleted(status=status, final_snapshot_id=final)


def manifest(max_attempts: int = 3, backoff: Any = None, **cfg: Any) -> RunManifest:
    policy = RetryPolicy(max_attempts=max_attempts, backoff=backoff or Fixed(delay=Duration.from_millis(0)))
    return RunManifest(
        op_id=OpId("op"), op_version="1", input_params={}, run_config=RunConfig(retry_policy=policy, **cfg)
    )


def chain() -> PlanShape:
    return PlanShape(state_ids=(s1, s2, s3), edges=((s1, s2), (s2, s3)))


def fold(*events: Event, **kw: Any) -> RunModel:
    m = RunModel(RUN, **kw)
    m.apply(envs(*events))
    return m


# --------------------------------------------------------------------------------------- traces (§14)


def test_linear_success_is_completed_with_checkpoint_and_durations() -> None:
    m = fold(
        RS(), E(s1, 0, I), C(s1, S1), E(s2, 0, S1), C(s2, S2), E(s3, 0, S2), C(s3, S3), RC(EngineStatus.COMPLETED, S3)
    )
    assert m.status is RunDisplayStatus.COMPLETED
    assert (m.done, m.total) == (3, 3)
    assert [sv.status for sv in m.states.values()] == [StateStatus.COMPLETED] * 3
    assert m.checkpoint_id == S3 and m.final_snapshot_id == S3
    assert m.op_id == "op" and m.manifest_id == M and m.initial_snapshot_id == I
    assert m.started_millis == T0 + 100 and m.ended_millis == T0 + 800
    assert m.duration_millis(now_millis=T0 + 99_999) == 700  # finished: now does not matter
    att = m.states[s2].attempts[0]
    assert (att.entered_seq, att.terminal_seq, att.base_snapshot_id, att.result_snapshot_id) == (4, 5, S1, S2)
    assert att.duration_millis() == 100
    assert m.current_state is None and m.error is None and m.anomalies == []


def test_non_retryable_failure_names_the_failed_state_and_keeps_later_states_pending() -> None:
    m = fold(RS(), E(s1, 0, I), C(s1, S1), E(s2, 0, S1), F(s2, "needs_file"), RC(EngineStatus.FAILED, S1), plan=chain())
    assert m.status is RunDisplayStatus.FAILED
    assert m.failed_state is not None and m.failed_state.state_id == s2
    assert m.error == ("needs_file", "needs_file happened")
    assert m.current_state is m.failed_state
    assert m.states[s3].status is StateStatus.PENDING
    assert (m.done, m.total) == (1, 3)
    assert m.checkpoint_id == S1


def test_failure_before_run_completed_is_already_failed_when_not_retryable() -> None:
    m = fold(RS(), E(s1, 0, I), F(s1, "bad", retryable=False), manifest=manifest())
    assert m.states[s1].status is StateStatus.FAILED
    assert m.status is RunDisplayStatus.RUNNING  # RunCompleted not yet written
    assert m.failed_state is not None


def test_retry_scheduled_event_gives_the_countdown_target() -> None:
    sched = DomainEvent(
        name="retry_scheduled",
        payload={"state_id": s2, "failed_attempt": 0, "next_attempt": 1, "delay_ms": 7000, "not_before_millis": 99_000},
    )
    m = fold(RS(), E(s1, 0, I), C(s1, S1), E(s2, 0, S1), F(s2, "http_503", True), sched, manifest=manifest(5))
    assert m.status is RunDisplayStatus.RETRYING
    sv = m.states[s2]
    assert sv.status is StateStatus.RETRYING
    assert sv.not_before_millis == 99_000
    assert sv.attempt_label == "2/5"
    target = m.retry_target
    assert target is not None and target.state is sv
    assert (target.next_attempt_number, target.max_attempts) == (2, 5)
    assert target.remaining_millis(92_000) == 7000 and target.remaining_millis(120_000) == 0
    assert m.current_state is sv

    m.apply(envs(E(s2, 1, S1), start_seq=7))
    assert sv.status is StateStatus.RUNNING and sv.not_before_millis is None
    assert sv.attempt_label == "2/5"
    assert m.status is RunDisplayStatus.RUNNING and m.retry_target is None
    assert [a.attempt for a in sv.attempts] == [0, 1]
    assert sv.error == ("http_503", "http_503 happened")


def test_countdown_is_derived_from_the_manifest_without_retry_scheduled() -> None:
    backoff = Exponential(base_delay=Duration.from_millis(1000), max_delay=Duration.from_millis(3000))
    m = fold(RS(), E(s1, 0, I), F(s1, "x", True), E(s1, 1, I), F(s1, "x", True), manifest=manifest(5, backoff))
    sv = m.states[s1]
    failed_at = m.states[s1].attempts[1].terminal_millis
    assert failed_at is not None
    assert sv.not_before_millis == failed_at + 2000  # backoff_after(1) = 1s × 2
    assert sv.attempt_label == "3/5"


def test_manifest_set_after_the_events_recomputes_max_and_countdown() -> None:
    m = fold(RS(), E(s1, 0, I), F(s1, "x", True))
    sv = m.states[s1]
    assert sv.status is StateStatus.RETRYING and sv.not_before_millis is None and sv.attempt_label == "2"
    m.set_manifest(manifest(2, Fixed(delay=Duration.from_secs(3))))
    assert sv.attempt_label == "2/2"
    assert sv.not_before_millis == T0 + 300 + 3000


def test_retries_exhausted_is_failed_even_before_run_completed() -> None:
    events = [RS()] + [ev for a in range(3) for ev in (E(s1, a, I), F(s1, "x", True))]
    m = fold(*events, manifest=manifest(3))
    assert m.states[s1].status is StateStatus.FAILED
    assert m.retry_target is None


def test_max_attempts_zero_and_one_never_retry() -> None:
    for n in (0, 1):
        m = fold(RS(), E(s1, 0, I), F(s1, "x", True), manifest=manifest(n))
        assert m.states[s1].status is StateStatus.FAILED
        assert m.states[s1].max_attempts == 1


def test_orphan_recovery_then_success() -> None:
    m = fold(RS(), E(s1, 0, I))
    assert m.states[s1].status is StateStatus.RUNNING and m.status is RunDisplayStatus.RUNNING
    assert [s.state_id for s in m.open_states] == [s1]
    m.apply(envs(F(s1, "orphan_attempt_recovered", True), E(s1, 1, I), C(s1, S1), start_seq=3))
    m.apply(envs(RC(EngineStatus.COMPLETED, S1), start_seq=6))
    assert m.status is RunDisplayStatus.COMPLETED
    assert m.states[s1].attempt_number == 2


def test_cancelled_run_marks_the_interrupted_state_cancelled() -> None:
    m = fold(RS(), E(s1, 0, I), C(s1, S1), E(s2, 0, S1), F(s2, "run_cancelled"), RC(EngineStatus.CANCELLED, S1))
    assert m.status is RunDisplayStatus.CANCELLED
    assert m.states[s2].status is StateStatus.CANCELLED
    assert m.cancelled_state is m.states[s2]
    assert m.failed_state is None


def test_cancel_request_and_stale_lease_change_an_unfinished_run_only() -> None:
    m = fold(RS(), E(s1, 0, I))
    assert m.set_cancel_requested(True) is True
    assert m.set_cancel_requested(True) is False
    assert m.status is RunDisplayStatus.CANCELLING
    assert m.set_lease(LeaseStatus.STALE) is True
    assert m.status is RunDisplayStatus.WORKER_LOST
    m.apply(envs(F(s1, "run_cancelled"), RC(EngineStatus.CANCELLED, I), start_seq=3))
    assert m.status is RunDisplayStatus.CANCELLED


def test_worker_lost_duration_stops_at_the_last_event() -> None:
    m = fold(RS(), E(s1, 0, I), lease=LeaseStatus.STALE)
    assert m.status is RunDisplayStatus.WORKER_LOST
    assert m.duration_millis(now_millis=T0 + 10_000) == 100
    m.set_lease(LeaseStatus.HELD)
    assert m.duration_millis(now_millis=T0 + 10_000) == 10_000 - 100


def test_empty_model_is_pending() -> None:
    m = RunModel(RUN)
    assert m.status is RunDisplayStatus.PENDING
    assert m.duration_millis(5) is None and m.current_state is None
    assert m.short_id == "00000000"


def test_skipped_state_from_plan_tags() -> None:
    plan = PlanShape(state_ids=(s1, s2), edges=((s1, s2),), tags={s1: (), s2: ("apply_side_effect",)})
    m = fold(
        RS(),
        E(s1, 0, I),
        C(s1, I),  # a state that wrote nothing is not skipped: its tags do not match
        E(s2, 0, I),
        C(s2, I),
        manifest=manifest(skip_tags=("apply_side_effect",)),
        plan=plan,
    )
    assert m.states[s1].status is StateStatus.COMPLETED
    assert m.states[s2].status is StateStatus.SKIPPED
    assert m.done == 2


def test_skipped_state_heuristic_without_plan_needs_skip_tags() -> None:
    events = (RS(), E(s1, 0, I), C(s1, I))
    assert fold(*events, manifest=manifest()).states[s1].status is StateStatus.COMPLETED
    m = fold(*events, manifest=manifest(skip_tags=("x",)))
    assert m.states[s1].status is StateStatus.SKIPPED
    assert m.checkpoint_id == I


def test_facts_are_attributed_to_the_open_attempt() -> None:
    fact = DomainEvent(name="fact_recorded", payload={"key": "exec:a#1", "payload_id": S3, "meta": {}})
    other = DomainEvent(name="op_boundary", payload={"op_path": "m.main", "phase": "start"})
    m = fold(RS(), other, E(s1, 0, I), fact, other, C(s1, S1))
    att = m.states[s1].attempts[0]
    assert [(f.key, f.payload_id, f.seq) for f in att.facts] == [("exec:a#1", S3, 4)]
    assert att.domain_events == 2
    assert len(m.states[s1].facts) == 1


def test_fan_out_has_several_open_attempts() -> None:
    m = fold(RS(), E(s1, 0, I), C(s1, S1), E(s2, 0, S1), E(s3, 0, S1), C(s2, S2))
    assert [s.state_id for s in m.open_states] == [s3]
    assert m.current_state is m.states[s3]
    assert m.anomalies == []


def test_a_fact_recorded_while_several_attempts_are_open_is_not_guessed_onto_a_state() -> None:
    fact = DomainEvent(name="fact_recorded", payload={"key": "exec:item#1", "payload_id": S3, "meta": {}})
    m = fold(RS(), E(s1, 0, I), C(s1, S1), E(s2, 0, S1), E(s3, 0, S1), fact, C(s2, S2), C(s3, S3))
    assert m.states[s2].facts == [] and m.states[s3].facts == []
    assert [(f.key, f.seq) for f in m.unattributed_facts] == [("exec:item#1", 6)]
    single = fold(RS(), E(s1, 0, I), C(s1, S1), E(s2, 0, S1), fact, C(s2, S2))
    assert [f.key for f in single.states[s2].facts] == ["exec:item#1"] and single.unattributed_facts == []


def test_incremental_folding_matches_a_single_fold_at_every_split() -> None:
    events = envs(RS(), E(s1, 0, I), F(s1, "x", True), E(s1, 1, I), C(s1, S1), E(s2, 0, S1), F(s2, "y"))
    whole = RunModel(RUN, manifest=manifest(), plan=chain())
    whole.apply(events)
    for cut in range(len(events) + 1):
        m = RunModel(RUN, manifest=manifest(), plan=chain())
        assert m.apply(events[:cut]) is (cut > 0)
        m.apply(events[cut:])
        assert run_json(m, now_millis=T0) == run_json(whole, now_millis=T0)


def test_duplicates_are_ignored_and_gaps_and_foreign_envelopes_recorded() -> None:
    m = fold(RS(), E(s1, 0, I))
    assert m.apply(envs(RS(), E(s1, 0, I))) is False
    assert m.event_count == 2
    m.apply(envs(C(s1, S1), start_seq=5))
    assert m.last_seq == 5 and any("gap" in a for a in m.anomalies)
    foreign = EventEnvelope(run_id=RunId("00000000-0000-4000-8000-0000000000bb"), seq=6, event=RS())
    m.apply([foreign])
    assert m.last_seq == 5 and any("stream of" in a for a in m.anomalies)


def test_malformed_streams_never_raise() -> None:
    bad_retry = DomainEvent(name="retry_scheduled", payload={"state_id": "nope"})
    m = fold(RS(), C(s1, S1), E(s2, 0, I), E(s2, 1, I), bad_retry, RC(EngineStatus.FAILED, I), E(s3, 0, I))
    assert len(m.anomalies) == 4
    assert m.states[s1].status is StateStatus.COMPLETED
    assert m.states[s1].attempts[0].entered_seq is None


def test_plan_shape_from_an_execution_plan() -> None:
    class _S:
        def __init__(self, *tags: str) -> None:
            self._tags = tags

        def meta(self) -> StateMeta:
            return StateMeta(tags=self._tags)

        async def handle(self, ctx: Any, io: Any, rec: Any) -> StateOutcome:
            return StateOutcome()

    plan = make_plan([("b", _S()), ("a", _S("report"))], [("a", "b")])
    shape = PlanShape.from_plan(plan)
    assert [s.split(".")[-1] for s in shape.state_ids] == ["a", "b"]
    assert shape.tags[StateId("machine.main.a")] == ("report",)
    m = RunModel(RUN, plan=shape)
    assert m.total == 2 and m.status is RunDisplayStatus.PENDING


def test_states_seen_in_events_but_absent_from_the_plan_stay_visible() -> None:
    m = fold(RS(), E(s3, 0, I))
    m.set_plan(PlanShape(state_ids=(s1, s2)))
    assert list(m.states) == [s1, s2, s3]
    assert m.states[s3].status is StateStatus.RUNNING


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("HELD", LeaseStatus.HELD),
        ("stale", LeaseStatus.STALE),
        (LeaseStatus.NONE, LeaseStatus.NONE),
        ("weird", LeaseStatus.UNKNOWN),
    ],
)
def test_lease_status_of_accepts_names_values_and_infos(value: Any, expected: LeaseStatus) -> None:
    class Info:
        state = value

    assert lease_status_of(value) is expected
    assert lease_status_of(Info()) is expected


def test_urgency_puts_trouble_first() -> None:
    order = sorted(RunDisplayStatus, key=URGENCY.__getitem__)
    assert order[:5] == [
        RunDisplayStatus.FAILED,
        RunDisplayStatus.CRASH_LOOPING,
        RunDisplayStatus.WORKER_LOST,
        RunDisplayStatus.NOT_STARTED,
        RunDisplayStatus.RETRYING,
    ]
    assert order[-1] is RunDisplayStatus.COMPLETED


def test_to_json_is_json() -> None:
    m = fold(RS(), E(s1, 0, I), F(s1, "x", True), manifest=manifest())
    data = json.loads(json.dumps(run_json(m, now_millis=T0 + 1000)))
    assert data["status"] == "retrying"
    assert data["states"][0]["attempts"][0]["outcome"] == "failed"


# ------------------------------------------------------------------------------------ the fixture store


async def _fixture_models() -> dict[RunId, RunModel]:
    f = await fx.build_fixture_store(MemoryStore())
    models = {}
    for run_id in await f.store.events.list_runs():
        envelopes = await f.store.events.read_range(run_id, 1)
        first = envelopes[0].event
        assert isinstance(first, RunStarted)
        raw = await f.store.artifacts.get(first.manifest_id)
        man = RunManifest.model_validate_json(raw)
        m = RunModel(run_id, manifest=man, plan=f.plan_resolver(man), lease=f.lease_probe(run_id))
        m.set_cancel_requested(await f.store.events.cancel_request(run_id) is not None)
        m.apply(envelopes)
        models[run_id] = m
    return models


async def test_fixture_store_has_a_run_in_every_status() -> None:
    models = await _fixture_models()
    got = {rid: (m.status, m.done, m.total) for rid, m in models.items()}
    assert got == {
        fx.RUN_FAILED: (RunDisplayStatus.FAILED, 1, 3),
        fx.RUN_RETRYING: (RunDisplayStatus.RETRYING, 1, 3),
        fx.RUN_LOST: (RunDisplayStatus.WORKER_LOST, 21, 60),
        fx.RUN_RUNNING: (RunDisplayStatus.RUNNING, 3, 5),
        fx.RUN_COMPLETED: (RunDisplayStatus.COMPLETED, 9, 9),
        fx.RUN_CANCELLED: (RunDisplayStatus.CANCELLED, 12, 30),
        fx.RUN_FANOUT: (RunDisplayStatus.RETRYING, 2, 7),
        fx.RUN_SKIPPED: (RunDisplayStatus.COMPLETED, 3, 3),
        fx.RUN_CANCELLING: (RunDisplayStatus.CANCELLING, 1, 3),
    }
    assert all(m.anomalies == [] for m in models.values())
    retry = models[fx.RUN_RETRYING].retry_target
    assert retry is not None and retry.remaining_millis(fx.NOW_MILLIS) == 7000 and retry.state.attempt_label == "3/5"
    derived = models[fx.RUN_FANOUT].retry_target
    assert derived is not None and derived.remaining_millis(fx.NOW_MILLIS) == 4000
    assert models[fx.RUN_SKIPPED].states[fx.sid("apply")].status is StateStatus.SKIPPED
    assert models[fx.RUN_FAILED].error is not None and models[fx.RUN_FAILED].error[0] == "needs_file"
    assert models[fx.RUN_COMPLETED].duration_millis(fx.NOW_MILLIS) == 20_935
