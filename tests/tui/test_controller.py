"""The controller on a real temporary filesystem store with real detached workers: start from the form, cancel during
a backoff, resume after SIGKILL, recover a failed run after fixing it, replay, a worker that cannot start, read-only.

Waits are bounded loops that refresh from the store (they fail instead of hanging); nothing asserts on time.
"""

from __future__ import annotations

import copy
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from engine.ids import RunId
from engine.operations import load_registry
from engine.stores.fs import FsStore
from engine.workers import LeaseState, lease_state, start_run
from mfm_tui.app import MfmApp, make_app
from mfm_tui.config import store_writable
from mfm_tui.controller import check_spawned, describe_cancel, describe_resume
from mfm_tui.log_index import FileLogSource
from mfm_tui.run_model import LeaseStatus, RunDisplayStatus, lease_status_of
from mfm_tui.screens.confirm import ConfirmDialog
from mfm_tui.screens.dialogs import ErrorDialog
from mfm_tui.screens.diff import ReplayScreen
from mfm_tui.screens.run import RunScreen
from mfm_tui.screens.start import StartScreen
from tests.tui.fixtures import RUN_COMPLETED, RUN_FAILED, RUN_LOST, RUN_RUNNING, afixture_app, settle, wait_until

SIZE = (100, 30)


def fs_app(root: Path, **kwargs: Any) -> tuple[MfmApp, FsStore]:
    store = FsStore(root)
    registry = load_registry()
    app = make_app(
        store,
        registry=registry,
        plan_resolver=registry.plan_resolver(),
        lease_probe=lambda run_id: lease_status_of(lease_state(store, run_id)),
        watch=False,
        **kwargs,
    )
    return app, store


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], *, tries: int = 1200) -> None:
    """Refresh from the store (and the open run screen) until ``predicate()`` holds; bounded (~60 s)."""
    app: Any = pilot.app
    for _ in range(tries):
        await app.sync_store()
        if isinstance(app.screen, RunScreen) and app.screen._model_ready:
            await app.screen.poll()
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"condition never held: {predicate}")


def status(app: Any, run_id: str) -> RunDisplayStatus | None:
    model = app.watcher.models.get(RunId(run_id))
    return None if model is None else model.status


async def confirm(pilot: Pilot[Any]) -> None:
    await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog))
    await pilot.press("y")
    await pilot.pause()


async def start(store: FsStore, op: str, params: dict[str, Any]) -> RunId:
    prepared = await start_run(store, load_registry(), op, params)
    return prepared.run_id


# ------------------------------------------------------------------------------------------ start


async def test_start_from_the_form_runs_to_completion(tmp_path: Path) -> None:
    app, _store = fs_app(tmp_path / "store")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, StartScreen))
        screen = app.screen
        screen.query_one("#start-filter", Input).value = "demo_big"
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        screen.query_one("#param-states", Input).value = "2"
        screen.query_one("#param-events", Input).value = "0"
        screen.query_one("#param-delay_ms", Input).value = "0"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        run_id = app.screen.run_id
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.COMPLETED)
        assert app.screen.model.done == 2


async def test_invalid_parameters_stay_in_the_form_and_write_nothing(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, StartScreen))
        screen = app.screen
        screen.query_one("#start-filter", Input).value = "demo_big"
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        screen.query_one("#param-states", Input).value = "0"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is screen
        assert "greater than or equal to 1" in str(screen.query_one("#param-error-states").render())
        assert await store.events.list_runs() == []
        artifacts = tmp_path / "store" / "artifacts"
        assert not artifacts.exists() or not any(p.is_file() for p in artifacts.rglob("*"))


async def test_a_worker_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        prepared = await start_run(store, load_registry(), "demo_big", {"states": 1}, ops_modules=("no_such_ops_mod",))
        run_id = prepared.run_id
        await until(pilot, lambda: lease_state(store, run_id).state is not LeaseState.HELD)
        assert await check_spawned(app, run_id) is False
        await until(pilot, lambda: isinstance(app.screen, ErrorDialog))
        assert app.screen.code == "worker_failed"
        assert str(store.run_dir(run_id) / "worker.log") in app.screen.message
        assert "no_such_ops_mod" in app.screen.message


# ------------------------------------------------------------------------------------------ cancel, resume, recover


async def test_cancel_during_a_backoff(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    run_id = await start(store, "demo_flaky", {"fail_times": 3, "base_delay_ms": 600_000, "max_delay_ms": 600_000})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.RETRYING)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("c")
        await confirm(pilot)
        await until(pilot, lambda: status(app, run_id) in (RunDisplayStatus.CANCELLING, RunDisplayStatus.CANCELLED))
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.CANCELLED)
        model = app.watcher.models[run_id]
        by_name = {sv.short_name: sv for sv in model.states.values()}
        assert by_name["prepare"].status.is_done and not by_name["call"].status.is_done
        assert len(by_name["call"].attempts) == 1  # the backoff was interrupted: no second attempt


async def test_sigkill_then_resume_from_the_tui(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    run_id = await start(store, "demo_big", {"states": 12, "events": 0, "delay_ms": 150})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: app.watcher.models.get(run_id) is not None and app.watcher.models[run_id].done >= 2)
        pid = lease_state(store, run_id).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.WORKER_LOST)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        await pilot.press("r")
        await confirm(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.COMPLETED)
        assert app.watcher.models[run_id].done == 12


async def test_failed_run_fix_then_resume_continues_in_a_recovery_run(tmp_path: Path) -> None:
    needed = tmp_path / "needed-file"
    app, store = fs_app(tmp_path / "store")
    run_id = await start(store, "demo_fix", {"required_file": str(needed)})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.FAILED)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        needed.write_text("fixed\n")  # the operator fixes the cause outside mfm
        await pilot.press("r")  # two keys: r, y
        await confirm(pilot)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.run_id != run_id)
        recovery = app.screen.run_id
        await until(pilot, lambda: status(app, recovery) is RunDisplayStatus.COMPLETED)
        assert status(app, run_id) is RunDisplayStatus.FAILED  # the failed run keeps its history


# ------------------------------------------------------------------------------------------ replay


async def test_replay_a_completed_run_is_deterministic(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    run_id = await start(store, "demo_big", {"states": 3, "events": 1, "delay_ms": 0})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.COMPLETED)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        await pilot.press("p")
        await confirm(pilot)
        await until(pilot, lambda: isinstance(app.screen, ReplayScreen))
        replay = app.screen
        await until(pilot, lambda: replay.verdict is not None)
        assert replay.verdict is not None and replay.verdict["verdict"] == "deterministic"
        assert replay.has_class("-deterministic")


# ------------------------------------------------------------------------------------------ refusals, read-only


async def test_read_only_refuses_every_control() -> None:
    app = await afixture_app(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        heads = {r: await app.store.events.head_seq(r) for r in app.fixture.run_ids}
        for key in ("s", "c", "r", "p"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is app.screen_stack[0], key
        app.open_run(RUN_RUNNING)
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen))  # one pause was not always enough
        run_screen = app.screen
        for key in ("c", "r", "p"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is run_screen, key
        await wait_until(pilot, lambda: len(app._notifications) >= 7)
        assert all("read-only" in n.message for n in app._notifications)
        assert {r: await app.store.events.head_seq(r) for r in app.fixture.run_ids} == heads
        assert await app.store.events.cancel_request(RUN_RUNNING) is None


async def test_refusals_name_the_reason() -> None:
    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        models = app.watcher.models
        assert describe_cancel(models[RUN_COMPLETED]).refusal[0] == "run_already_finished"  # type: ignore[index]
        assert describe_resume(models[RUN_RUNNING], LeaseStatus.HELD, "pid 7 on h").refusal == (
            "worker_alive",
            f"run {RUN_RUNNING[:8]} has a live worker (pid 7 on h); it is still running: nothing to resume",
        )
        assert describe_resume(models[RUN_FAILED], LeaseStatus.NONE).recovery
        recovered = copy.copy(models[RUN_FAILED])
        recovered.recovered_by = RUN_COMPLETED  # as the store watcher links a recovery run to its failed run
        assert describe_resume(recovered, LeaseStatus.NONE).refusal == (
            "run_already_recovered",
            f"run {RUN_FAILED[:8]} already recovered as {RUN_COMPLETED[:8]}; resume that run instead",
        )
        lost = describe_resume(models[RUN_LOST], LeaseStatus.STALE)
        assert lost.ok and lost.orphans == ("step_0021 attempt 1",)
        app.open_run(RUN_COMPLETED)
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog) and app.screen.code == "run_already_finished"


def test_store_writable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert not store_writable(type("S", (), {"root": ro})()) or os.geteuid() == 0  # root writes anywhere
        assert store_writable(type("S", (), {"root": tmp_path / "new" / "store"})())
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------------------------------ time travel, palette


@pytest.mark.parametrize("kind", ["memory", "fs"])
async def test_time_travel_steps_jumps_and_returns_to_live(kind: str, tmp_path: Path) -> None:
    from mfm_tui.screens.confirm import SeqPrompt

    app = await afixture_app(store=FsStore(tmp_path / "store") if kind == "fs" else None)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.open_run(RUN_COMPLETED)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        screen = app.screen
        assert (kind == "fs") == isinstance(screen.source, FileLogSource)  # fs: only the model's lines are decoded
        last = len(screen.source)
        await pilot.press("left_square_bracket")
        assert screen.as_of == last - 1
        assert screen.view_model.status is RunDisplayStatus.RUNNING  # before RunCompleted
        assert screen.model.status is RunDisplayStatus.COMPLETED  # the live model is untouched
        assert f"as of seq {last - 1} of {last}" in str(screen.query_one("#time-banner").render())
        await pilot.press("right_square_bracket")
        assert screen.as_of is None  # stepping past the end is live again
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, SeqPrompt))
        app.screen.query_one(Input).value = "3"
        await pilot.press("enter")
        await pilot.pause()
        assert screen.as_of == 3 and screen.view_model.done == 1  # fetch completed at seq 3
        await pilot.press("escape")
        assert screen.as_of is None and app.screen is screen


async def test_palette_offers_a_start_entry_per_operation() -> None:
    from textual.command import CommandPalette
    from textual.widgets import OptionList

    app = await afixture_app(registry=load_registry())
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        palette = app.screen
        palette.query_one(Input).value = "start demo_fix"

        def offered() -> list[str]:
            olist = palette.query_one(OptionList)
            return [str(olist.get_option_at_index(i).prompt) for i in range(olist.option_count)]

        await until(pilot, lambda: any("Start demo_fix (s)" in text for text in offered()))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StartScreen))
        await pilot.pause()
        assert app.screen.op is not None and str(app.screen.op.op_id) == "demo_fix"


async def test_a_run_that_finished_meanwhile_is_refused_with_the_reason() -> None:
    from mfm_tui import controller

    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        # the dialog was confirmed for a run that has finished since: the shared action refuses, the reason is shown
        await controller.execute_cancel(app, [RUN_COMPLETED])
        await until(pilot, lambda: isinstance(app.screen, ErrorDialog))
        assert app.screen.code == "run_already_finished"
        assert "nothing to cancel" in app.screen.message


async def test_diverged_replay_jumps_to_the_diff_of_the_state() -> None:
    from mfm_tui.screens.diff import DiffScreen

    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        verdict = {"verdict": "diverged", "diverged_state": "demo.main.join", "phase": "completed"}
        await app.push_screen(ReplayScreen(RUN_COMPLETED, RUN_COMPLETED, verdict_loader=lambda: verdict, poll=False))
        await pilot.pause()
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DiffScreen))
        assert app.screen.title_text == "join: source vs replay"
        ((name, old, new),) = app.screen.sections
        assert name == "context after join" and old == new and old["demo.main.out.join"] == "ok"


async def test_mark_two_runs_then_d_diffs_them() -> None:
    from mfm_tui.screens.diff import DiffScreen

    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        home = app.screen
        await pilot.press("d")
        assert app.screen is home  # nothing marked: a hint, no diff
        await pilot.press("space", "space")
        assert home.marked == {RUN_FAILED, RUN_LOST}  # the cursor moves down after each mark
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DiffScreen))
        assert [name for name, _old, _new in app.screen.sections] == ["final snapshot", "manifest"]
        await pilot.press("escape", "space")
        assert home.marked == {RUN_FAILED, RUN_LOST, home.query_one("RunTable").rows[2].run_id}


async def test_ascii_theme_controller_screens_draw_nothing_outside_ascii() -> None:
    """The monochrome theme promises no Unicode: the start form, a confirmation and a diff keep it too."""
    from engine.operations import load_registry
    from tests.tui.fixtures import RUN_COMPLETED, RUN_FAILED, afixture_app, settle, wait_until

    def text_of(app: Any) -> str:
        return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())

    app = await afixture_app(theme="mfm-ascii", registry=load_registry())
    seen: dict[str, str] = {}
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        seen["start"] = text_of(app)
        await pilot.press("escape")
        await settle(pilot)
        app.open_run(RUN_FAILED)
        await wait_until(pilot, lambda: getattr(app.screen, "_model_ready", False))
        await pilot.press("r")
        await settle(pilot)
        seen["resume"] = text_of(app)
        await pilot.press("escape")
        await settle(pilot)
        app.pop_screen()
        await settle(pilot)
        app.open_run(RUN_COMPLETED)
        await wait_until(pilot, lambda: getattr(app.screen, "_model_ready", False))
        await pilot.press("d")
        await settle(pilot)
        seen["diff"] = text_of(app)
    for name, text in seen.items():
        bad = sorted({ch for ch in text if not ch.isascii()})
        assert bad == [], f"{name}: {bad}"
    assert "demo_side_effect" in seen["start"]
    assert "recovery run" in seen["resume"]
    assert "result vs base" in seen["diff"] and "1 added" in seen["diff"]
