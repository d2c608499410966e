"""Watching many old runs costs little (issue 15): runs no worker holds are not probed on every cycle."""

from __future__ import annotations

from collections import Counter

import tests.tui.fixtures as fx
from engine.events import DomainEvent
from engine.ids import RunId
from engine.stores import MemoryStore
from mfm_tui.run_model import LeaseStatus, RunDisplayStatus
from mfm_tui.store_watcher import DEAD_PROBE_EVERY, StoreWatcher


async def test_runs_no_worker_holds_are_probed_ten_times_less_often_and_at_once_when_they_grow() -> None:
    f = await fx.build_fixture_store(MemoryStore())
    calls: Counter[RunId] = Counter()

    def probe(run_id: RunId) -> LeaseStatus:
        calls[run_id] += 1
        return f.lease_probe(run_id)

    watcher = StoreWatcher(f.store, lease_probe=probe, plan_resolver=f.plan_resolver, side_interval=0.0, side_rate=1e9)
    await watcher.load()
    assert watcher.models[fx.RUN_LOST].status is RunDisplayStatus.WORKER_LOST
    assert watcher.models[fx.RUN_RUNNING].lease is LeaseStatus.HELD
    calls.clear()
    for _ in range(2 * DEAD_PROBE_EVERY):
        await watcher.poll()
    assert calls[fx.RUN_RUNNING] == 2 * DEAD_PROBE_EVERY  # a worker holds it: it may die silently
    assert 1 <= calls[fx.RUN_LOST] <= 2  # no worker: only a new worker changes it, and that one writes events

    f.leases[fx.RUN_LOST] = LeaseStatus.HELD  # resumed: the new worker takes the lease, then appends
    calls.clear()
    await f.append(fx.RUN_LOST, [DomainEvent(name="note", payload=1)])
    await watcher.poll()
    assert calls[fx.RUN_LOST] >= 1
    assert watcher.models[fx.RUN_LOST].status is RunDisplayStatus.RUNNING
