"""Issue 14, "fix what misleads": pilot tests for what the operator at 3 a.m. was misled by (runs list part)."""

from __future__ import annotations

import os
from typing import Any

from engine.events import RunStatus
from engine.ids import RunId
from engine.stores import MemoryStore
from mfm_tui.screens.confirm import ConfirmDialog
from mfm_tui.screens.runs import RunsScreen
from mfm_tui.widgets.run_table import RunTable, columns_for
from mfm_tui.widgets.size_notice import SizeNotice
from mfm_tui.widgets.status_tabs import StatusTabs
from tests.tui import fixtures as fx
from tests.tui.fixtures import afixture_app, fixture_app, settle

SNAP_DIR = os.path.dirname(__file__)


def _table(app: Any) -> RunTable:
    return app.screen_stack[0].query_one(RunTable)


def _home(app: Any) -> RunsScreen:
    screen = app.screen_stack[0]
    assert isinstance(screen, RunsScreen)
    return screen


async def _add_run(store: Any, n: int, *, failed: bool, started: int) -> RunId:
    """A finished demo_fix run with a fixed id (failed: sorts with the urgent ones)."""
    run_id = RunId(f"f00d{n:04d}-0000-4000-8000-{n:012d}")
    b = fx.RunBuilder(run_id, started)
    b.start(fx._manifest("demo_fix", {"n": n}))
    b.run_state("prepare")
    if failed:
        b.enter("check")
        b.fail("check", "upstream_unavailable", f"upstream answered 503 ({n})")
        b.finish(RunStatus.FAILED)
    else:
        b.finish(RunStatus.COMPLETED)
    for kind, data in b.artifacts.values():
        await store.artifacts.put(kind, data)
    await store.events.append(run_id, 0, b.envelopes)
    return run_id


async def _wait(pilot: Any) -> None:
    for _ in range(3):
        await pilot.pause()


# ------------------------------------------------------------------------------------------ 1. off-screen failures


async def test_a_new_failure_above_the_view_is_announced_in_the_header() -> None:
    store = MemoryStore()
    for n in range(40):
        await _add_run(store, n, failed=False, started=fx.NOW_MILLIS - 3_600_000 + n * 1000)
    app = await afixture_app(store=store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = _table(app)
        await pilot.press("G")  # to the bottom: the top of the list is off-screen
        await _wait(pilot)
        assert table.scroll_y > 0 and table.new_above == 0
        new = await _add_run(store, 100, failed=True, started=fx.NOW_MILLIS - 1000)
        await app.sync_store()
        await _wait(pilot)
        assert table.rows[0].run_id == new  # the urgent row sorts first, above the view
        assert table.new_above == 1
        assert "1 new above" in table.render_line(0).text
        await pilot.press("g")  # the operator looks: the marker goes
        await _wait(pilot)
        assert table.new_above == 0 and "new above" not in table.render_line(0).text


async def test_at_the_top_a_new_failure_shows_instead_of_pushing_the_view_down() -> None:
    app = await afixture_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = _table(app)
        first = table.cursor_run_id
        new = await _add_run(app.fixture.store, 100, failed=True, started=fx.NOW_MILLIS - 1000)
        await app.sync_store()
        await _wait(pilot)
        assert table.rows[0].run_id == new
        assert table.scroll_y == 0  # row 0 (the new failure) is on screen
        assert table.cursor_run_id == first  # and the cursor stayed on its run
        assert table.new_above == 0


# ------------------------------------------------------------------------------------------ 2. marks


async def test_escape_clears_marks_and_the_bar_counts_them() -> None:
    app = await afixture_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        home = _home(app)
        bar = home.query_one("#runs-marks")
        assert not bar.display
        await pilot.press("space", "space")
        await _wait(pilot)
        assert len(home.marked) == 2 and bar.display
        assert "2 marked" in str(bar.render())
        home.query_one(StatusTabs).select("running")  # the tab hides one of them: the bar says so
        await _wait(pilot)
        assert "not shown" in str(bar.render())
        await pilot.press("escape")
        await _wait(pilot)
        assert home.marked == set() and not bar.display
        assert home.tab == "running"  # esc cleared the marks first, not the tab


async def test_marks_clear_once_a_bulk_action_is_confirmed() -> None:
    app = await afixture_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        home = _home(app)
        rows = [m.run_id for m in _table(app).rows]
        live = [r for r in rows if r in (fx.RUN_RUNNING, fx.RUN_RETRYING)]
        table = _table(app)
        for run_id in live:
            table.cursor_row = rows.index(run_id)
            await pilot.press("space")
        assert home.marked == set(live)
        await pilot.press("c")
        await _wait(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press(*str(len(live)), "enter")
        await _wait(pilot)
        assert home.marked == set()  # a later `c` acts on the cursor's run, not on spent marks


async def test_v_marks_a_range_and_u_unmarks_all() -> None:
    app = await afixture_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        home = _home(app)
        rows = [m.run_id for m in _table(app).rows]
        await pilot.press("j", "v", "j", "j", "j", "v")
        await _wait(pilot)
        assert home.marked == set(rows[1:5])
        await pilot.press("u")
        await _wait(pilot)
        assert home.marked == set()


async def test_q_asks_while_runs_are_marked() -> None:
    app = await afixture_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("space", "q")
        await _wait(pilot)
        assert isinstance(app.screen, ConfirmDialog) and app.is_running
        await pilot.press("n")
        await _wait(pilot)
        assert isinstance(app.screen, RunsScreen) and app.is_running
        await pilot.press("q", "y")
        await _wait(pilot)
    assert app.return_code == 0


# ------------------------------------------------------------------------------------------ 5. columns give way


def test_columns_give_way_by_importance() -> None:
    wide = columns_for(120)
    assert (wide.op, wide.started, wide.took, wide.done) == (22, 9, 7, 8) and wide.now >= 50
    at80 = columns_for(79)  # an 80-cell terminal: one cell is the scrollbar's
    assert (at80.op, at80.started, at80.took, at80.done) == (16, 9, 7, 8) and at80.now == 24
    at60 = columns_for(60)
    assert at60.started == 0 and at60.took == 7  # the least important drops out whole
    assert columns_for(57).took == 0
    assert at60.done == 8 and at60.now >= at60.op  # DONE stays whole; the error is not cut for the op
    at40 = columns_for(40)
    assert at40.op == 0 and at40.done == 0 and at40.now >= 20
    for width in range(30, 160):
        c = columns_for(width)
        used = 14 + c.now + (c.op + 1 if c.op else 0) + c.started + c.took + c.done
        assert used == width, width  # exactly fills the line: never a horizontal scrollbar


async def test_narrow_terminal_shows_the_notice_and_whole_columns() -> None:
    app = await afixture_app()
    async with app.run_test(size=(60, 20)) as pilot:
        await settle(pilot)
        notice = _home(app).query_one(SizeNotice)
        assert notice.display and "terminal too small (60x20, need 80x24)" in str(notice.render())
        header = _table(app).render_line(0).text
        assert "DONE" in header and "STARTED" not in header
        assert _table(app).max_scroll_x == 0
    app = await afixture_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert not _home(app).query_one(SizeNotice).display
        table = _table(app)
        # Lines are laid out for the cells left of the scrollbar: with more runs than rows, the scrollbar covered
        # the last two cells ("DO" of DONE, "3" of "3/3").
        header = table.render_line(0)
        assert header.cell_length == table.scrollable_content_region.width == 79
        assert header.text.rstrip().endswith("DONE") and table.render_line(1).text.rstrip().endswith("1/3")


def test_snapshot_too_small_60x20(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(), run_before=settle, terminal_size=(60, 20))


# ------------------------------------------------------------------------------------------ 8. terminals

_NOT_ASCII = ("━", "▼", "▶", "└", "│", "▌", "…")


async def test_ascii_artifact_viewer_and_toasts_draw_no_unicode() -> None:
    from mfm_tui.screens.artifact import ArtifactEntry, ArtifactScreen
    from tests.tui.test_artifact_viewer import _manifest_id
    from tests.tui.test_run_screen import open_screen

    app = await afixture_app(theme="ascii")
    built, store = app.fixture, app.fixture.store
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        entries = [ArtifactEntry("manifest", _manifest_id(built, fx.RUN_RUNNING), "Manifest")]
        await open_screen(pilot, ArtifactScreen(store, entries))
        app.notify("copied the artifact id", timeout=30)
        await _wait(pilot)
        screen_text = _screen_text(app)
        for ch in _NOT_ASCII:
            assert ch not in screen_text, (ch, screen_text)
        assert "copied the artifact id" in screen_text  # the toast is on screen
        assert screen_text.isascii(), sorted({c for c in screen_text if not c.isascii()})
        assert "+ " in screen_text or "- " in screen_text  # the tree's expanders are ASCII


async def test_artifact_tabs_use_digits_not_resume_or_time_travel_keys() -> None:
    from textual.widgets import TabbedContent

    from mfm_tui.screens.artifact import ArtifactEntry, ArtifactScreen
    from tests.tui.test_artifact_viewer import _manifest_id
    from tests.tui.test_run_screen import open_screen

    app = await afixture_app()
    built, store = app.fixture, app.fixture.store
    async with app.run_test(size=(80, 24)) as pilot:
        entries = [ArtifactEntry("manifest", _manifest_id(built, fx.RUN_RUNNING), "Manifest")]
        await open_screen(pilot, ArtifactScreen(store, entries))
        tabs = app.screen.query_one("#artifact-tabs", TabbedContent)
        assert tabs.active == "tree"
        await pilot.press("r", "t")  # resume / time travel elsewhere: nothing here
        await _wait(pilot)
        assert tabs.active == "tree"
        await pilot.press("2")
        await _wait(pilot)
        assert tabs.active == "raw"
        await pilot.press("1")
        await _wait(pilot)
        assert tabs.active == "tree"


def _screen_text(app: Any) -> str:
    """What the terminal shows (every layer, toasts included), as the text of a screenshot."""
    import html
    import re

    svg = app.export_screenshot()
    return html.unescape(" ".join(re.findall(r"<text[^>]*>(.*?)</text>", svg))).replace("\xa0", " ")


# ------------------------------------------------------------------------------------------ 7. search


async def test_search_starts_at_the_cursor_wraps_and_says_not_found() -> None:

    from mfm_tui.widgets.event_log import EventLog
    from tests.tui.test_run_screen import open_screen, run_app, type_query

    built = await fx.build_fixture_store(MemoryStore())
    app, screen = run_app(built, fx.RUN_COMPLETED)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        hits = [i for i in range(log.row_count) if b"item_3" in (log.source.raw(i) or b"")]
        await pilot.press("g")  # the operator is at the top: the search goes forward from here
        await type_query(pilot, "item_3")
        await _wait(pilot)
        assert log.cursor == hits[0] and log.find_status == ""
        for hit in hits[1:]:
            await pilot.press("n")
            assert log.cursor == hit
        await pilot.press("n")  # past the last: around to the first, visibly
        await _wait(pilot)
        assert log.cursor == hits[0] and log.find_status == "wrapped to the top"
        title = str(screen.query_one("#log-box").border_title)
        assert "wrapped to the top" in title
        assert any("wrapped" in str(n.message) for n in app._notifications)
        await pilot.press("escape")
        await type_query(pilot, "no-such-text")
        await _wait(pilot)
        assert log.find_status == "not found" and "not found" in str(screen.query_one("#log-box").border_title)


async def test_a_filter_syntax_error_is_shown_and_the_prompt_stays() -> None:
    from textual.widgets import Input

    from mfm_tui.log_index import query_error
    from mfm_tui.widgets.event_log import EventLog
    from tests.tui.test_run_screen import open_screen, run_app, type_query

    assert query_error("kind=StateFailed s=item_2 upstream") is None
    assert "unknown filter foo=" in (query_error("foo=bar") or "")
    assert "kind= needs a value" in (query_error("kind=") or "")
    built = await fx.build_fixture_store(MemoryStore())
    app, screen = run_app(built, fx.RUN_COMPLETED)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        await type_query(pilot, "foo=bar")
        await _wait(pilot)
        box = screen.query_one("#log-filter", Input)
        assert box.has_class("-shown") and box.has_class("-invalid")
        assert "unknown filter foo=" in str(box.border_title)
        assert any("unknown filter foo=" in str(n.message) for n in app._notifications)
        assert log.search == "" and not log.filter.active  # not silently turned into find text


# ------------------------------------------------------------------------------------------ 3. graph follows


async def test_the_graph_and_panel_follow_the_active_state_until_the_user_moves() -> None:
    from engine.events import StateCompleted, StateEntered
    from mfm_tui.widgets.plan_graph import PlanGraph
    from mfm_tui.widgets.state_panel import StatePanel
    from tests.tui.test_run_screen import open_screen, run_app

    built = await fx.build_fixture_store(MemoryStore())
    app, screen = run_app(built, fx.RUN_RUNNING)
    snap = built.builders[fx.RUN_RUNNING].checkpoint
    assert snap is not None
    async with app.run_test(size=(120, 40)) as pilot:
        await open_screen(pilot, screen)
        graph = screen.query_one(PlanGraph)
        assert graph.cursor == str(fx.sid("transform")) and screen.selected == graph.cursor
        await built.append(
            fx.RUN_RUNNING,
            [
                StateCompleted(state_id=fx.sid("transform"), context_snapshot_id=snap),
                StateEntered(state_id=fx.sid("report"), attempt=0, base_snapshot_id=snap),
            ],
        )
        await screen.poll()
        await _wait(pilot)
        assert graph.cursor == str(fx.sid("report"))  # the cursor went with the run
        assert screen.selected == str(fx.sid("report"))
        assert screen.query_one("#panel-box").border_title == "report"  # and so did the state panel
        graph.focus()
        await pilot.press("h")  # (h = left) the user looks back at transform: that wins
        await _wait(pilot)
        assert graph.cursor == str(fx.sid("transform")) and not graph.following
        await built.append(fx.RUN_RUNNING, [StateCompleted(state_id=fx.sid("report"), context_snapshot_id=snap)])
        await screen.poll()
        await _wait(pilot)
        assert graph.cursor == str(fx.sid("transform"))
        assert isinstance(screen.query_one(StatePanel), StatePanel)
        await pilot.press("f")  # follow again (f in the log or on the screen): back to the active state
        await _wait(pilot)
        assert graph.following


# ------------------------------------------------------------------------------------------ 4. errors at 80 columns

_NEEDS_FILE = "file /tmp/mfm-demo/fix-me not found: create it, then resume"


async def test_errors_are_readable_at_80_columns() -> None:
    from textual.widgets import Static

    from mfm_tui.screens.dialogs import ErrorDialog
    from mfm_tui.widgets.event_log import EventLog
    from tests.tui.test_run_screen import open_screen, run_app

    built = await fx.build_fixture_store(MemoryStore())
    app, screen = run_app(built, fx.RUN_FAILED)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        failed = next(i for i in range(log.row_count) if b"StateFailed" in (log.source.raw(i) or b""))
        log.cursor = failed
        await _wait(pilot)
        y = failed - log.scroll_offset.y
        line = log.render_line(y).text.rstrip()
        assert line.endswith("…") and _NEEDS_FILE not in line  # cut, and it says so
        await pilot.press("right", "right")
        await _wait(pilot)
        moved = log.render_line(y).text.rstrip()
        assert log.text_offset == 16 and "StateFailed       …eds_file]" in moved  # sideways, cut on the left too
        assert moved.endswith("…")
        await pilot.press("w")  # wrap: the whole line under the log
        await _wait(pilot)
        detail = screen.query_one("#log-detail", Static)
        assert detail.display and _NEEDS_FILE in str(detail.render())
        await pilot.press("e")  # one key: the full error, at any size
        await _wait(pilot)
        assert isinstance(app.screen, ErrorDialog)
        assert app.screen.code == "needs_file" and app.screen.message == _NEEDS_FILE
        await pilot.press("escape")
        await _wait(pilot)
        screen.query_one("#graph").focus()  # from the graph: the selected state's error
        await pilot.press("e")
        await _wait(pilot)
        assert isinstance(app.screen, ErrorDialog) and app.screen.message == _NEEDS_FILE


# ------------------------------------------------------------------------------------------ 6. counts and order

RUN_RECOVERY = RunId("7ec0e7ed-0000-4000-8000-00000000000a")
RUN_REPLAY = RunId("4e91a7a1-0000-4000-8000-00000000000b")
RUN_BACKOFF = RunId("bac0ff00-0000-4000-8000-00000000000c")


async def _put(store: Any, b: fx.RunBuilder) -> None:
    for kind, data in b.artifacts.values():
        await store.artifacts.put(kind, data)
    await store.events.append(b.run_id, 0, b.envelopes)


async def test_a_recovered_run_counts_as_recovered_and_sorts_below_a_lost_worker() -> None:
    from engine.events import DOMAIN_EVENT_RECOVERED_FROM, DomainEvent

    store = MemoryStore()
    built = await fx.build_fixture_store(store, only=[fx.RUN_FAILED, fx.RUN_LOST])
    b = fx.RunBuilder(RUN_RECOVERY, fx.NOW_MILLIS - 60_000)
    b.start(fx._manifest("demo_fix", {"file": "/tmp/mfm-demo/fix-me"}))
    b.ev(DomainEvent(name=DOMAIN_EVENT_RECOVERED_FROM, payload={"source_run_id": fx.RUN_FAILED}))
    b.run_state("check")
    await _put(store, b)
    app = fx._app_over(store, built, {})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        order = [m.run_id for m in _table(app).rows]
        assert order.index(fx.RUN_LOST) < order.index(fx.RUN_FAILED)
        summary = str(_home(app).query_one("#runs-summary").render())
        assert "1 recovered" in summary and "failed" not in summary


async def test_a_replay_is_marked_as_a_replay_of_its_source() -> None:
    from engine.events import DOMAIN_EVENT_FACT_RECORDED, DomainEvent

    store = MemoryStore()
    built = await fx.build_fixture_store(store, only=[fx.RUN_COMPLETED])
    b = fx.RunBuilder(RUN_REPLAY, fx.NOW_MILLIS - 30_000)
    b.start(fx._manifest("demo_fanout", {"items": 6}))
    pid = b.put(fx.ArtifactKind.FACT_PAYLOAD, {"rows": 3})
    meta = {"replayed_from": str(fx.RUN_COMPLETED)}
    b.ev(DomainEvent(name=DOMAIN_EVENT_FACT_RECORDED, payload={"key": "k", "payload_id": pid, "meta": meta}))
    b.run_state("fetch")
    b.finish(RunStatus.COMPLETED)
    await _put(store, b)
    app = fx._app_over(store, built, {})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        table = _table(app)
        i = [m.run_id for m in table.rows].index(RUN_REPLAY)
        line = table.render_line(1 + i).text
        assert f"replay of {fx.RUN_COMPLETED[:8]}" in line
        j = [m.run_id for m in table.rows].index(fx.RUN_COMPLETED)
        assert "replay of" not in table.render_line(1 + j).text


async def test_cancelled_during_backoff_shows_who_and_when_not_a_failure() -> None:
    from mfm_tui.run_model import StateStatus
    from mfm_tui.widgets.event_log import EventLog
    from mfm_tui.widgets.run_header import RunHeader
    from tests.tui.test_run_screen import open_screen, run_app

    store = MemoryStore()
    built = await fx.build_fixture_store(store, only=[fx.RUN_RUNNING])
    b = fx.RunBuilder(RUN_BACKOFF, fx.NOW_MILLIS - 50_000)
    b.start(fx._manifest("demo_flaky", {"failures": 3}, max_attempts=5))
    b.run_state("setup")
    b.enter("call")
    b.fail("call", "upstream_unavailable", "upstream answered 503", retryable=True)
    b.retry_scheduled("call", 0, 30_000)
    b.finish(RunStatus.CANCELLED, dt=4_000)
    await _put(store, b)
    await store.events.request_cancel(RUN_BACKOFF, "cancelled by alice@ops-1 in the TUI")
    app, screen = run_app(built, RUN_BACKOFF, store=store)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_screen(pilot, screen)
        model = screen.model
        assert model.states[fx.sid("call")].status is StateStatus.CANCELLED  # not ✗ failed
        assert model.error is None
        header = str(screen.query_one(RunHeader).render())
        assert "upstream_unavailable" not in header
        assert "cancelled by alice@ops-1 in the TUI at" in header
        log = screen.query_one(EventLog)
        note = log.render_line(log.row_count - log.scroll_offset.y).text
        assert "operator cancel" in note and "alice@ops-1" in note


# ------------------------------------------------------------------------------------------ 8. the operation list


async def test_the_operation_list_has_j_k_and_type_to_search() -> None:
    from textual.widgets import Input, OptionList

    from mfm_tui.screens.start import StartScreen

    app = await afixture_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await _wait(pilot)
        screen = app.screen
        assert isinstance(screen, StartScreen)
        olist = screen.query_one("#start-ops", OptionList)
        assert olist.has_focus and olist.highlighted == 0
        await pilot.press("j", "j")
        assert olist.highlighted == 2
        await pilot.press("k")
        assert olist.highlighted == 1
        await pilot.press("f", "l", "a")
        await _wait(pilot)
        box = screen.query_one("#start-filter", Input)
        assert box.value == "fla" and box.has_focus
        assert [str(op.op_id) for op in screen._shown] == ["demo_flaky"]


# ------------------------------------------------------------------------------------------ 8. NO_COLOR and ASCII looks


def _no_color_app(monkeypatch: Any) -> Any:
    from mfm_tui.settings import auto_theme

    monkeypatch.setenv("NO_COLOR", "1")
    theme = auto_theme()
    assert theme == "mfm-ascii"
    return fixture_app(theme=theme)


def test_snapshot_no_color_80x24(snap_compare: Any, monkeypatch: Any) -> None:
    assert snap_compare(_no_color_app(monkeypatch), run_before=settle, terminal_size=(80, 24))


def test_snapshot_no_color_120x40(snap_compare: Any, monkeypatch: Any) -> None:
    assert snap_compare(_no_color_app(monkeypatch), run_before=settle, terminal_size=(120, 40))


def test_snapshot_ascii_120x40(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(theme="ascii"), run_before=settle, terminal_size=(120, 40))


async def test_under_no_color_failures_are_not_dimmer_than_normal_text(monkeypatch: Any) -> None:
    from mfm_tui.settings import auto_theme

    monkeypatch.setenv("NO_COLOR", "1")
    app = await afixture_app(theme=auto_theme())
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        table = _table(app)
        rows = [m.run_id for m in table.rows]
        failed = table.render_line(1 + rows.index(fx.RUN_FAILED))
        table.cursor_row = rows.index(fx.RUN_COMPLETED)  # the cursor elsewhere: plain rows only
        normal = table.render_line(1 + rows.index(fx.RUN_RUNNING))
        failed = table.render_line(1 + rows.index(fx.RUN_FAILED))
        err = next(seg for seg in failed if "needs_file" in seg.text)
        plain = next(seg for seg in normal if "transform" in seg.text)
        assert err.style is not None and plain.style is not None
        assert err.style.bold and not err.style.dim  # at least as strong as normal text
        assert err.style.color == plain.style.color  # no colour to fade into grey


async def test_a_cut_line_ends_with_an_ellipsis_beside_the_scrollbar_too() -> None:
    from rich.cells import cell_len

    from engine.events import DomainEvent
    from mfm_tui.widgets.event_log import EventLog
    from tests.tui.test_run_screen import open_screen, run_app

    built = await fx.build_fixture_store(MemoryStore())
    notes = [DomainEvent(name="operator_note", payload={"text": f"{i} " + "long words " * 12}) for i in range(20)]
    await built.append(fx.RUN_RETRYING, notes)
    app, screen = run_app(built, fx.RUN_RETRYING)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        room = log.scrollable_content_region.width
        assert room < log.size.width  # the scrollbar is there
        lines = [log.render_line(y).text.rstrip() for y in range(log.scrollable_content_region.height)]
        assert all(cell_len(text) <= room for text in lines)  # nothing hides under the scrollbar
        assert sum(text.endswith("…") and cell_len(text) == room for text in lines) >= 5


async def test_no_color_looks_exactly_like_the_ascii_theme_never_black_on_black(monkeypatch: Any) -> None:
    """Textual's own NO_COLOR filter turns default colours into black on black; the colourless theme needs none."""

    async def screenshot() -> str:
        app = await afixture_app(theme="mfm-ascii")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            svg: str = app.export_screenshot()
        return svg

    plain = await screenshot()
    monkeypatch.setenv("NO_COLOR", "1")
    assert await screenshot() == plain
