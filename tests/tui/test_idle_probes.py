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


async def test_a_probe_cycle_walks_the_runs_once() -> None:
    """Issue 15, idle: a due probe cycle classifies the runs in one pass (it walked them three times, reading each
    unfinished run's lease up to four times); the same runs are probed."""
    from mfm_tui.run_model import RunModel

    f = await fx.build_fixture_store(MemoryStore())
    watcher = StoreWatcher(
        f.store, lease_probe=f.lease_probe, plan_resolver=f.plan_resolver, side_interval=0.0, side_rate=1e9
    )
    await watcher.load()
    unfinished = [r for r, m in watcher.models.items() if m.engine_status is None]
    assert unfinished
    reads: Counter[RunId] = Counter()
    lease = RunModel.lease

    class Counting(RunModel):
        __slots__ = ()  # the same layout as RunModel's (its __class__ is swapped below)

        @property
        def lease(self) -> LeaseStatus:
            reads[self.run_id] += 1
            return lease.fget(self)  # type: ignore[misc,no-any-return]

    for model in watcher.models.values():
        model.__class__ = Counting
    probed: list[RunId] = []
    real_side = watcher._refresh_side

    walks: list[Counter[RunId]] = []

    async def side(run_ids: list[RunId], update: object) -> None:
        probed.extend(run_ids)
        walks.append(reads.copy())  # the walk's reads, not the probes'
        reads.clear()

    watcher._refresh_side = side  # type: ignore[method-assign,assignment]
    for _ in range(DEAD_PROBE_EVERY):
        await watcher.poll()
    assert len(walks) == DEAD_PROBE_EVERY
    assert all(walk[r] <= 1 for walk in walks for r in unfinished), walks[0]
    assert set(probed) == set(unfinished)  # every unfinished run is probed within DEAD_PROBE_EVERY cycles
    watcher._refresh_side = real_side  # type: ignore[method-assign]
