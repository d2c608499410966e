"""Run trees in the TUI (issue 16): the runs list nests children under their parent (fold/unfold, count and worst
child status on the parent row, tabs count every run), the run screen badges a state that spawned children, ``enter``
drills into a child and ``esc``/``backspace`` come back to the parent where it was; the cancel dialog names the
children it stops too. Snapshots of the nested list and the drill-down at 80x24 and 120x40."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from engine.events import RunCompleted, RunStatus, StateCompleted
from engine.stores.fs import FsStore
from mfm_tui.app import make_app
from mfm_tui.run_model import RunDisplayStatus
from mfm_tui.screens.confirm import ConfirmDialog
from mfm_tui.screens.run import ChildPicker, RunScreen
from mfm_tui.screens.runs import RunsScreen
from mfm_tui.widgets.plan_graph import PlanGraph
from mfm_tui.widgets.run_table import RunTable
from mfm_tui.widgets.status_tabs import StatusTabs
from tests.tui.fixtures import fixture_clock, settle, sid, wait_until
from tests.tui.tree_fixtures import (
    PARENT_FAILED,
    PARENT_RUNNING,
    PLAIN,
    atree_app,
    build_tree_store,
    children,
    tree_app,
    tree_plan_shape,
)

SMALL = (80, 24)
LARGE = (120, 40)
FAILED_KIDS = children(PARENT_FAILED, 3)
RUNNING_KIDS = children(PARENT_RUNNING, 2)


def _table(app: Any) -> RunTable:
    return app.screen.query_one(RunTable)


def _row_text(app: Any, run_id: str) -> str:
    table = _table(app)
    row = table.row_of(run_id)
    assert row is not None, run_id
    return "".join(seg.text for seg in table.render_line(row + 1 - int(table.scroll_y)))


def _graph_text(screen: RunScreen) -> str:
    graph = screen.query_one(PlanGraph)
    return "\n".join("".join(seg.text for seg in graph.render_line(y)) for y in range(graph.size.height))


async def _open_parent(pilot: Pilot[Any], run_id: str) -> RunScreen:
    await settle(pilot)
    pilot.app.open_run(run_id)
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, RunScreen) and pilot.app.screen._model_ready)
    await pilot.app.workers.wait_for_complete()
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, RunScreen)
    return screen


async def _drill_into(pilot: Pilot[Any], index: int) -> RunScreen:
    """From a parent's run screen: the graph, ``enter`` on run_children, the index-th child in the picker."""
    screen = pilot.app.screen
    assert isinstance(screen, RunScreen)
    screen.query_one(PlanGraph).focus()
    screen.query_one(PlanGraph).select(sid("run_children"))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ChildPicker))
    await pilot.press(*(["down"] * index), "enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, RunScreen) and pilot.app.screen.path != ())
    await wait_until(pilot, lambda: pilot.app.screen._model_ready)
    await pilot.app.workers.wait_for_complete()
    await settle(pilot)
    child = pilot.app.screen
    assert isinstance(child, RunScreen)
    return child


# ------------------------------------------------------------------------------------------ snapshots


def test_snapshot_nested_runs_80x24(snap_compare: Any) -> None:
    assert snap_compare(tree_app(), run_before=settle, terminal_size=SMALL)


def test_snapshot_nested_runs_120x40(snap_compare: Any) -> None:
    assert snap_compare(tree_app(), run_before=settle, terminal_size=LARGE)


async def _to_failed_child(pilot: Pilot[Any]) -> None:
    await _open_parent(pilot, PARENT_FAILED)
    await _drill_into(pilot, 1)


def test_snapshot_drill_down_80x24(snap_compare: Any) -> None:
    assert snap_compare(tree_app(), run_before=_to_failed_child, terminal_size=SMALL)


def test_snapshot_drill_down_120x40(snap_compare: Any) -> None:
    assert snap_compare(tree_app(), run_before=_to_failed_child, terminal_size=LARGE)


def test_snapshot_parent_badge_120x40(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _open_parent(pilot, PARENT_FAILED)

    assert snap_compare(tree_app(), run_before=run_before, terminal_size=LARGE)


# ------------------------------------------------------------------------------------------ runs list


async def test_children_are_nested_under_their_parent_with_count_and_worst_status() -> None:
    app = await atree_app()
    async with app.run_test(size=LARGE) as pilot:
        await settle(pilot)
        rows = [m.run_id for m in _table(app).rows]
        assert rows == [PARENT_FAILED, *FAILED_KIDS, PARENT_RUNNING, *RUNNING_KIDS, PLAIN]
        assert "▾3 ✗ failed" in _row_text(app, PARENT_FAILED)
        assert "▾2 ● running" in _row_text(app, PARENT_RUNNING)
        assert "├ demo_child" in _row_text(app, FAILED_KIDS[0])
        assert "└ demo_child" in _row_text(app, FAILED_KIDS[2])
        assert "▾" not in _row_text(app, PLAIN) and "├" not in _row_text(app, PLAIN)
        models = app.watcher.models
        assert models[FAILED_KIDS[1]].parent_run_id == PARENT_FAILED
        # A child holds no lease of its own: it takes its parent's (running under the parent's live worker).
        assert models[RUNNING_KIDS[1]].status is RunDisplayStatus.RUNNING


async def test_fold_and_unfold_a_parent_and_left_on_a_child_goes_to_its_parent() -> None:
    app = await atree_app()
    async with app.run_test(size=LARGE) as pilot:
        await settle(pilot)
        table = _table(app)
        await pilot.press("left")  # on the failed parent: fold
        assert [m.run_id for m in table.rows] == [PARENT_FAILED, PARENT_RUNNING, *RUNNING_KIDS, PLAIN]
        assert "▸3 ✗ failed" in _row_text(app, PARENT_FAILED)
        await pilot.press("right")
        assert len(table.rows) == 8
        await pilot.press("down", "down")
        assert table.cursor_run_id == FAILED_KIDS[1]
        await pilot.press("left")
        assert table.cursor_run_id == PARENT_FAILED


async def test_tabs_and_summary_count_every_run_children_included() -> None:
    app = await atree_app()
    async with app.run_test(size=LARGE) as pilot:
        await settle(pilot)
        tabs = app.screen.query_one(StatusTabs)
        text = str(tabs.render())
        assert "All 8" in text and "Failed 2" in text and "Completed 4" in text and "Running 2" in text
        assert "8 runs" in str(app.screen.query_one("#runs-summary").render())
        tabs.select("failed")
        await settle(pilot)
        # The failed child sits under its failed parent; the completed siblings are not in this tab.
        assert [m.run_id for m in _table(app).rows] == [PARENT_FAILED, FAILED_KIDS[1]]
        assert "2 of 8 runs" in str(app.screen.query_one("#runs-summary").render())
        tabs.select("completed")
        await settle(pilot)
        # Their parent is not shown: the children are listed at the top level.
        assert set(m.run_id for m in _table(app).rows) == {FAILED_KIDS[0], FAILED_KIDS[2], RUNNING_KIDS[0], PLAIN}
        assert not any("├" in _row_text(app, r) or "└" in _row_text(app, r) for r in (FAILED_KIDS[0], PLAIN))


# ------------------------------------------------------------------------------------------ run screen


async def test_badge_counts_children_and_follows_a_child_finishing() -> None:
    app = await atree_app()
    async with app.run_test(size=LARGE) as pilot:
        screen = await _open_parent(pilot, PARENT_RUNNING)
        assert "run_children 1/2 [2 children: 1 ✓ 1 ⟳]" in _graph_text(screen)
        fx = app.fixture
        await fx.append(
            RUNNING_KIDS[1],
            [
                StateCompleted(state_id=sid("check"), context_snapshot_id="c" * 64),
                RunCompleted(status=RunStatus.FAILED, final_snapshot_id="c" * 64),
            ],
        )
        await app.sync_store()
        await settle(pilot)
        assert "[2 children: 1 ✓ 1 ✗]" in _graph_text(screen)


async def test_on_a_filesystem_store_the_run_screen_badges_the_children_and_drills_into_one(tmp_path: Path) -> None:
    """The run screen folds an events file decoding only the lines it needs: the child-run events among them."""
    f = await build_tree_store(FsStore(tmp_path / "store"))
    app = make_app(
        FsStore(tmp_path / "store"),
        clock=fixture_clock(),
        watch=False,
        lease_probe=f.lease_probe,
        plan_resolver=tree_plan_shape,
    )
    async with app.run_test(size=LARGE) as pilot:
        parent = await _open_parent(pilot, PARENT_FAILED)
        assert "run_children child_failed [3 children: 2 ✓ 1 ✗]" in _graph_text(parent)
        child = await _drill_into(pilot, 1)
        assert child.run_id == FAILED_KIDS[1]


async def test_enter_drills_into_a_child_and_esc_or_backspace_come_back_where_it_was() -> None:
    app = await atree_app()
    async with app.run_test(size=LARGE) as pilot:
        parent = await _open_parent(pilot, PARENT_FAILED)
        assert "[3 children: 2 ✓ 1 ✗]" in _graph_text(parent)
        child = await _drill_into(pilot, 1)
        assert child.run_id == FAILED_KIDS[1]
        assert child.path == ((PARENT_FAILED, sid("run_children")),)
        crumb = str(child.query_one("#breadcrumb").render())
        assert crumb.startswith(f"runs › demo_children {PARENT_FAILED[:8]} › run_children › demo_child")
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is parent
        assert parent.query_one(PlanGraph).cursor == sid("run_children")  # where it was
        await _drill_into(pilot, 2)
        await pilot.press("backspace")
        await settle(pilot)
        assert app.screen is parent
        await pilot.press("backspace")  # a root run: backspace does not leave it
        await settle(pilot)
        assert app.screen is parent
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)


async def test_picker_escape_returns_to_the_parent() -> None:
    app = await atree_app()
    async with app.run_test(size=LARGE) as pilot:
        parent = await _open_parent(pilot, PARENT_FAILED)
        await pilot.press("tab")
        parent.query_one(PlanGraph).select(sid("run_children"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ChildPicker))
        picker = app.screen
        assert isinstance(picker, ChildPicker)
        assert picker.lines[1].startswith(f"✗ {FAILED_KIDS[1][:8]} demo_child  failed")
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is parent


async def test_cancel_dialog_says_the_running_children_stop_too() -> None:
    app = await atree_app()
    async with app.run_test(size=LARGE) as pilot:
        await _open_parent(pilot, PARENT_RUNNING)
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog))
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog)
        assert "Its 1 running child run is cancelled too." in dialog.body
