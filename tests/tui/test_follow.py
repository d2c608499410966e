"""The run screen tails its log file event-driven (issue 15): an append shows without waiting for a timer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

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


async def test_an_append_shows_through_the_file_watch_without_the_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: the run screen follows its log through ``FileWatch`` (watchfiles), not its timer."""
    monkeypatch.setattr(run_screen, "POLL_SECONDS", 3600.0)
    monkeypatch.setattr(run_screen, "FALLBACK_SECONDS", 3600.0)
    fx = await build_fixture_store(FsStore(tmp_path / "store"), only=[RUN_RUNNING])
    app = make_app(fx.store, clock=fixture_clock(), plan_resolver=fx.plan_resolver, watch=False)
    screen = RunScreen(run_id=RUN_RUNNING, poll=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.loaded)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen._model_ready and screen._following)
        log = screen.query_one(EventLog)
        before = log.row_count
        await fx.append(RUN_RUNNING, [DomainEvent(name="tick", payload=0)])
        await wait_until(pilot, lambda: log.row_count == before + 1, tries=500)
        await fx.append(RUN_RUNNING, [DomainEvent(name="tock", payload=0), DomainEvent(name="tock", payload=1)])
        await wait_until(pilot, lambda: log.row_count == before + 3, tries=500)
        assert screen.model.last_seq == log.row_count
        assert screen.timed_polls == 0


async def test_a_watched_log_is_polled_by_the_timer_once_a_second_not_ten_times(tmp_path: Path) -> None:
    """Issue 15, idle: the fallback timer of a watched log fires once a second (it fired ten times a second only to
    skip nine)."""
    fx = await build_fixture_store(FsStore(tmp_path / "store"), only=[RUN_RUNNING])
    app = make_app(fx.store, clock=fixture_clock(), plan_resolver=fx.plan_resolver, watch=False)
    screen = RunScreen(run_id=RUN_RUNNING, poll=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.loaded)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen._model_ready and screen._following)
        await asyncio.sleep(0.3)
        wakeups = screen.timed_polls
        await asyncio.sleep(2.0)  # nothing changes
        assert screen.timed_polls - wakeups <= 3


async def test_file_watch_reports_its_files_only_and_ends_when_closed(tmp_path: Path) -> None:
    from mfm_tui.log_tail import FileWatch

    folder = tmp_path / "run"
    folder.mkdir()
    log = folder / "events.jsonl"
    log.write_bytes(b"")
    watch = FileWatch(folder, ["events.jsonl"])
    assert watch.start()
    await asyncio.sleep(0.3)  # the notifier's thread is up
    (folder / "summary.json").write_bytes(b"{}")  # another file of the folder: not reported
    await asyncio.sleep(0.3)
    assert watch.changes == 0
    with log.open("ab") as fh:
        fh.write(b"one\n")
        fh.flush()
        fh.write(b"two\n")
    assert await asyncio.wait_for(watch.wait(), 5)
    await asyncio.sleep(0.2)
    # Writes while the caller works are not lost: the next wait returns at once.
    with log.open("ab") as fh:
        fh.write(b"three\n")
    assert await asyncio.wait_for(watch.wait(), 5)
    log.unlink()
    assert await asyncio.wait_for(watch.wait(), 5)  # the log's deletion
    watch.close()
    assert not await asyncio.wait_for(watch.wait(), 5)  # closed: the watch ends
    assert not watch.active
    watch.close()  # idempotent


async def test_file_watch_says_no_without_a_folder(tmp_path: Path) -> None:
    from mfm_tui.log_tail import FileWatch

    watch = FileWatch(tmp_path / "missing", ["events.jsonl"])
    assert not watch.start()
    assert not await watch.wait()


async def test_an_append_that_changes_neither_header_nor_panel_redraws_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, append -> screen: each ``Static.update`` reflowed the whole screen and redrew every widget; the
    header and the state panel are updated only when what they show changes (a layout only when their height does)."""
    from textual.widgets import Static

    from engine.events import StateCompleted
    from mfm_tui.widgets.run_header import RunHeader
    from mfm_tui.widgets.state_panel import StatePanel

    fx = await build_fixture_store(FsStore(tmp_path / "store"), only=[RUN_RUNNING])
    app = make_app(fx.store, clock=fixture_clock(), plan_resolver=fx.plan_resolver, watch=False)
    screen = RunScreen(run_id=RUN_RUNNING, poll=False)
    updates: list[tuple[str, bool]] = []
    update = Static.update

    def spy(widget: Static, *args: object, layout: bool = True) -> None:
        if isinstance(widget, RunHeader | StatePanel):
            updates.append((type(widget).__name__, layout))
        update(widget, *args, layout=layout)  # type: ignore[arg-type]

    monkeypatch.setattr(Static, "update", spy)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.loaded)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen._model_ready)
        await pilot.pause()
        header = str(screen.query_one(RunHeader).render())
        updates.clear()
        await fx.append(RUN_RUNNING, [DomainEvent(name="progress", payload={"i": 1})])
        await screen.poll()
        await pilot.pause()
        assert screen.model.last_seq == screen.query_one(EventLog).row_count
        assert updates == []  # same header, same panel: not redrawn
        screen.tick()  # the fixed clock: nothing moved
        assert updates == []
        await fx.append(
            RUN_RUNNING, [StateCompleted(state_id=screen.model.current_state.state_id, context_snapshot_id="a" * 64)]
        )  # type: ignore[union-attr]
        await screen.poll()
        await pilot.pause()
        assert ("RunHeader", False) in updates  # one more state done: redrawn, its height unchanged
        assert str(screen.query_one(RunHeader).render()) != header


async def test_the_runs_list_under_a_run_screen_is_rebuilt_when_shown_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: the runs list under the run screen rebuilt on each appended event, and Textual redrew the whole run
    screen for it (a lower screen's dirty regions go up); it waits until it is shown again, then shows the change."""
    from engine.events import StateCompleted
    from mfm_tui.screens.runs import RunsScreen
    from mfm_tui.widgets.run_table import RunTable

    fx = await build_fixture_store(FsStore(tmp_path / "store"), only=[RUN_RUNNING])
    app = make_app(fx.store, clock=fixture_clock(), plan_resolver=fx.plan_resolver, watch=False)
    built: list[int] = []
    set_rows = RunTable.set_rows

    def spy(table: RunTable, *a: Any, **k: Any) -> None:
        built.append(1)
        set_rows(table, *a, **k)

    monkeypatch.setattr(RunTable, "set_rows", spy)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.loaded)
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        screen = RunScreen(run_id=RUN_RUNNING, poll=False)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen._model_ready)
        state = screen.model.current_state
        assert state is not None
        done = app.watcher.models[RUN_RUNNING].done
        built.clear()
        await fx.append(RUN_RUNNING, [StateCompleted(state_id=state.state_id, context_snapshot_id="a" * 64)])
        await app.sync_store()
        await pilot.pause()
        runs.tick()
        await pilot.pause()
        assert built == []  # covered: not rebuilt
        assert app.watcher.models[RUN_RUNNING].done == done + 1
        app.pop_screen()
        await wait_until(pilot, lambda: bool(built))
        table = runs.query_one(RunTable)
        await wait_until(pilot, lambda: f"{done + 1}/" in "".join(s.text for s in table.render_line(1)))
