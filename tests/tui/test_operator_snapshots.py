"""Snapshots of the views added for issue 14: the workers view, the logs view and the attempt timeline, at 80x24 and
120x40 (fixture store, fixed ids, frozen clock, fixed file contents)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from engine.stores.fs import FsStore
from mfm_tui.screens.logs import LogsScreen
from mfm_tui.screens.timeline import TimelineScreen
from mfm_tui.screens.workers import WorkersScreen
from tests.tui.fixtures import RUN_RETRYING, RUN_RUNNING, _app_over, build_fixture_store, settle, sid, wait_until
from tests.tui.test_operator import fake_source

SIZES = {"80x24": (80, 24), "120x40": (120, 40)}


async def steady(pilot: Pilot[Any]) -> None:
    for _ in range(3):
        await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


@pytest.mark.parametrize("size", sorted(SIZES))
def test_snapshot_workers_view(snap_compare: Any, size: str) -> None:
    from tests.tui.fixtures import fixture_app

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        pilot.app.push_screen(WorkersScreen(source=fake_source))
        await wait_until(pilot, lambda: bool(getattr(pilot.app.screen, "rows", None)))
        await steady(pilot)

    assert snap_compare(fixture_app(), run_before=run_before, terminal_size=SIZES[size])


@pytest.mark.parametrize("size", sorted(SIZES))
def test_snapshot_logs_view_paused_with_new_lines(snap_compare: Any, size: str, tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    fx = asyncio.run(build_fixture_store(store))
    folder = tmp_path / "store" / "runs" / RUN_RUNNING
    (folder / "worker.log").write_text(
        "".join(f"[2026-01-01T00:00:{i:02d}] worker 4101: step {i} of demo_pipeline\n" for i in range(40))
    )
    (folder / "exec.stderr").write_text("fetch#1 fetch: measuring 3 word(s) after 0s\nfetch#1 fetch: done\n")

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        pilot.app.push_screen(LogsScreen(RUN_RUNNING))
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "_lines", {}).get("worker"))
        await steady(pilot)
        await pilot.press("k", "k")
        with open(folder / "worker.log", "a") as f:
            f.write("[2026-01-01T00:00:40] worker 4101: late line\n" * 2)
        pilot.app.screen.poll()
        await wait_until(pilot, lambda: pilot.app.screen.new_while_paused == 2)
        await steady(pilot)

    assert snap_compare(_app_over(store, fx, {}), run_before=run_before, terminal_size=SIZES[size])


@pytest.mark.parametrize("size", sorted(SIZES))
def test_snapshot_attempt_timeline(snap_compare: Any, size: str) -> None:
    from tests.tui.fixtures import fixture_app

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        app: Any = pilot.app
        app.open_run(RUN_RETRYING)
        await wait_until(pilot, lambda: getattr(app.screen, "_model_ready", False))
        await steady(pilot)
        app.screen.selected = sid("call")
        await pilot.press("T")
        await wait_until(pilot, lambda: isinstance(app.screen, TimelineScreen))
        await steady(pilot)

    assert snap_compare(fixture_app(), run_before=run_before, terminal_size=SIZES[size])
