"""CONFORMANCE O94: a base snapshot that is not a JSON object aborts the attempt (ENGINE-SPEC §8 step 3, §10.2),
plus the staged context rules of §10.2 as seen by handlers."""

from __future__ import annotations

from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine._runtime.context_runtime import StagedContext
from engine.engine import RunPhase
from engine.errors import ContextErrorKind, RunError, RunErrorKind, StorageErrorKind
from engine.events import EventEnvelope, RunStarted
from engine.hashing import canonical_json_bytes
from engine.ids import ArtifactId, OpId, RunId
from engine.io import IoProvider
from engine.recorder import EventRecorder
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    FnState,
    SetKey,
    base_config,
    fixed_run_ids,
    make_manifest,
    make_plan,
    read_events,
    snapshot_of,
    start_plan,
    store_manifest,
    trace,
)

RUN = RunId("33333333-3333-4333-8333-333333333333")


async def _resume_with_initial(ms: MemoryStore, initial_id: ArtifactId) -> RunError:
    mid = await store_manifest(ms.stores, make_manifest(base_config()))
    rs = RunStarted(op_id=OpId("op"), manifest_id=mid, initial_snapshot_id=initial_id)
    await ms.events.append(RUN, 0, [EventEnvelope(run_id=RUN, seq=1, event=rs)])
    plan = make_plan([("s1", SetKey())])
    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    with pytest.raises(RunError) as ei:
        await engine.resume(ms.stores, RUN)
    return ei.value


async def test_o94_snapshot_must_be_an_object() -> None:
    """O94: base snapshot [1,2] (canonical) → RunError::Context context_snapshot_not_object; attempt left open."""
    ms = MemoryStore()
    iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes([1, 2]))
    err = await _resume_with_initial(ms, iid)
    assert err.kind is RunErrorKind.CONTEXT and err.code == "context_snapshot_not_object"
    assert err.cause is not None and err.cause.kind is ContextErrorKind.SERIALIZATION  # type: ignore[attr-defined]
    assert trace(await read_events(ms.stores, RUN)) == [("RS", iid), ("E", "s1", 0, iid)]


async def test_o94_non_canonical_snapshot_is_corruption() -> None:
    """O94 [derived §2.3]: a base snapshot with whitespace → Storage Corruption artifact_not_canonical; attempt open."""
    ms = MemoryStore()
    iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, b'{ "a": 1 }')
    err = await _resume_with_initial(ms, iid)
    assert err.kind is RunErrorKind.STORAGE and err.code == "artifact_not_canonical"
    assert err.cause is not None and err.cause.kind is StorageErrorKind.CORRUPTION  # type: ignore[attr-defined]
    assert trace(await read_events(ms.stores, RUN))[-1] == ("E", "s1", 0, iid)


async def test_o94_then_resume_recovers_orphan_when_fixed() -> None:
    """O94 [§8]: the open attempt left by an engine error is an orphan the next resume recovers."""
    ms = MemoryStore()
    iid = await ms.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes([1, 2]))
    await _resume_with_initial(ms, iid)
    plan = make_plan([("s1", SetKey())])
    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    with pytest.raises(RunError):
        await engine.resume(ms.stores, RUN)
    t = trace(await read_events(ms.stores, RUN))
    assert t[2:] == [("F", "s1", "orphan_attempt_recovered", True), ("E", "s1", 1, iid)]


async def test_o94_secret_written_to_context_aborts_without_snapshot() -> None:
    """O94 [§8, §12.2]: a handler writing a secret → Context(Other) secrets_detected; no snapshot, attempt open."""
    ms = MemoryStore()

    async def leak(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        ctx.write("password", "hunter2")

    with pytest.raises(RunError) as ei:
        await start_plan(
            Engine(clock=FakeClock(), run_ids=fixed_run_ids()),
            ms.stores,
            make_plan([("s1", FnState(leak))]),
            base_config(),
        )
    assert ei.value.kind is RunErrorKind.CONTEXT and ei.value.code == "secrets_detected"
    (run_id,) = await ms.events.list_runs()
    assert [t[0] for t in trace(await read_events(ms.stores, run_id))] == ["RS", "E"]
    for blob in ms.artifacts.all_bytes():
        assert b"hunter2" not in blob


def test_o94_staged_context_overlay_and_tombstones() -> None:
    """O94 / §10.2: reads see the overlay first, a tombstone reads as absent, dump applies both; base untouched."""
    base = {"a": 1, "b": {"n": [1]}}
    ctx = StagedContext(base)
    ctx.write("c", 3)
    ctx.delete("a")
    got = ctx.read("b")
    got["n"].append(2)  # a copy: mutating it changes nothing
    assert ctx.read("a") is None and ctx.read("c") == 3 and ctx.read("b") == {"n": [1]}
    assert ctx.dump() == {"b": {"n": [1]}, "c": 3}
    assert base == {"a": 1, "b": {"n": [1]}}
    ctx.write("a", 5)
    assert ctx.read("a") == 5 and ctx.dump()["a"] == 5


async def test_o94_failed_attempt_discards_staged_writes() -> None:
    """O94 / §7.1: a failed attempt's staged writes are thrown away; the retry starts from the same base."""
    ms = MemoryStore()
    seen: list[Any] = []

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        seen.append(ctx.read("tmp"))
        ctx.write("tmp", len(seen))
        if len(seen) == 1:
            from engine.errors import StateError

            raise StateError.new("flaky", "once", retryable=True)

    res = await start_plan(
        Engine(clock=FakeClock(), run_ids=fixed_run_ids()),
        ms.stores,
        make_plan([("s1", FnState(handler))]),
        base_config(),
    )
    assert res.phase is RunPhase.COMPLETED and seen == [None, None]
    assert await snapshot_of(ms.stores, res.final_snapshot_id) == {"tmp": 2}  # type: ignore[arg-type]
