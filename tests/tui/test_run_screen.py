"""The run screen: snapshots of runs in every status at 80x24 and 120x40, and pilot tests of live behaviour.

The screen runs inside the real app (``make_app`` over the fixture store, frozen clock, not watching); polling is
off and the tests call ``screen.poll()`` (or ``app.sync_store()``) after appending, so nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from textual.events import MouseScrollUp
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input

from engine.errors import StateError
from engine.events import DomainEvent, StateCompleted, StateEntered, StateFailed, encode_envelope
from engine.stores import MemoryStore
from engine.stores.fs import FsStore
from engine.testing import FakeClock
from mfm_tui.app import MfmApp, make_app
from mfm_tui.log_index import FileLogSource
from mfm_tui.screens.run import EventDialog, RunScreen
from mfm_tui.widgets.event_log import EventLog
from mfm_tui.widgets.plan_graph import PlanGraph
from mfm_tui.widgets.state_panel import StatePanel
from tests.tui.fixtures import (
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_FANOUT,
    RUN_RETRYING,
    RUN_RUNNING,
    FixtureStore,
    build_fixture_store,
    fixture_clock,
    sid,
)
from tests.tui.fixtures import _runs as fixture_runs

SMALL = (80, 24)
LARGE = (120, 40)


def run_app(
    fx: FixtureStore,
    run_id: str,
    *,
    store: Any = None,
    clock: FakeClock | None = None,
    theme: str = "mfm-dark",
) -> tuple[MfmApp, RunScreen]:
    """The real app (``make_app``, not watching: tests call ``screen.poll()``) and a run screen to push on it."""
    app = make_app(
        store if store is not None else fx.store,
        clock=clock or fixture_clock(),
        theme=theme,
        plan_resolver=fx.plan_resolver,
        lease_probe=fx.lease_probe,
        watch=False,
    )
    return app, RunScreen(run_id=run_id, poll=False)


async def open_screen(pilot: Pilot[None], screen: Screen[Any]) -> None:
    """Wait for the app's first load, push ``screen`` and let it settle (workers included)."""
    await settle(pilot)
    await pilot.app.push_screen(screen)
    await settle(pilot)
    await pilot.app.workers.wait_for_complete()
    await settle(pilot)


def fixture_store() -> FixtureStore:
    return asyncio.run(build_fixture_store(MemoryStore()))


async def settle(pilot: Pilot[None]) -> None:
    for _ in range(3):
        await pilot.pause()


# ---------------------------------------------------------------------------------------------- snapshots


async def type_query(pilot: Pilot[None], query: str) -> None:
    """``/``, the first characters typed, the rest pasted (each key press costs ~60 ms), then ``enter``."""
    await pilot.press("slash", *query[:2])
    box = pilot.app.screen.query_one("#log-filter", Input)
    box.value = query
    await pilot.press("enter")


def _snap(
    snap_compare: Any,
    run_id: str,
    size: tuple[int, int],
    keys: tuple[str, ...] = (),
    theme: str = "mfm-dark",
    query: str = "",
) -> None:
    app, screen = run_app(fixture_store(), run_id, theme=theme)

    async def before(pilot: Pilot[None]) -> None:
        await open_screen(pilot, screen)
        for key in keys:
            await pilot.press(key)
        if query:
            await type_query(pilot, query)
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=before)


def test_snapshot_running_large(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_RUNNING, LARGE)


def test_snapshot_running_small(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_RUNNING, SMALL)


def test_snapshot_retrying_countdown_large(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_RETRYING, LARGE)


def test_snapshot_retrying_countdown_small(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_RETRYING, SMALL)


def test_snapshot_failed_large(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_FAILED, LARGE)


def test_snapshot_fanout_large(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_FANOUT, LARGE)


def test_snapshot_fanout_small(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_FANOUT, SMALL)


def test_snapshot_cancelled_small(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_CANCELLED, SMALL)


def test_snapshot_log_paused(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_COMPLETED, SMALL, ("k", "k", "k"))


def test_snapshot_log_filtered(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_COMPLETED, LARGE, query="kind=StateCompleted")


def test_snapshot_state_detail_small(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_RETRYING, SMALL, ("tab", "enter"))


def test_snapshot_event_dialog(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_FAILED, SMALL, ("enter",))


# ---------------------------------------------------------------------------------------------- pilot tests


async def test_appended_events_appear_while_following() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_RUNNING)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        before = log.row_count
        assert log.follow and log.cursor == before - 1
        await fx.append(RUN_RUNNING, [StateCompleted(state_id=sid("transform"), context_snapshot_id="c" * 64)])
        await screen.poll()
        await settle(pilot)
        assert log.row_count == before + 1
        assert log.cursor == before
        assert log.scroll_offset.y == log.max_scroll_y
        assert screen.model.states[sid("transform")].status.value == "completed"


async def test_scrolling_up_pauses_follow_and_f_resumes() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_COMPLETED)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        last = log.row_count - 1
        await pilot.press("k", "k")
        assert not log.follow
        assert log.cursor == last - 2
        assert "paused" in str(screen.query_one("#log-box").border_title)
        await fx.append(RUN_COMPLETED, [DomainEvent(name="note", payload={"text": "late"})])
        await screen.poll()
        await settle(pilot)
        assert log.row_count == last + 2
        assert log.cursor == last - 2  # nothing jumps under the cursor while paused
        await pilot.press("f")
        assert log.follow and log.cursor == last + 1
        await pilot.press("g")
        assert not log.follow and log.cursor == 0
        await pilot.press("G")
        assert log.follow and log.cursor == last + 1


async def test_mouse_wheel_up_pauses_follow() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_COMPLETED)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        assert log.max_scroll_y > 0
        log.post_message(MouseScrollUp(log, 1, 1, 0, -1, 0, False, False, False))
        await settle(pilot)
        assert not log.follow
        assert log.scroll_offset.y < log.max_scroll_y


async def test_filter_narrows_and_escape_clears() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_COMPLETED)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        total = log.row_count
        await type_query(pilot, "kind=StateEntered")
        await settle(pilot)
        entered = [i for i in range(total) if b'"StateEntered"' in (log.source.raw(i) or b"")]
        assert log.row_count == len(entered) < total
        assert [log.line_at(r) for r in range(log.row_count)] == entered
        assert "kind=StateEntered" in str(screen.query_one("#log-box").border_title)
        await pilot.press("escape")
        assert log.row_count == total


async def test_search_moves_between_matches() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_COMPLETED)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        await type_query(pilot, "item_3")
        await settle(pilot)
        hits = [i for i in range(log.row_count) if b"item_3" in (log.source.raw(i) or b"")]
        assert len(hits) >= 2
        # forward from the cursor (on the last event, following): around to the first match, and it says so
        assert log.cursor == hits[0] and log.find_status == "wrapped to the top"
        await pilot.press("n")
        assert log.cursor == hits[1] and log.find_status == ""
        await pilot.press("N", "N")
        assert log.cursor == hits[-1] and log.find_status == "wrapped to the end"


async def test_arrow_keys_move_the_graph_selection_and_panel_follows() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_FANOUT)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        graph = screen.query_one(PlanGraph)
        assert graph.cursor == sid("item_2")  # the retrying state is selected first
        await pilot.press("tab")
        assert graph.has_focus
        await pilot.press("right")
        assert graph.cursor == sid("join")
        await pilot.press("right")
        assert graph.cursor == sid("report")
        await pilot.press("left", "left")
        assert graph.cursor == sid("item_2")
        await pilot.press("up")
        assert graph.cursor == sid("item_1")
        await settle(pilot)
        panel = screen.query_one(StatePanel)
        assert panel.state is not None and panel.state.state_id == sid("item_1")


async def test_narrow_screen_opens_panel_on_enter_and_escape_returns() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_FAILED)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        panel_box = screen.query_one("#panel-box")
        assert not panel_box.display or panel_box.region.width == 0
        await pilot.press("tab", "enter")
        await settle(pilot)
        assert screen.has_class("-panel-open")
        assert panel_box.region.width > 0
        await pilot.press("escape")
        assert not screen.has_class("-panel-open")


async def test_retry_countdown_ticks_with_the_clock() -> None:
    fx = await build_fixture_store(MemoryStore())
    clock = fixture_clock()
    app, screen = run_app(fx, RUN_RETRYING, clock=clock)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        header = screen.query_one("#run-header")
        assert "call 3/5 in 7s" in str(header.render())
        clock.advance(3000)
        screen.tick()
        await settle(pilot)
        assert "call 3/5 in 4s" in str(header.render())


async def test_enter_on_the_log_shows_the_envelope_and_y_copies_it() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_FAILED)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, EventDialog)
        assert '"RunCompleted"' in app.screen.text
        await pilot.press("y")
        assert app.clipboard == app.screen.text
        await pilot.press("escape")
        assert app.screen is screen


async def test_file_backed_log_tails_the_events_file(tmp_path: Path) -> None:
    fx = await build_fixture_store(MemoryStore())
    path = tmp_path / "events.jsonl"
    envs = fx.builders[RUN_RUNNING].envelopes
    path.write_bytes(b"".join(encode_envelope(e) + b"\n" for e in envs))

    class FileStore:
        def __init__(self) -> None:
            self.events = fx.store.events
            self.artifacts = fx.store.artifacts

        def events_path(self, run_id: str) -> Path:
            return path

    app, screen = run_app(fx, RUN_RUNNING, store=FileStore())
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert isinstance(screen.source, FileLogSource)
        log = screen.query_one(EventLog)
        assert log.row_count == len(envs)
        assert screen.model.last_seq == len(envs)
        failed = StateFailed(state_id=sid("transform"), error=StateError.new("boom", "it broke"))
        entered = StateEntered(state_id=sid("transform"), attempt=1, base_snapshot_id=envs[0].event.initial_snapshot_id)
        more = await fx.append(RUN_RUNNING, [failed, entered])
        with open(path, "ab") as fh:
            fh.write(b"".join(encode_envelope(e) + b"\n" for e in more))
        await screen.poll()
        await settle(pilot)
        assert log.row_count == len(envs) + 2
        assert screen.model.states[sid("transform")].attempt_number == 2


async def test_real_fs_store_run_is_read_from_its_events_file(tmp_path: Path) -> None:
    fx = await build_fixture_store(FsStore(tmp_path / "store"), only=[RUN_RETRYING])
    app, screen = run_app(fx, RUN_RETRYING)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        assert isinstance(screen.source, FileLogSource)
        n = len(fx.builders[RUN_RETRYING].envelopes)
        assert screen.query_one(EventLog).row_count == n
        assert screen.model.status.value == "retrying"
        entered = StateEntered(state_id=sid("call"), attempt=2, base_snapshot_id="a" * 64)
        await fx.append(RUN_RETRYING, [entered, DomainEvent(name="note", payload={"n": 1})])
        await app.sync_store()
        await settle(pilot)
        assert screen.query_one(EventLog).row_count == n + 2
        assert screen.model.status.value == "running"


async def test_unknown_run_shows_an_empty_screen_not_a_traceback() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, "00000000-0000-4000-8000-0000000000ff")
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        assert screen.query_one(EventLog).row_count == 0
        assert "pending" in str(screen.query_one("#run-header").render())


def test_snapshot_ascii_theme(snap_compare: Any) -> None:
    _snap(snap_compare, RUN_FANOUT, LARGE, theme="mfm-ascii")


async def test_app_store_watcher_updates_the_open_run() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_RUNNING)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        before = screen.query_one(EventLog).row_count
        await fx.append(RUN_RUNNING, [StateCompleted(state_id=sid("transform"), context_snapshot_id="c" * 64)])
        await app.sync_store()
        await settle(pilot)
        assert screen.query_one(EventLog).row_count == before + 1


async def test_ascii_theme_draws_no_unicode_in_graph_and_log() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_FANOUT, theme="mfm-ascii")
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        graph = screen.query_one(PlanGraph)
        log = screen.query_one(EventLog)
        text = "".join(graph.render_line(y).text for y in range(5)) + "".join(log.render_line(y).text for y in range(9))
        assert "item_2" in text
        assert all(ord(ch) < 128 for ch in text), sorted({ch for ch in text if ord(ch) >= 128})


async def test_help_lists_the_run_screen_keys() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_FAILED)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        text = " ".join(f"{e.keys} {e.description}" for e in app.help_entries(screen))
        for expected in ("Follow new events", "Filter the log", "Next log line", "Manifest, snapshots"):
            assert expected in text


async def test_clicks_select_a_log_line_and_a_graph_node() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, screen = run_app(fx, RUN_FANOUT)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        log = screen.query_one(EventLog)
        await pilot.click(EventLog, offset=(5, 1))
        assert log.cursor == 1 and not log.follow
        graph = screen.query_one(PlanGraph)
        await pilot.click(PlanGraph, offset=(2, 0))
        assert graph.cursor == sid("fetch")
        assert screen.query_one(StatePanel).state is not None


async def test_graph_of_a_thousand_states_scrolls_to_the_cursor() -> None:
    from textual.app import App, ComposeResult

    from mfm_tui.run_model import StateView

    chain = [f"demo.main.step_{i:04d}" for i in range(1000)]
    fan = ["demo.main.fetch", *(f"demo.main.item_{i}" for i in range(400))]

    class Host(App[None]):
        def compose(self) -> ComposeResult:
            yield PlanGraph(id="chain")
            yield PlanGraph(id="fan")

    async with Host().run_test(size=(80, 24)) as pilot:
        graph = pilot.app.query_one("#chain", PlanGraph)
        graph.set_graph(chain, list(itertools.pairwise(chain)), {s: StateView(s) for s in chain}, 0)  # type: ignore[misc]
        await pilot.pause()
        assert graph.virtual_size.width > 1000 * 10
        graph.select(chain[500])
        await pilot.pause()
        assert graph.scroll_offset.x > 0
        assert "step_0500" in graph.render_line(0).text
        fan_graph = pilot.app.query_one("#fan", PlanGraph)
        edges = [(fan[0], item) for item in fan[1:]]
        fan_graph.set_graph(fan, edges, {s: StateView(s) for s in fan}, 0)  # type: ignore[misc]
        await pilot.pause()
        rows = "".join(strip.text for strip in (fan_graph.render_line(y) for y in range(12)))
        assert "… 389 more" in rows


async def test_a_run_opened_before_run_started_gets_its_whole_plan_once_the_manifest_is_known() -> None:
    """The start form opens a new run at once; its RunStarted (and so its manifest) lands a moment later."""
    fx = await build_fixture_store(MemoryStore(), only=[])
    builder = next(b for b in fixture_runs() if b.run_id == RUN_FANOUT)
    app, screen = run_app(fx, RUN_FANOUT)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        for kind, data in builder.artifacts.values():
            await fx.store.artifacts.put(kind, data)
        await fx.store.events.append(RUN_FANOUT, 0, builder.envelopes[:2])  # RunStarted, StateEntered(fetch)
        await screen.poll()
        await settle(pilot)
        nodes, edges = screen._graph_shape()
        assert sid("join") in nodes and sid("report") in nodes, "states not yet entered are shown from the plan"
        assert (sid("fetch"), sid("item_0")) in edges and (sid("item_1"), sid("join")) in edges
