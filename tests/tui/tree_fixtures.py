"""A deterministic store with run trees (child runs, ENGINE-SPEC §16) for the TUI tests.

Two parents (``demo_children``): one failed with three children (2 completed, 1 failed), one running with two
(1 completed and joined, 1 still running), and a plain run. Fixed ids (children: UUID v5 of parent + fact key, as the
engine makes them), fixed times relative to ``NOW_MILLIS``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from engine.child_runs import child_run_id
from engine.config import Duration, EventProfile, Fixed, RetryPolicy, RunConfig, RunManifest
from engine.events import DOMAIN_EVENT_CHILD_RUN_COMPLETED, DOMAIN_EVENT_CHILD_RUN_SPAWNED, DomainEvent, RunStatus
from engine.ids import OpId, RunId
from mfm_tui.run_model import LeaseStatus, PlanShape
from tests.tui.fixtures import MIN, NOW_MILLIS, SEC, FixtureStore, RunBuilder, fixture_clock, plan_shape_for, sid

__all__ = [
    "PARENT_FAILED",
    "PARENT_RUNNING",
    "PLAIN",
    "build_tree_store",
    "children",
    "tree_app",
]

PARENT_FAILED = RunId("d3c1a5e0-7b2f-4c1d-9e8a-00000000a001")
PARENT_RUNNING = RunId("e4d2b6f1-8c3a-4d2e-8f9b-00000000a002")
PLAIN = RunId("f5e3c702-9d4b-4e3f-a0ac-00000000a003")


def children(parent: RunId, n: int) -> list[RunId]:
    return [child_run_id(parent, f"demo_children:spawn|i:{i}") for i in range(n)]


def _manifest(op: str, params: Any) -> RunManifest:
    policy = RetryPolicy(max_attempts=2, backoff=Fixed(delay=Duration.from_millis(0)))
    config = RunConfig(retry_policy=policy, event_profile=EventProfile.NORMAL)
    return RunManifest(op_id=OpId(op), op_version="1", input_params=params, run_config=config)


def _chain(names: tuple[str, ...]) -> PlanShape:
    ids = tuple(sid(n) for n in names)
    return PlanShape(state_ids=ids, edges=tuple(pairwise(ids)), tags={i: () for i in ids})


def tree_plan_shape(manifest: RunManifest) -> PlanShape | None:
    op = str(manifest.op_id)
    if op == "demo_children":
        return _chain(("run_children", "aggregate"))
    if op == "demo_child":
        return _chain(("work", "check", "report"))
    return plan_shape_for(manifest)


def _spawned(b: RunBuilder, child: RunId) -> None:
    payload = {"parent_run_id": str(b.run_id), "child_run_id": str(child), "child_manifest_id": "ab" * 32}
    b.ev(DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_SPAWNED, payload=payload), 5)


def _joined(b: RunBuilder, child: RunId, status: str) -> None:
    payload = {"child_run_id": str(child), "status": status, "final_snapshot_id": None}
    b.ev(DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_COMPLETED, payload=payload), 5)


def _child(run_id: RunId, t: int, i: int, outcome: str) -> RunBuilder:
    c = RunBuilder(run_id, t)
    c.start(_manifest("demo_child", {"pipeline": {}, "input": {"index": i}}))
    c.run_state("work", dt_run=400)
    if outcome == "running":
        c.enter("check")
        return c
    c.enter("check")
    if outcome == "failed":
        c.fail("check", "needs_file", "operator action needed: create /tmp/fix, then recover the parent", dt=50)
        c.finish(RunStatus.FAILED)
        return c
    c.complete("check", dt=50)
    c.run_state("report", dt_run=20)
    c.finish(RunStatus.COMPLETED)
    return c


def _builders() -> list[RunBuilder]:
    out: list[RunBuilder] = []
    t0 = NOW_MILLIS - 4 * MIN
    p = RunBuilder(PARENT_FAILED, t0)
    p.start(_manifest("demo_children", {"children": 3, "fail_child": 1}))
    p.enter("run_children")
    kids = children(PARENT_FAILED, 3)
    for k in kids:
        _spawned(p, k)
    outcomes = ["completed", "failed", "completed"]
    for i, k in enumerate(kids):
        out.append(_child(k, t0 + 30 + i, i, outcomes[i]))
    for k, outcome in zip(kids, outcomes, strict=True):
        _joined(p, k, outcome.capitalize())
    p.fail("run_children", "child_failed", f"child 1 ({kids[1]}) Failed: fix it, then recover this run", dt=600)
    p.finish(RunStatus.FAILED)
    out.append(p)

    t1 = NOW_MILLIS - 20 * SEC
    q = RunBuilder(PARENT_RUNNING, t1)
    q.start(_manifest("demo_children", {"children": 2}))
    q.enter("run_children")
    kids = children(PARENT_RUNNING, 2)
    for k in kids:
        _spawned(q, k)
    out.append(_child(kids[0], t1 + 30, 0, "completed"))
    out.append(_child(kids[1], t1 + 31, 1, "running"))
    _joined(q, kids[0], "Completed")
    out.append(q)

    r = RunBuilder(PLAIN, NOW_MILLIS - 2 * MIN)
    r.start(_manifest("demo_fix", {"file": "/tmp/x"}))
    for name in ("prepare", "check", "finish"):
        r.run_state(name)
    r.finish(RunStatus.COMPLETED)
    out.append(r)
    return out


async def build_tree_store(store: Any) -> FixtureStore:
    builders = {b.run_id: b for b in _builders()}
    for b in builders.values():
        for aid, (kind, data) in b.artifacts.items():
            assert await store.artifacts.put(kind, data) == aid
        await store.events.append(b.run_id, 0, b.envelopes)
    return FixtureStore(store=store, builders=builders, leases={PARENT_RUNNING: LeaseStatus.HELD})


def tree_app(**kwargs: Any) -> Any:
    """``make_app`` over a fresh tree store (sync, for snapshot tests)."""
    import asyncio

    from engine.stores import MemoryStore
    from mfm_tui.app import make_app

    store = MemoryStore()
    fx = asyncio.run(build_tree_store(store))
    kwargs.setdefault("clock", fixture_clock())
    kwargs.setdefault("watch", False)
    app = make_app(store, lease_probe=fx.lease_probe, plan_resolver=tree_plan_shape, **kwargs)
    app.fixture = fx
    return app


async def atree_app(**kwargs: Any) -> Any:
    """The same, from an async test."""
    from engine.stores import MemoryStore
    from mfm_tui.app import make_app

    store = MemoryStore()
    fx = await build_tree_store(store)
    kwargs.setdefault("clock", fixture_clock())
    kwargs.setdefault("watch", False)
    app = make_app(store, lease_probe=fx.lease_probe, plan_resolver=tree_plan_shape, **kwargs)
    app.fixture = fx
    return app
