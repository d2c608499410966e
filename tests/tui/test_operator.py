"""Operator actions added for issue 14 ("Add: what operators rely on"): retry now, the workers view, the logs view,
`:` jumps, the attempt timeline, re-run with edited parameters, the shell, and the notice of new failures.

Fixture-store tests run on the frozen clock; the end-to-end ones use a temporary filesystem store with real detached
workers and bounded waits that refresh from the store (they fail instead of hanging; nothing asserts on time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.ids import RunId
from mfm_tui.run_model import RunDisplayStatus
from mfm_tui.screens.confirm import ConfirmDialog
from mfm_tui.screens.dialogs import ErrorDialog
from mfm_tui.screens.run import RunScreen
from tests.tui.fixtures import RUN_COMPLETED, RUN_RETRYING, RUN_RUNNING, afixture_app, settle, sid
from tests.tui.test_controller import confirm, fs_app, start, status, until

SIZE = (100, 30)


# ------------------------------------------------------------------------------------------ retry now


async def test_retry_now_asks_naming_state_and_attempt_then_records_the_request() -> None:
    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.open_run(RUN_RETRYING)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        dialog: Any = app.screen
        assert "Retry call attempt 3/5 now?" in dialog.body
        assert "demo.main.call" in dialog.body
        assert await app.store.events.retry_now_request(RUN_RETRYING, sid("call"), 2) is None  # not before "y"
        await pilot.press("y")
        await until(pilot, lambda: app.screen.__class__ is RunScreen)
        for _ in range(100):
            if await app.store.events.retry_now_request(RUN_RETRYING, sid("call"), 2) is not None:
                break
            await pilot.pause(0.02)
        req = await app.store.events.retry_now_request(RUN_RETRYING, sid("call"), 2)
        assert req is not None and (req.state_id, req.attempt) == (sid("call"), 2)


async def test_retry_now_is_refused_where_nothing_waits() -> None:
    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for run_id, code in ((RUN_COMPLETED, "run_already_finished"), (RUN_RUNNING, "not_in_backoff")):
            app.open_run(run_id)
            await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
            await pilot.press("R")
            await until(pilot, lambda: isinstance(app.screen, ErrorDialog))
            assert app.screen.code == code  # type: ignore[attr-defined]
            await pilot.press("escape")
            await pilot.press("escape")


async def test_retry_now_from_the_tui_starts_the_next_attempt_long_before_its_backoff_ends(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    ten_minutes = {"fail_times": 1, "base_delay_ms": 600_000, "max_delay_ms": 600_000}
    run_id = await start(store, "demo_flaky", ten_minutes)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.RETRYING)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        await pilot.press("R")
        await confirm(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.COMPLETED)
        envs = await store.events.read_range(RunId(run_id), 1)
        sched = next(e for e in envs if e.kind == "retry_scheduled")
        second = next(e for e in envs if e.kind == "StateEntered" and e.event.attempt == 1)  # type: ignore[union-attr]
        assert second.ts_millis is not None
        assert second.ts_millis < sched.event.payload["not_before_millis"]  # type: ignore[union-attr]
