"""Child runs in the detached-worker process model (issue 16): children are real runs in the same store with their
own events; ``cancel_run`` of a parent cancels its running children; a SIGKILLed parent worker leaves them resumable
and resuming the parent joins them without spawning again."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.child_runs import child_run_id, children_of
from engine.events import DomainEvent, RunCompleted, RunStarted
from engine.ids import RunId
from engine.operations import load_registry
from engine.stores.fs import FsStore
from engine.workers import LeaseState, cancel_children, cancel_run, lease_state, resume_run, start_run


async def _until(cond: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _last(store: FsStore, run: RunId) -> Any:
    head = await store.events.head_seq(run)
    if head == 0:
        return None
    (env,) = await store.events.read_range(run, head, head)
    return env.event


async def _children_running(store: FsStore, parent: RunId, n: int) -> bool:
    links = children_of(await store.events.read_range(parent, 1, None))
    if len(links) != n:
        return False
    for link in links:
        envs = await store.events.read_range(link.child_run_id, 1, None)
        if len(envs) < 2:  # RunStarted + the first StateEntered: its task is running
            return False
    return True


async def test_cancel_of_a_parent_cancels_its_running_children(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    registry = load_registry(["engine.demo_ops"], entry_points=False)
    prepared = await start_run(store, registry, "demo_children", {"children": 2, "work_ms": 120_000})
    parent = prepared.run_id
    await _until(lambda: _children_running(store, parent, 2), "both children to run")
    children = await cancel_children(store, parent)
    assert sorted(children) == sorted(child_run_id(parent, f"demo_children:spawn|i:{i}") for i in range(2))
    await cancel_run(store, parent, "test")

    async def all_done() -> bool:
        return all([isinstance(await _last(store, r), RunCompleted) for r in [parent, *children]])

    await _until(all_done, "the tree to close")
    for run in [parent, *children]:
        last = await _last(store, run)
        assert str(last.status) == "Cancelled", [e.event for e in await store.events.read_range(run, 1)]
    await _until(lambda: _lease_free(store, parent), "the worker to exit")
    assert await cancel_children(store, parent) == []
    store.close()


async def _lease_free(store: FsStore, run: RunId) -> bool:
    return lease_state(store, run).state is not LeaseState.HELD


async def test_sigkilled_parent_worker_leaves_children_resumable_and_resume_joins_them(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    registry = load_registry(["engine.demo_ops"], entry_points=False)
    prepared = await start_run(store, registry, "demo_children", {"children": 2, "work_ms": 4_000})
    parent = prepared.run_id
    await _until(lambda: _children_running(store, parent, 2), "both children to run")
    info = lease_state(store, parent)
    assert info.state is LeaseState.HELD and info.pid is not None
    os.kill(info.pid, signal.SIGKILL)
    await _until(lambda: _lease_free(store, parent), "the worker to die")
    links = children_of(await store.events.read_range(parent, 1, None))
    for link in links:  # left unfinished (their tasks died with the worker), not lost
        assert await _last(store, link.child_run_id) is not None
        assert not isinstance(await _last(store, link.child_run_id), RunCompleted)
    assert not isinstance(await _last(store, parent), RunCompleted)

    await resume_run(store, parent)

    async def parent_done() -> bool:
        return isinstance(await _last(store, parent), RunCompleted)

    await _until(parent_done, "the resumed parent to finish")
    assert str((await _last(store, parent)).status) == "Completed"
    envs = await store.events.read_range(parent, 1, None)
    names = [e.event.name for e in envs if isinstance(e.event, DomainEvent)]
    assert names.count("child_run_spawned") == 2 and names.count("child_run_completed") == 2
    assert sorted(await store.events.list_runs()) == sorted([parent, *(x.child_run_id for x in links)])
    for link in links:
        cenvs = await store.events.read_range(link.child_run_id, 1, None)
        assert sum(isinstance(e.event, RunStarted) for e in cenvs) == 1  # never spawned twice
        assert str(cenvs[-1].event.status) == "Completed"  # type: ignore[union-attr]
    store.close()
