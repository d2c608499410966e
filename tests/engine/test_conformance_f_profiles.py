"""CONFORMANCE F: skip_tags and event profiles (ENGINE-SPEC §7.2, §9)."""

from __future__ import annotations

from typing import Any

from engine.config import EventProfile
from engine.engine import RunPhase
from engine.errors import RunError, StateError
from engine.events import DomainEvent
from engine.hashing import artifact_id_for_bytes
from engine.io import IoProvider
from engine.recorder import EventRecorder
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    FnState,
    SetKey,
    WriteY,
    base_config,
    fixed_run_ids,
    make_plan,
    read_events,
    snapshot_of,
    start_plan,
    trace,
)

FACT = DomainEvent(
    name="fact_recorded", payload={"key": "fact/key", "payload_id": artifact_id_for_bytes(b"x"), "meta": {}}
)
WRITTEN = DomainEvent(
    name="artifact_written", payload={"artifact_id": artifact_id_for_bytes(b"y"), "kind": "Output", "meta": {}}
)
CUSTOM = DomainEvent(name="custom", payload={"ok": True})


def _engine() -> Engine:
    return Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())


async def _emit_run(
    profile: EventProfile, *events: DomainEvent, many: bool = False
) -> tuple[Any, list[Any], list[Any]]:
    """Run one state that emits ``events``; return (result, names of domain events in the stream, errors seen)."""
    ms = MemoryStore()
    errors: list[Any] = []

    async def emit(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        try:
            if many:
                await rec.emit_many(list(events))
            else:
                for e in events:
                    await rec.emit(e)
        except RunError as exc:
            errors.append(exc)
            raise StateError.new(exc.code, "emit refused", retryable=False) from None

    res = await start_plan(_engine(), ms.stores, make_plan([("s1", FnState(emit))]), base_config(event_profile=profile))
    envs = await read_events(ms.stores, res.run_id)
    return res, [t[1] for t in trace(envs) if t[0] == "D"], [errors, envs]


async def test_f32_skip_tags_skip_without_running() -> None:
    """F32: skip_tags [apply_side_effect]; s1 SetKey → s2 WriteY: counter 0, E(s2,0,S1), C(s2,S1), final S1."""
    ms = MemoryStore()
    write_y = WriteY()
    plan = make_plan([("s1", SetKey()), ("s2", write_y)], [("s1", "s2")])
    res = await start_plan(_engine(), ms.stores, plan, base_config(skip_tags=("apply_side_effect",)))
    assert res.phase is RunPhase.COMPLETED and write_y.calls == 0
    t = trace(await read_events(ms.stores, res.run_id))
    s1 = t[2][2]
    assert t[3:] == [("E", "s2", 0, s1), ("C", "s2", s1), ("RC", "Completed", s1)]
    assert res.final_snapshot_id == s1 and await snapshot_of(ms.stores, s1) == {"x": 1}


async def test_f32_empty_skip_list_skips_nothing() -> None:
    """F32 [derived]: no skip tags → WriteY runs and writes y."""
    ms = MemoryStore()
    write_y = WriteY()
    res = await start_plan(_engine(), ms.stores, make_plan([("s1", write_y)]), base_config())
    assert write_y.calls == 1 and await snapshot_of(ms.stores, res.final_snapshot_id) == {"y": 2}  # type: ignore[arg-type]


async def test_f33_minimal_profile_keeps_only_fact_recorded() -> None:
    """F33: under Minimal, fact_recorded is kept, artifact_written and custom dropped (emit still succeeds)."""
    res, names, (errors, _) = await _emit_run(EventProfile.MINIMAL, FACT, WRITTEN, CUSTOM)
    assert res.phase is RunPhase.COMPLETED and errors == []
    assert names == ["fact_recorded"]
    res, names, _ = await _emit_run(EventProfile.MINIMAL, CUSTOM)
    assert res.phase is RunPhase.COMPLETED and names == []


async def test_f33_normal_profile_forwards_custom() -> None:
    """F33: under Normal (and Verbose, Custom) every event is kept."""
    for profile in (EventProfile.NORMAL, EventProfile.VERBOSE, EventProfile.custom("x")):
        res, names, _ = await _emit_run(profile, FACT, WRITTEN, CUSTOM)
        assert res.phase is RunPhase.COMPLETED and names == ["fact_recorded", "artifact_written", "custom"]


async def test_f33_emit_many_is_one_append() -> None:
    """F33 [§9]: emit_many appends its events in order in one batch."""
    _res, names, (_, envs) = await _emit_run(EventProfile.NORMAL, CUSTOM, WRITTEN, many=True)
    assert names == ["custom", "artifact_written"]
    seqs = [e.seq for e in envs if isinstance(e.event, DomainEvent)]
    assert envs[seqs[0] - 1].ts_millis == envs[seqs[1] - 1].ts_millis and seqs[1] == seqs[0] + 1


async def test_f34_domain_event_with_secret_under_normal() -> None:
    """F34: Normal; payload {"password":"hunter2"} → domain_event_invalid; run Failed; nothing persisted."""
    bad = DomainEvent(name="test", payload={"password": "hunter2"})
    res, names, (errors, envs) = await _emit_run(EventProfile.NORMAL, bad)
    assert res.phase is RunPhase.FAILED and names == []
    assert [e.code for e in errors] == ["domain_event_invalid"]
    blob = "".join(e.to_json() for e in envs).lower()
    assert "password" not in blob and "hunter2" not in blob


async def test_f34_secret_event_silently_dropped_under_minimal() -> None:
    """F34 [§9 consequence]: under Minimal a secret-bearing custom event is dropped without error."""
    bad = DomainEvent(name="test", payload={"password": "hunter2"})
    res, names, (errors, _) = await _emit_run(EventProfile.MINIMAL, bad)
    assert res.phase is RunPhase.COMPLETED and names == [] and errors == []


async def test_f36_domain_event_with_float() -> None:
    """F36: Normal, payload {"value":1.5} → domain_event_invalid, nothing appended."""
    _res, names, (errors, _) = await _emit_run(EventProfile.NORMAL, DomainEvent(name="test", payload={"value": 1.5}))
    assert [e.code for e in errors] == ["domain_event_invalid"] and names == []


async def test_f36_emit_many_one_bad_event_rejects_batch() -> None:
    """F36 [§9]: emit_many with one invalid event appends none of them."""
    _res, names, (errors, _) = await _emit_run(
        EventProfile.NORMAL, CUSTOM, DomainEvent(name="api_key_leak", payload={}), many=True
    )
    assert [e.code for e in errors] == ["domain_event_invalid"] and names == []


async def test_f_retry_scheduled_dropped_under_minimal() -> None:
    """F [§0.7]: retry_scheduled is a non-fact domain event, so Minimal drops it."""
    from engine.testing import Flaky

    ms = MemoryStore()
    res = await start_plan(_engine(), ms.stores, make_plan([("s1", Flaky())]), base_config())
    assert res.phase is RunPhase.COMPLETED
    assert [t for t in trace(await read_events(ms.stores, res.run_id)) if t[0] == "D"] == []
