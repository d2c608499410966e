"""Resume rejects attempt-envelope violations with the codes of ENGINE-SPEC §4.3 / §13 step 4 (issue 13 item 4).

Every violation is ``invalid_attempt_envelopes``; ``terminal_without_entered`` is only for a
``StateFailed`` with no open attempt. Streams are built by hand in a memory store and resumed.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine import ArtifactKind
from engine.errors import ErrorCategory, RunError, RunErrorKind, StateError
from engine.events import EventEnvelope, RunStarted, StateCompleted, StateEntered, StateFailed
from engine.hashing import canonical_json_bytes
from engine.ids import ArtifactId, OpId, RunId
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    SetKey,
    base_config,
    fixed_run_ids,
    make_manifest,
    make_plan,
    sid,
    store_manifest,
)

RUN = RunId("11111111-1111-4111-8111-111111111111")


def _entered(state: str, attempt: int, base: ArtifactId) -> StateEntered:
    return StateEntered(state_id=sid(state), attempt=attempt, base_snapshot_id=base)


def _completed(state: str, snapshot: ArtifactId) -> StateCompleted:
    return StateCompleted(state_id=sid(state), context_snapshot_id=snapshot)


def _failed(state: str) -> StateFailed:
    error = StateError.new("boom", "boom", retryable=False, category=ErrorCategory.UNKNOWN)
    return StateFailed(state_id=sid(state), error=error, failure_snapshot_id=None)


async def _resume(build: Any) -> RunError:
    """Seed a memory store, append ``build(initial_id)`` after RunStarted, resume, return the error."""
    ms = MemoryStore()
    mid = await store_manifest(ms.stores, make_manifest(base_config()))
    iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes({}))
    events = [RunStarted(op_id=OpId("op"), manifest_id=mid, initial_snapshot_id=iid), *build(iid)]
    await ms.events.append(
        RUN, 0, [EventEnvelope(run_id=RUN, seq=i + 1, ts_millis=None, event=ev) for i, ev in enumerate(events)]
    )
    plan = make_plan([("s1", SetKey()), ("s2", SetKey())])
    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    head = await ms.events.head_seq(RUN)
    with pytest.raises(RunError) as ei:
        await engine.resume(ms.stores, RUN)
    assert await ms.events.head_seq(RUN) == head, "a rejected stream gets nothing appended"
    assert ei.value.kind is RunErrorKind.INVALID_PLAN
    return ei.value


async def test_completed_without_an_open_attempt_is_invalid_attempt_envelopes() -> None:
    err = await _resume(lambda i: [_completed("s1", i)])
    assert err.code == "invalid_attempt_envelopes"


async def test_second_completed_of_an_attempt_is_invalid_attempt_envelopes() -> None:
    err = await _resume(lambda i: [_entered("s1", 0, i), _completed("s1", i), _completed("s1", i)])
    assert err.code == "invalid_attempt_envelopes"


async def test_failed_without_an_open_attempt_is_terminal_without_entered() -> None:
    err = await _resume(lambda i: [_failed("s1")])
    assert err.code == "terminal_without_entered"
    err = await _resume(lambda i: [_entered("s1", 0, i), _failed("s1"), _failed("s1")])
    assert err.code == "terminal_without_entered"


async def test_other_violations_stay_invalid_attempt_envelopes() -> None:
    nested = await _resume(lambda i: [_entered("s1", 0, i), _entered("s1", 1, i)])
    assert nested.code == "invalid_attempt_envelopes"
    mismatch = await _resume(lambda i: [_entered("s1", 0, i), _completed("s2", i)])
    assert mismatch.code == "invalid_attempt_envelopes"
