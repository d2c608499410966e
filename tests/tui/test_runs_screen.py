"""The runs screen: snapshots of every meaningful state, its pure ordering/filtering, and pilot tests."""

from __future__ import annotations

import os
from typing import Any

from textual.widgets import Input

from engine.stores import MemoryStore
from engine.testing import FakeClock
from mfm_tui.run_model import RunDisplayStatus, RunModel
from mfm_tui.screens.runs import RunFilter, RunsScreen, order_models
from mfm_tui.time_format import format_ago, format_countdown, format_duration
from mfm_tui.widgets.run_table import RunTable
from mfm_tui.widgets.status_tabs import StatusTabs
from tests.tui import fixtures as fx
from tests.tui.fixtures import afixture_app, fixture_app, settle

SNAP_DIR = os.path.dirname(__file__)


def _table(app: Any) -> RunTable:
    return app.screen.query_one(RunTable)


def _shown(app: Any) -> list[str]:
    return [m.run_id for m in _table(app).rows]


# ------------------------------------------------------------------------------------------ snapshots


def test_snapshot_runs_every_status_80x24(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(), run_before=settle, terminal_size=(80, 24))


def test_snapshot_runs_every_status_120x40(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(), run_before=settle, terminal_size=(120, 40))


def test_snapshot_empty_store_welcome(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(empty=True), run_before=settle)


def test_snapshot_filtered(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("slash")
        box = pilot.app.screen.query_one("#runs-filter", Input)
        box.cursor_blink = False
        box.value = "op:demo_big"
        await pilot.pause()

    assert snap_compare(fixture_app(), run_before=run_before)


def test_snapshot_failed_tab(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        pilot.app.screen.query_one(StatusTabs).select("retrying")
        await pilot.pause()

    assert snap_compare(fixture_app(), run_before=run_before)


def test_snapshot_theme_light(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(theme="mfm-light"), run_before=settle)


def test_snapshot_theme_16_colours(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(theme="mfm-16", color_system="standard"), run_before=settle)


def test_snapshot_theme_ascii(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(theme="ascii"), run_before=settle)


# ------------------------------------------------------------------------------------------ pure parts


def test_time_formats() -> None:
    assert [format_duration(ms) for ms in (None, 0, 420, 9_999, 12_000, 72_000, 123_000, 3_900_000, 97_200_000)] == [
        "",
        "0.0s",
        "0.4s",
        "9.9s",
        "12s",
        "1m12s",
        "2m03s",
        "1h05m",
        "1d03h",
    ]
    now = 10_000_000
    assert [format_ago(t, now) for t in (None, now - 1000, now - 12_000, now - 180_000, now - 7_200_000)] == [
        "",
        "just now",
        "12s ago",
        "3m ago",
        "2h ago",
    ]
    assert format_ago(now + 5000, now) == "future"
    assert format_ago(now - 3 * 86_400_000, now) == "3d ago"
    assert [format_countdown(t, now) for t in (None, now, now + 1, now + 7000, now + 61_000, now + 3_700_000)] == [
        "",
        "due",
        "in 1s",
        "in 7s",
        "in 1m01s",
        "in 1h01m",
    ]


def test_filter_parsing() -> None:
    f = RunFilter.parse("op:demo_big status:failed status:lost id:0c9d 503")
    assert f.ops == ("demo_big",) and f.id_prefixes == ("0c9d",) and f.words == ("503",)
    lost = {RunDisplayStatus.WORKER_LOST, RunDisplayStatus.NOT_STARTED, RunDisplayStatus.CRASH_LOOPING}
    assert f.statuses == frozenset({RunDisplayStatus.FAILED, *lost})
    assert RunFilter.parse("").is_empty and not f.is_empty
    assert RunFilter.parse("status:bogus").statuses == frozenset()  # matches nothing, says so by showing nothing


async def _models() -> dict[str, RunModel]:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        return dict(app.watcher.models)


async def test_order_and_filter_over_the_fixture_runs() -> None:
    models = await _models()
    now = fx.NOW_MILLIS
    urgent = [m.status for m in order_models(models.values(), "urgency", now)]
    assert urgent[:2] == [RunDisplayStatus.FAILED, RunDisplayStatus.WORKER_LOST]
    assert urgent[-2:] == [RunDisplayStatus.COMPLETED, RunDisplayStatus.COMPLETED]
    newest = order_models(models.values(), "newest", now)
    assert [m.started_millis for m in newest] == sorted((m.started_millis for m in newest), reverse=True)
    assert order_models(models.values(), "oldest", now)[0].run_id == fx.RUN_SKIPPED
    assert order_models(models.values(), "op", now)[0].op_id == "demo_big"
    assert order_models(models.values(), "duration", now)[0].run_id == fx.RUN_CANCELLED

    def matching(text: str) -> set[str]:
        flt = RunFilter.parse(text)
        return {r for r, m in models.items() if flt.matches(m, now)}

    assert matching("op:demo_big") == {fx.RUN_LOST, fx.RUN_CANCELLED}
    assert matching("status:retrying") == {fx.RUN_RETRYING, fx.RUN_FANOUT}
    assert matching("id:0c9d") == {fx.RUN_FAILED}
    assert matching("needs_file") == {fx.RUN_FAILED}
    assert matching("a81c") == {fx.RUN_RETRYING}
    assert matching("op:demo_big status:cancelled") == {fx.RUN_CANCELLED}


# ------------------------------------------------------------------------------------------ pilot


async def test_filter_narrows_and_escape_clears() -> None:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        assert len(_shown(app)) == 9
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"demo_big")
        assert set(_shown(app)) == {fx.RUN_LOST, fx.RUN_CANCELLED}
        await pilot.press("enter")
        assert isinstance(app.focused, RunTable)
        assert set(_shown(app)) == {fx.RUN_LOST, fx.RUN_CANCELLED}
        await pilot.press("escape")
        assert len(_shown(app)) == 9
        assert not app.screen.query_one("#runs-filter", Input).display


async def test_tabs_cycle_and_count() -> None:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        tabs = app.screen.query_one(StatusTabs)
        await pilot.press("tab")
        assert tabs.active == "running"
        assert set(_shown(app)) == {fx.RUN_RUNNING, fx.RUN_CANCELLING}
        await pilot.press("tab", "tab")
        assert tabs.active == "failed" and _shown(app) == [fx.RUN_FAILED]
        await pilot.press("shift+tab")
        assert tabs.active == "retrying"
        await pilot.press("escape")  # no filter open: back to All
        assert tabs.active == "all" and len(_shown(app)) == 9


async def test_cursor_moves_and_enter_opens_the_run() -> None:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        table = _table(app)
        assert table.cursor_run_id == fx.RUN_FAILED
        await pilot.press("j", "j")
        assert table.cursor_run_id == _shown(app)[2]
        await pilot.press("G")
        assert table.cursor_row == 8
        await pilot.press("g", "down", "enter")
        await pilot.pause()
        assert type(app.screen).__name__ == "RunScreen"
        assert app.screen.run_id == fx.RUN_LOST  # type: ignore[attr-defined]
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


async def test_sort_key_cycles() -> None:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("o")
        assert app.screen.sort == "newest"  # type: ignore[attr-defined]
        newest = [app.watcher.models[r].started_millis for r in _shown(app)]
        assert newest == sorted(newest, reverse=True)


async def test_countdown_ticks_with_the_clock() -> None:
    clock = FakeClock(fx.NOW_MILLIS)
    app = await afixture_app(clock=clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        row = _shown(app).index(fx.RUN_RETRYING) + 1

        def line() -> str:
            return "".join(seg.text for seg in _table(app).render_line(row))

        assert "call 3/5 in 7s" in line()
        clock.advance(5000)
        app.screen.tick()  # type: ignore[attr-defined]
        assert "call 3/5 in 2s" in line()
        clock.advance(3000)
        assert "call 3/5 due" in line()


async def test_start_key_in_read_only_mode_only_warns() -> None:
    app = await afixture_app(read_only=True)
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert any("read-only" in str(n.message) for n in app._notifications)


async def test_empty_store_shows_the_welcome_then_the_first_run() -> None:
    store = MemoryStore()
    app = await afixture_app(empty=True, store=store)
    async with app.run_test() as pilot:
        await settle(pilot)
        welcome = app.screen.query_one("#runs-welcome")
        assert welcome.display and not _table(app).display
        text = str(welcome.render())
        for op in ("demo_pipeline", "demo_flaky", "demo_fanout", "demo_side_effect", "demo_fix", "demo_big"):
            assert op in text
        assert "press s to start one" in text and "mfm start demo_flaky" in text
        await fx.build_fixture_store(store, only=[fx.RUN_RUNNING])
        await app.sync_store()
        await wait(pilot)
        assert not welcome.display and _shown(app) == [fx.RUN_RUNNING]
        # The table hidden behind the welcome lost the focus: shown again, it takes it back, so Enter opens the
        # run (it did nothing: an operator watching an empty store could not open the first run without tab).
        assert app.screen.focused is _table(app)
        await pilot.press("enter")
        await wait(pilot)
        assert type(app.screen).__name__ == "RunScreen"


async def wait(pilot: Any) -> None:
    await pilot.pause()
    await pilot.pause()


async def test_countdown_widget_follows_the_clock() -> None:
    from textual.app import App, ComposeResult

    from mfm_tui.widgets.countdown import Countdown

    clock = FakeClock(1_000_000)

    class _Host(App[None]):
        def compose(self) -> ComposeResult:
            yield Countdown(clock, 1_007_000, id="cd")

    app = _Host()
    async with app.run_test() as pilot:
        widget = app.query_one(Countdown)
        assert str(widget.render()) == "in 7s"
        clock.advance(5_500)
        widget.tick()
        assert str(widget.render()) == "in 2s"
        widget.target_millis = None
        await pilot.pause()
        assert str(widget.render()) == ""
        widget.target_millis = 1_000_000
        assert str(widget.render()) == "due"


async def test_y_copies_the_selected_run_id() -> None:
    app = await afixture_app()
    copied: list[str] = []
    app.copy_to_clipboard = copied.append
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("y")
        assert copied == [fx.RUN_FAILED]
        assert any("copied run id 0c9d11ab" in str(n.message) for n in app._notifications)
