"""The runs list over run summaries (issue 15): it never reads a whole run, and the summary is only a cache.

A filesystem store keeps ``runs/<id>/summary.json`` up to date on append; the watcher seeds each run's model from
it. Delete it, damage it, or crash before it was rewritten: the list is still right (a big run shows "indexing…"
while its log is folded in the background). A summary holds the run's children (issue 16), so the list nests them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import tests.tui.fixtures as fx
from engine.events import DomainEvent, EventEnvelope, RunCompleted, RunStatus
from engine.ids import RunId
from engine.stores.fs import FsStore
from engine.stores.fs._summary import SummaryCache
from mfm_tui.app import make_app
from mfm_tui.run_model import RunModel
from mfm_tui.store_watcher import StoreWatcher
from mfm_tui.widgets.run_table import RunTable
from tests.tui.tree_fixtures import (
    PARENT_FAILED,
    PARENT_RUNNING,
    PLAIN,
    atree_app,
    build_tree_store,
    children,
    tree_plan_shape,
)

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    """bench/tui.py: its direct store writer makes a big run in a second (no engine, no per-event pydantic)."""
    spec = importlib.util.spec_from_file_location("mfm_bench_tui", ROOT / "bench" / "tui.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def _folded(store: Any, run_id: RunId, watcher: StoreWatcher) -> RunModel:
    """The model folded from every event (the old way), with the same manifest, plan and lease as the watcher's."""
    seeded = watcher.models[run_id]
    model = RunModel(run_id, crash_loop_limit=seeded.crash_loop_limit)
    model.apply(await store.events.read_range(run_id, 1))
    if seeded.plan is not None:
        model.set_plan(seeded.plan)
    if seeded.manifest is not None:
        model.set_manifest(seeded.manifest)
    model.set_lease(seeded.lease)
    model.set_cancel_requested(seeded.cancel_requested)
    return model


def _line(app: Any, run_id: str) -> str:
    table = app.screen.query_one(RunTable)
    row = [m.run_id for m in table.rows].index(run_id) + 1
    return "".join(seg.text for seg in table.render_line(row))


class ReadCounter:
    """Every byte the process reads through ``os.pread`` / ``os.read`` while active (the store's reads)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        pread, read = os.pread, os.read

        def counted_pread(fd: int, n: int, offset: int) -> bytes:
            data = pread(fd, n, offset)
            self.bytes += len(data)
            return data

        def counted_read(fd: int, n: int) -> bytes:
            data = read(fd, n)
            self.bytes += len(data)
            return data

        monkeypatch.setattr(os, "pread", counted_pread)
        monkeypatch.setattr(os, "read", counted_read)


# ---------------------------------------------------------------------------------------------- every status


async def test_rows_from_summaries_match_rows_folded_from_every_event(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    f = await fx.build_fixture_store(store)
    watcher = StoreWatcher(FsStore(tmp_path / "store"), lease_probe=f.lease_probe, plan_resolver=f.plan_resolver)
    await watcher.load()
    now = fx.fixture_clock().now_millis()
    assert len(watcher.models) == 9
    for run_id, model in watcher.models.items():
        assert not model.indexing
        assert fx.list_row(model, now) == fx.list_row(await _folded(store, run_id, watcher), now), run_id


# ---------------------------------------------------------------------------------------------- child runs


async def test_the_runs_list_from_summaries_nests_children_under_their_parent_as_folding_every_event_does(
    tmp_path: Path,
) -> None:
    f = await build_tree_store(FsStore(tmp_path / "store"))
    summarized = make_app(
        FsStore(tmp_path / "store"),
        clock=fx.fixture_clock(),
        watch=False,
        lease_probe=f.lease_probe,
        plan_resolver=tree_plan_shape,
    )
    folded = await atree_app()  # the same runs in a memory store: every event folded
    lines: dict[str, list[str]] = {}
    for name, app in (("summarized", summarized), ("folded", folded)):
        async with app.run_test(size=(120, 40)) as pilot:
            await fx.settle(pilot)
            models = app.watcher.models
            assert all(m.summarized for m in models.values()) == (name == "summarized")
            rows = [m.run_id for m in app.screen.query_one(RunTable).rows]
            kids_failed, kids_running = children(PARENT_FAILED, 3), children(PARENT_RUNNING, 2)
            assert rows == [PARENT_FAILED, *kids_failed, PARENT_RUNNING, *kids_running, PLAIN], name
            lines[name] = [_line(app, r) for r in rows]
    assert "▾3 ✗ failed" in lines["summarized"][0] and "▾2 ● running" in lines["summarized"][4]
    assert "├ demo_child" in lines["summarized"][1] and "└ demo_child" in lines["summarized"][3]
    assert lines["summarized"] == lines["folded"]


# ---------------------------------------------------------------------------------------------- a big run


async def test_the_runs_list_of_a_store_holding_a_big_run_never_reads_that_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _bench()
    root = tmp_path / "big"
    _, big = bench.make_store(root, 50, 200_000, warm=False)
    log_size = (root / "runs" / big / "events.jsonl").stat().st_size
    assert log_size > 30_000_000
    writer = FsStore(root)  # the store's own writes: a summary rebuilt once, then appends keep it current
    assert (await writer.events.run_summary(big)) is not None
    head = await writer.events.head_seq(big)
    for i in range(3):
        env = EventEnvelope(run_id=big, seq=head + 1, ts_millis=fx.NOW_MILLIS, event=DomainEvent(name="t", payload=i))
        head = await writer.events.append(big, head, [env])
    done = EventEnvelope(
        run_id=big, seq=head + 1, ts_millis=fx.NOW_MILLIS, event=RunCompleted(status=RunStatus.COMPLETED)
    )
    head = await writer.events.append(big, head, [done])

    counter = ReadCounter(monkeypatch)
    watcher = StoreWatcher(FsStore(root))
    await watcher.load()
    assert counter.bytes < log_size // 100, (counter.bytes, log_size)
    model = watcher.models[RunId(big)]
    assert (model.last_seq, model.engine_status, model.indexing) == (head, RunStatus.COMPLETED, False)
    assert model.op_id == "demo_big" and model.total == 1000 and model.done == 1000
    assert len(watcher.models) == 51


# ---------------------------------------------------------------------------------------------- a cache


@pytest.mark.parametrize("harm", ["deleted", "damaged"])
async def test_a_deleted_or_damaged_summary_is_rebuilt_and_the_row_says_indexing_meanwhile(
    tmp_path: Path, harm: str
) -> None:
    bench = _bench()
    root = tmp_path / "big"
    small, big = bench.make_store(root, 3, 20_000, warm=False)  # 4 MB: more than the list folds inline (1 MB)
    writer = FsStore(root)
    for run_id in small:
        await writer.events.run_summary(run_id)
    expected = await writer.events.run_summary(big)
    assert expected is not None and expected.complete
    summary_file = root / "runs" / big / "summary.json"
    assert summary_file.exists()
    if harm == "deleted":
        summary_file.unlink()
    else:
        summary_file.write_bytes(summary_file.read_bytes()[:100] + b"\x00garbage")
    store = FsStore(root)
    app = make_app(store, clock=fx.fixture_clock(), watch=False)
    async with app.run_test(size=(120, 20)) as pilot:
        await fx.settle(pilot)
        model = app.watcher.models[RunId(big)]
        if model.indexing:  # the background fold may already be over on a fast machine
            assert "indexing…" in _line(app, big)
        await app.watcher.wait_indexed()
        await app.sync_store()
        await pilot.pause()
        assert not model.indexing
        assert "indexing" not in _line(app, big)
        now = fx.fixture_clock().now_millis()
        assert fx.list_row(model, now) == fx.list_row(await _folded(store, RunId(big), app.watcher), now)
    assert store.events.summaries.rebuilds == 1
    again = await FsStore(root).events.run_summary(big)
    assert again == expected  # the rebuilt cache is back on disk


async def test_a_big_run_without_a_summary_is_listed_indexing_from_its_tail(tmp_path: Path) -> None:
    bench = _bench()
    root = tmp_path / "big"
    _, big = bench.make_store(root, 0, 20_000, warm=False)
    store = FsStore(root)
    gate: list[Any] = []
    full = SummaryCache.summary

    def held(self: SummaryCache, run_id: RunId, max_fold_bytes: int | None = None) -> Any:
        if max_fold_bytes is None:  # the background fold: held until the test looked at the row
            gate.append(run_id)
            return None
        return full(self, run_id, max_fold_bytes)

    store.events.summaries.summary = held.__get__(store.events.summaries)  # type: ignore[method-assign]
    app = make_app(store, clock=fx.fixture_clock(), watch=False)
    async with app.run_test(size=(120, 20)) as pilot:
        await fx.settle(pilot)
        await app.watcher.wait_indexed()
        await pilot.pause()
        model = app.watcher.models[RunId(big)]
        assert gate == [big] and model.indexing
        assert (model.op_id, model.started_millis, model.last_seq) == ("demo_big", bench.T0, 20_000)
        line = _line(app, big)
        assert "indexing…" in line and "demo_big" in line


async def test_a_crash_between_the_append_and_the_summary_update_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    store = FsStore(root)
    f = await fx.build_fixture_store(store)
    before = (root / "runs" / fx.RUN_RUNNING / "summary.json").read_bytes()
    monkeypatch.setattr(SummaryCache, "appended", lambda *a, **k: None)  # the process dies right after the commit
    await f.append(
        fx.RUN_RUNNING,
        [DomainEvent(name="note", payload=1), RunCompleted(status=RunStatus.FAILED)],
    )
    assert (root / "runs" / fx.RUN_RUNNING / "summary.json").read_bytes() == before  # behind the log
    head = await store.events.head_seq(fx.RUN_RUNNING)
    watcher = StoreWatcher(FsStore(root), lease_probe=f.lease_probe, plan_resolver=f.plan_resolver)
    await watcher.load()
    model = watcher.models[fx.RUN_RUNNING]
    assert (model.last_seq, model.engine_status, model.indexing) == (head, RunStatus.FAILED, False)
    now = fx.fixture_clock().now_millis()
    assert fx.list_row(model, now) == fx.list_row(await _folded(store, fx.RUN_RUNNING, watcher), now)
