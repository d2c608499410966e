"""Snapshots of the controller: start form, confirmations (cancel, resume, recovery, replay, bulk), cancelling,
replay verdicts, state and run diffs, time travel and the read-only footer.

Fixture store (fixed ids, frozen clock), fixed terminal sizes, nothing sleeps for real.
"""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from engine.operations import load_registry
from mfm_tui import controller
from mfm_tui.screens.diff import DiffScreen, ReplayScreen
from tests.tui.fixtures import (
    RUN_CANCELLING,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_LOST,
    RUN_RUNNING,
    RUN_SKIPPED,
    fixture_app,
    settle,
    wait_until,
)

SMALL = (80, 24)
LARGE = (120, 40)


def app(**kwargs: Any) -> Any:
    kwargs.setdefault("registry", load_registry())
    return fixture_app(**kwargs)


async def steady(pilot: Pilot[Any]) -> None:
    for _ in range(3):
        await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


async def open_run(pilot: Pilot[Any], run_id: str) -> None:
    await settle(pilot)
    pilot.app.open_run(run_id)
    await steady(pilot)
    await wait_until(pilot, lambda: getattr(pilot.app.screen, "_model_ready", False))
    await steady(pilot)


# ------------------------------------------------------------------------------------------ start


def test_snapshot_start_form_empty(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("s")
        await steady(pilot)

    assert snap_compare(app(), run_before=run_before, terminal_size=SMALL)


def test_snapshot_start_form_with_errors(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("s")
        await steady(pilot)
        screen = pilot.app.screen
        screen.query_one("#start-filter", Input).value = "side"
        await steady(pilot)
        await pilot.press("enter")  # edit the parameters of demo_side_effect
        await steady(pilot)
        screen.query_one("#param-file_name", Input).value = ""
        await pilot.press("ctrl+s")  # folder is required: errors, nothing written
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=(100, 30))


# ------------------------------------------------------------------------------------------ confirmations


def test_snapshot_cancel_confirmation(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_RUNNING)
        await pilot.press("c")
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


def test_snapshot_resume_confirmation_worker_lost(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_LOST)
        await pilot.press("r")
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


def test_snapshot_resume_confirmation_failed_recovery(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_FAILED)
        await pilot.press("r")
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=LARGE)


def test_snapshot_resume_refused_for_a_completed_run(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_COMPLETED)
        await pilot.press("r")
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


def test_snapshot_replay_confirmation(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_COMPLETED)
        await pilot.press("p")
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


def test_snapshot_bulk_cancel_confirmation(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        screen = pilot.app.screen
        screen.marked.update({RUN_RUNNING, RUN_LOST, RUN_COMPLETED})
        await pilot.press("c")
        await steady(pilot)
        pilot.app.screen.query_one("#confirm-input", Input).value = "3"
        await pilot.press("enter")  # 2 runs are affected (one is finished): 3 does not confirm
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


def test_snapshot_cancelling(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_CANCELLING)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


# ------------------------------------------------------------------------------------------ replay


def _verdict(verdict: str, state: str | None) -> dict[str, Any]:
    return {
        "source_run_id": RUN_COMPLETED,
        "replay_run_id": RUN_SKIPPED,
        "verdict": verdict,
        "diverged_state": state,
        "phase": "completed",
        "source_final": "a" * 64,
        "replay_final": "a" * 64 if verdict == "deterministic" else "b" * 64,
    }


def test_snapshot_replay_verdict_deterministic(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        verdict = _verdict("deterministic", None)
        await pilot.app.push_screen(ReplayScreen(RUN_COMPLETED, RUN_SKIPPED, verdict_loader=lambda: verdict))
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


def test_snapshot_replay_verdict_diverged(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        verdict = _verdict("diverged", "demo.main.join")
        await pilot.app.push_screen(ReplayScreen(RUN_COMPLETED, RUN_SKIPPED, verdict_loader=lambda: verdict))
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


def test_snapshot_replay_in_progress(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.app.push_screen(ReplayScreen(RUN_COMPLETED, RUN_RUNNING, verdict_loader=lambda: None, poll=False))
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


# ------------------------------------------------------------------------------------------ diff


def test_snapshot_state_diff(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_RUNNING)
        pilot.app.screen.selected = "demo.main.fetch"
        await pilot.press("d")
        await steady(pilot)
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, DiffScreen))
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=SMALL)


def test_snapshot_run_diff(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        models = pilot.app.watcher.models
        controller.diff_runs(pilot.app, models[RUN_FAILED], models[RUN_COMPLETED])
        await steady(pilot)
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, DiffScreen))
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=LARGE)


# ------------------------------------------------------------------------------------------ time travel, read-only


def test_snapshot_time_travel(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_COMPLETED)
        for _ in range(12):
            await pilot.press("left_square_bracket")
        await steady(pilot)

    assert snap_compare(app(), run_before=run, terminal_size=LARGE)


def test_snapshot_read_only_footer(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("c")  # disabled: says why
        await steady(pilot)

    assert snap_compare(app(read_only=True), run_before=run, terminal_size=SMALL)


def test_snapshot_state_diff_ascii(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_RUNNING)
        pilot.app.screen.selected = "demo.main.fetch"
        await pilot.press("d")
        await steady(pilot)
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, DiffScreen))
        await steady(pilot)

    assert snap_compare(app(theme="mfm-ascii"), run_before=run, terminal_size=SMALL)


# ------------------------------------------------------------------------------------------ failed -> fix -> resume

RUN_RECOVERY = "d07e2b19-6a7b-4c8d-9e0f-0000000000aa"


def _app_with_recovery_run() -> Any:
    """The fixture store plus the recovery run of RUN_FAILED, completed after the operator created the file."""
    import asyncio

    from engine.events import DOMAIN_EVENT_RECOVERED_FROM, DomainEvent, RunStatus
    from engine.ids import RunId
    from engine.stores import MemoryStore
    from tests.tui import fixtures as fx

    async def build() -> Any:
        store = MemoryStore()  # the fixture runs are added by fixture_app
        b = fx.RunBuilder(RunId(RUN_RECOVERY), fx.NOW_MILLIS - 20 * fx.SEC)
        b.start(fx._manifest("demo_fix", {"file": "/tmp/mfm-demo/fix-me"}))
        payload = {"source_run_id": RUN_FAILED, "failed_state_id": "demo.main.check", "carried_states": 1}
        b.ev(DomainEvent(name=DOMAIN_EVENT_RECOVERED_FROM, payload=payload), 1)
        b.run_state("prepare", dt_enter=1, dt_run=1)
        b.enter("check")
        b.fact("exec:check#0", {"exit_code": 0, "stdout": '{"exists":true}\n', "stderr": ""}, dt=150)
        b.complete("check", dt=20)
        b.run_state("finish", dt_run=40)
        b.finish(RunStatus.COMPLETED)
        for kind, data in b.artifacts.values():
            await store.artifacts.put(kind, data)
        await store.events.append(b.run_id, 0, b.envelopes)
        return store

    return app(store=asyncio.run(build()))


def test_snapshot_recovery_run_completed(snap_compare: Any) -> None:
    async def run(pilot: Pilot[Any]) -> None:
        await open_run(pilot, RUN_RECOVERY)

    assert snap_compare(_app_with_recovery_run(), run_before=run, terminal_size=LARGE)
