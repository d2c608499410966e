"""``demo_children`` (issue 16): N children fanned out, awaited, aggregated; one child that needs a fix, fixed, then
the parent recovered; the tree read back from the parent's linkage events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.child_runs import ChildRunFactory, child_run_id, children_of
from engine.engine import RunPhase
from engine.events import RunCompleted
from engine.exec_transport import ExecTransportFactory
from engine.ids import RunId
from engine.operations import OperationEnv, OperationRegistry, load_registry, load_start_run, prepare_run
from engine.runtime import Engine
from engine.stores.memory import MemoryStore


def _engine(reg: OperationRegistry, mem: MemoryStore) -> Engine:
    resolver = reg.plan_resolver(OperationEnv(artifacts=mem.artifacts))
    return Engine(
        plan_resolver=resolver,
        transports=ChildRunFactory([ExecTransportFactory()], plan_resolver=resolver, cancel_poll_interval=0.05),
        cancel_poll_interval=0.05,
    )


async def _start(mem: MemoryStore, reg: OperationRegistry, params: dict[str, Any]) -> Any:
    prepared = await prepare_run(mem.stores, reg, "demo_children", params, run_id=RunId.new_v4())
    start = await load_start_run(mem.stores, reg, prepared.manifest_id)
    return await _engine(reg, mem).start(mem.stores, start, run_id=prepared.run_id)


async def _final(mem: MemoryStore, run: RunId) -> Any:
    head = await mem.events.head_seq(run)
    (last,) = await mem.events.read_range(run, head, head)
    assert isinstance(last.event, RunCompleted)
    from engine.artifacts import read_canonical_json  # local: only the aggregate check reads a snapshot

    return last.event, await read_canonical_json(mem.artifacts, last.event.final_snapshot_id)


async def test_demo_children_fans_out_awaits_and_aggregates() -> None:
    mem, reg = MemoryStore(), load_registry(["engine.demo_ops"], entry_points=False)
    res = await _start(mem, reg, {"children": 4, "work_ms": 0})
    assert res.phase is RunPhase.COMPLETED
    links = children_of(await mem.events.read_range(res.run_id, 1))
    assert [str(x.child_run_id) for x in links] == [
        child_run_id(res.run_id, f"demo_children:spawn|i:{i}") for i in range(4)
    ]
    assert all(str(x.status) == "Completed" for x in links)
    _, snap = await _final(mem, res.run_id)
    assert snap["children.total"] == sum(i * i + 1 for i in range(4))
    for link in links:
        rc, child_snap = await _final(mem, link.child_run_id)
        assert rc.final_snapshot_id == link.final_snapshot_id and "child.result" in child_snap
    verdict = await Engine(plan_resolver=reg.plan_resolver(OperationEnv(artifacts=mem.artifacts))).replay(
        mem.stores, res.run_id
    )
    assert verdict.deterministic  # served from the recorded facts: no child re-executed
    assert len(await mem.events.list_runs()) == 1 + 4 + 1


async def test_demo_children_one_child_needs_a_fix_then_recover(tmp_path: Path) -> None:
    mem, reg = MemoryStore(), load_registry(["engine.demo_ops"], entry_points=False)
    needed = tmp_path / "fix"
    params = {"children": 3, "work_ms": 0, "fail_child": 1, "required_file": str(needed)}
    res = await _start(mem, reg, params)
    assert res.phase is RunPhase.FAILED
    links = children_of(await mem.events.read_range(res.run_id, 1))
    assert [str(x.status) for x in links] == ["Completed", "Failed", "Completed"]
    rc, _ = await _final(mem, links[1].child_run_id)
    assert str(rc.status) == "Failed"
    needed.write_text("ok")
    recovered = await _engine(reg, mem).recover(mem.stores, res.run_id, new_run_id=RunId.new_v4())
    assert recovered.phase is RunPhase.COMPLETED
    _, snap = await _final(mem, recovered.run_id)
    assert snap["children.total"] == 1 + 2 + 5
    new_links = children_of(await mem.events.read_range(recovered.run_id, 1))
    assert [str(x.status) for x in new_links] == ["Completed"] * 3
