"""CONFORMANCE D: start validation — nothing is written when start is refused.

D20 is overridden by ENGINE-SPEC §0.5 (FanOutJoin is implemented): FanOutJoin is accepted and
``max_concurrency: 0`` is the invalid case (tested here and as Z/F4 in test_conformance_z_project).
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import FanOutJoin, RetryPolicy
from engine.context import JsonContext
from engine.engine import RunPhase, StartRun
from engine.errors import ContextErrorKind, RunError, RunErrorKind, StorageErrorKind
from engine.ids import ArtifactId, OpId
from engine.plan import DependencyEdge, ExecutionPlan, StateGraph, StateNode
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
    start_plan,
    store_manifest,
)

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


def _engine() -> Engine:
    return Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())


async def _nothing_written(ms: MemoryStore) -> None:
    assert await ms.events.list_runs() == []


async def _start(ms: MemoryStore, plan: ExecutionPlan, **kw: Any) -> Any:
    cfg = kw.pop("cfg", base_config())
    manifest = kw.pop("manifest", make_manifest(cfg))
    mid = kw.pop("manifest_id", None)
    if mid is None:
        mid = await store_manifest(ms.stores, manifest)
    run = StartRun(
        manifest=manifest,
        manifest_id=mid,
        plan=plan,
        run_config=kw.pop("run_config", cfg),
        initial_context=JsonContext(kw.pop("initial", {})),
    )
    return await _engine().start(ms.stores, run)


async def test_d20_overridden_fan_out_join_is_accepted() -> None:
    """D20 (overridden by §0.5): FanOutJoin{2} with plan [SetKey] runs to Completed."""
    ms = MemoryStore()
    cfg = base_config(execution_mode=FanOutJoin(max_concurrency=2))
    res = await start_plan(_engine(), ms.stores, make_plan([("s1", SetKey())]), cfg)
    assert res.phase is RunPhase.COMPLETED


async def test_d20_f4_max_concurrency_zero_is_invalid_plan() -> None:
    """D20/F4: FanOutJoin{0} → InvalidPlan invalid_plan, nothing stored."""
    ms = MemoryStore()
    cfg = base_config(execution_mode=FanOutJoin(max_concurrency=0))
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), cfg=cfg)
    assert ei.value.kind is RunErrorKind.INVALID_PLAN and ei.value.code == "invalid_plan"
    await _nothing_written(ms)


def _raw_plan(states: list[str], edges: list[tuple[str, str]]) -> ExecutionPlan:
    return ExecutionPlan(
        op_id=OpId("op"),
        graph=StateGraph(
            states=tuple(StateNode(id=sid(s), state=SetKey()) for s in states),
            edges=tuple(DependencyEdge.of(sid(a), sid(b)) for a, b in edges),
        ),
    )


@pytest.mark.parametrize(
    "plan",
    [
        _raw_plan([], []),
        _raw_plan(["s1", "s1"], []),
        _raw_plan(["s1"], [("s1", "missing")]),
        _raw_plan(["s1", "s2"], [("s1", "s2"), ("s2", "s1")]),
    ],
    ids=["empty", "duplicate", "dangling_edge", "cycle"],
)
async def test_d21_invalid_plans(plan: ExecutionPlan) -> None:
    """D21: empty / duplicate id / dangling edge / cycle → InvalidPlan invalid_plan, no events."""
    ms = MemoryStore()
    with pytest.raises(RunError) as ei:
        await _start(ms, plan)
    assert ei.value.kind is RunErrorKind.INVALID_PLAN and ei.value.code == "invalid_plan"
    await _nothing_written(ms)


async def test_d22a_manifest_id_mismatch() -> None:
    """D22(a): manifest_id "0"*64 → InvalidPlan manifest_id_mismatch."""
    ms = MemoryStore()
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), manifest_id=ArtifactId("0" * 64))
    assert ei.value.kind is RunErrorKind.INVALID_PLAN and ei.value.code == "manifest_id_mismatch"
    await _nothing_written(ms)


async def test_d22b_manifest_op_id_mismatch() -> None:
    """D22(b): plan op_id ``other`` → manifest_op_id_mismatch."""
    ms = MemoryStore()
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())], op_id="other"))
    assert ei.value.code == "manifest_op_id_mismatch"
    await _nothing_written(ms)


async def test_d22c_run_config_mismatch() -> None:
    """D22(c): StartRun.run_config with max_attempts 4 ≠ manifest → run_config_mismatch."""
    ms = MemoryStore()
    cfg = base_config()
    other = cfg.model_copy(update={"retry_policy": RetryPolicy(max_attempts=4, backoff=cfg.retry_policy.backoff)})
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), cfg=cfg, run_config=other)
    assert ei.value.code == "run_config_mismatch"
    await _nothing_written(ms)


async def test_d22d_manifest_not_stored() -> None:
    """D22(d): correct id, manifest never stored → Storage(NotFound) manifest_not_found."""
    ms = MemoryStore()
    from engine.hashing import artifact_id_for_json

    manifest = make_manifest(base_config())
    mid = artifact_id_for_json(manifest.model_dump(mode="json"))
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), manifest=manifest, manifest_id=mid)
    assert ei.value.kind is RunErrorKind.STORAGE and ei.value.code == "manifest_not_found"
    assert ei.value.cause is not None and ei.value.cause.kind is StorageErrorKind.NOT_FOUND  # type: ignore[attr-defined]
    await _nothing_written(ms)


async def test_d22e_manifest_with_float() -> None:
    """D22(e): input_params {"v":0.5} → InvalidPlan manifest_not_canonical."""
    ms = MemoryStore()
    manifest = make_manifest(base_config(), input_params={"v": 0.5})
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), manifest=manifest, manifest_id=ArtifactId("1" * 64))
    assert ei.value.kind is RunErrorKind.INVALID_PLAN and ei.value.code == "manifest_not_canonical"
    await _nothing_written(ms)


async def test_d22f_manifest_with_secret() -> None:
    """D22(f): input_params {"authorization":"Bearer x"} → InvalidPlan secrets_detected."""
    ms = MemoryStore()
    manifest = make_manifest(base_config(), input_params={"authorization": "Bearer x"})
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), manifest=manifest, manifest_id=ArtifactId("1" * 64))
    assert ei.value.kind is RunErrorKind.INVALID_PLAN and ei.value.code == "secrets_detected"
    await _nothing_written(ms)


async def test_d22_stored_manifest_differs() -> None:
    """D22 [derived, §5.1 step 5]: the id names a different stored manifest → manifest_id_mismatch first;
    a stored artifact under the right id that is not a manifest → manifest_deserialize_failed."""
    ms = MemoryStore()
    manifest = make_manifest(base_config())
    from engine._kinds import ArtifactKind
    from engine.hashing import artifact_id_for_json, canonical_json_bytes

    mid = artifact_id_for_json(manifest.model_dump(mode="json"))
    # Corrupt store: answers the manifest id with other bytes → content address mismatch (Corruption).
    ms.artifacts._blobs[mid] = canonical_json_bytes({"a": 1})
    ms.artifacts.kinds[mid] = ArtifactKind.MANIFEST
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), manifest=manifest, manifest_id=mid)
    assert ei.value.kind is RunErrorKind.STORAGE and ei.value.code == "artifact_content_address_mismatch"
    await _nothing_written(ms)


async def test_d23_secret_in_initial_context() -> None:
    """D23: initial context {mnemonic: phrase} → RunError::Context(Other) secrets_detected, nothing stored."""
    ms = MemoryStore()
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), initial={"mnemonic": MNEMONIC})
    assert ei.value.kind is RunErrorKind.CONTEXT and ei.value.code == "secrets_detected"
    assert ei.value.cause is not None and ei.value.cause.kind is ContextErrorKind.OTHER  # type: ignore[attr-defined]
    await _nothing_written(ms)
    for blob in ms.artifacts.all_bytes():
        assert b"mnemonic" not in blob and MNEMONIC.encode() not in blob


async def test_d_float_in_initial_context() -> None:
    """D [derived §5.1 step 7]: float in the initial context → Context(Serialization) context_snapshot_not_canonical."""
    ms = MemoryStore()
    with pytest.raises(RunError) as ei:
        await _start(ms, make_plan([("s1", SetKey())]), initial={"v": 1.5})
    assert ei.value.kind is RunErrorKind.CONTEXT and ei.value.code == "context_snapshot_not_canonical"
    await _nothing_written(ms)
