"""The run screen tails its log file event-driven (issue 15): an append shows without waiting for a timer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import mfm_tui.screens.run as run_screen
from engine.events import DomainEvent
from engine.stores.fs import FsStore
from mfm_tui.app import make_app
from mfm_tui.screens.run import RunScreen
from mfm_tui.widgets.event_log import EventLog
from tests.tui.fixtures import RUN_RUNNING, build_fixture_store, fixture_clock, wait_until


async def test_an_append_shows_without_the_timer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_screen, "POLL_SECONDS", 3600.0)  # the timer never fires during this test
    fx = await build_fixture_store(FsStore(tmp_path / "store"), only=[RUN_RUNNING])
    app = make_app(fx.store, clock=fixture_clock(), plan_resolver=fx.plan_resolver, watch=False)
    screen = RunScreen(run_id=RUN_RUNNING, poll=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.loaded)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen._model_ready and screen._following)
        log = screen.query_one(EventLog)
        before = log.row_count
        # The watch is registered a moment after it starts: append until the first change is seen (the app's own
        # store watcher is off and the timer never fires, so only the file watch can show it).
        for i in range(10):
            await fx.append(RUN_RUNNING, [DomainEvent(name="tick", payload=i)])
            for _ in range(100):
                if log.row_count > before:
                    break
                await asyncio.sleep(0.01)
            if log.row_count > before:
                break
        assert log.row_count > before
        seen = log.row_count
        await fx.append(RUN_RUNNING, [DomainEvent(name="tock", payload=0), DomainEvent(name="tock", payload=1)])
        await wait_until(pilot, lambda: log.row_count == seen + 2, tries=500)
        assert screen.model.last_seq == log.row_count


async def test_a_big_run_is_indexed_only_after_its_tail_is_on_screen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: the index thread's reads would compete with the first frame for the GIL; it starts after it."""
    from mfm_tui.log_index import FileLogSource

    fx = await build_fixture_store(FsStore(tmp_path / "store"), only=[RUN_RUNNING])
    app = make_app(fx.store, clock=fixture_clock(), plan_resolver=fx.plan_resolver, watch=False)
    painted: list[int] = []
    order: list[str] = []
    render_line = EventLog.render_line
    build_index = FileLogSource.build_index

    def spy_render(log: EventLog, y: int) -> object:
        if log.row_count and not painted:
            painted.append(y)
            order.append("painted")
        return render_line(log, y)

    def spy_index(src: FileLogSource) -> None:
        order.append("index")
        build_index(src)

    monkeypatch.setattr(EventLog, "render_line", spy_render)
    monkeypatch.setattr(FileLogSource, "build_index", spy_index)
    screen = RunScreen(run_id=RUN_RUNNING, poll=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.loaded)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen._model_ready)
    assert order[:2] == ["painted", "index"]
