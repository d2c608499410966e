"""Operator actions added for issue 14 ("Add: what operators rely on"): retry now, the workers view, the logs view,
`:` jumps, the attempt timeline, re-run with edited parameters, the shell, and the notice of new failures.

Fixture-store tests run on the frozen clock; the end-to-end ones use a temporary filesystem store with real detached
workers and bounded waits that refresh from the store (they fail instead of hanging; nothing asserts on time).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from textual.widgets import Log

from engine.errors import StateError
from engine.events import RunCompleted, RunStatus, StateFailed
from engine.ids import RunId
from engine.stores.fs import FsStore
from engine.workers import LeaseState, WorkerLease, lease_state
from mfm_tui import shell
from mfm_tui.log_tail import INITIAL_BYTES, LogTail
from mfm_tui.run_model import AttemptView, LeaseStatus, RunDisplayStatus, StateStatus, StateView
from mfm_tui.screens.confirm import ConfirmDialog
from mfm_tui.screens.dialogs import ErrorDialog
from mfm_tui.screens.jump import JumpPrompt, resolve_jump
from mfm_tui.screens.logs import LogsScreen
from mfm_tui.screens.run import RunScreen
from mfm_tui.screens.start import StartScreen
from mfm_tui.screens.timeline import TimelineScreen
from mfm_tui.screens.workers import WorkersScreen
from mfm_tui.widgets.param_form import ParamForm
from mfm_tui.widgets.timeline import AttemptTimeline, timeline_segments, timeline_text
from tests.tui.fixtures import (
    NOW_MILLIS,
    RUN_CANCELLING,
    RUN_COMPLETED,
    RUN_FANOUT,
    RUN_LOST,
    RUN_RETRYING,
    RUN_RUNNING,
    afixture_app,
    settle,
    sid,
)
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


# ------------------------------------------------------------------------------------------ workers view


def fixture_leases() -> list[WorkerLease]:
    """Leases over the fixture runs: a lost worker (filesystem lock free), two live ones, a pool worker with a
    heartbeat, and a queued run."""
    return [
        WorkerLease(RUN_RUNNING, LeaseState.HELD, 4101, "ops-1", NOW_MILLIS - 12_000, None, "run"),
        WorkerLease(RUN_LOST, LeaseState.STALE, 3977, "ops-2", NOW_MILLIS - 540_000, None, "run"),
        WorkerLease(RUN_RETRYING, LeaseState.HELD, 4150, "pool-a", NOW_MILLIS - 40_000, 1_800, "start"),
        WorkerLease(RUN_FANOUT, LeaseState.STALE, 4188, "pool-b", NOW_MILLIS - 21_000, 95_000, "resume"),
        WorkerLease(RUN_CANCELLING, LeaseState.HELD, None, None, None, None, "queued"),
    ]


async def fake_source() -> list[WorkerLease]:
    return fixture_leases()


def test_worker_rows_put_stale_first_and_say_how_liveness_is_known() -> None:
    from mfm_tui.screens.workers import worker_rows

    rows = worker_rows(fixture_leases(), {}, NOW_MILLIS)
    assert [r.run_id for r in rows[:2]] == [RUN_LOST, RUN_FANOUT]  # stale first, longest held first
    by_run = {r.run_id: r.cells for r in rows}
    assert by_run[RUN_LOST][0] == "! stale" and by_run[RUN_LOST][6] == "lock free"
    assert by_run[RUN_RUNNING][0] == "live" and by_run[RUN_RUNNING][6] == "lock held"
    assert by_run[RUN_RETRYING][6] == "1.8s ago" and by_run[RUN_RETRYING][4:6] == ("pool-a", "4150")
    assert by_run[RUN_FANOUT][6] == "1m35s ago" and by_run[RUN_FANOUT][0] == "! stale"
    assert by_run[RUN_CANCELLING][0] == "queued" and by_run[RUN_CANCELLING][5] == "-"
    assert [r.flag for r in rows] == ["!", "!", "", "", ""]


async def test_workers_view_lists_leases_and_enter_opens_the_run() -> None:
    app = await afixture_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.push_screen(WorkersScreen(source=fake_source))
        await until(pilot, lambda: isinstance(app.screen, WorkersScreen) and bool(app.screen.rows))
        screen: Any = app.screen
        assert screen.rows[0].run_id == RUN_LOST
        title = str(screen.query_one("#workers-title").render())
        assert "3 live" in title and "2 stale" in title
        assert "step_0021" in screen.rows[0].cells  # the run's current state, from the app's models
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.screen.run_id == RUN_LOST  # type: ignore[attr-defined]


async def test_w_opens_the_workers_view_which_says_when_a_store_has_no_workers() -> None:
    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, WorkersScreen) and app.screen.error is not None)
        assert "runs no worker processes" in str(app.screen.query_one("#workers-note").render())


async def test_workers_view_on_a_filesystem_store_shows_the_live_worker(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    run_id = await start(store, "demo_flaky", {"fail_times": 3, "base_delay_ms": 600_000, "max_delay_ms": 600_000})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.RETRYING)
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, WorkersScreen) and bool(app.screen.rows))
        (row,) = app.screen.rows  # type: ignore[attr-defined]
        info = lease_state(store, RunId(run_id))
        assert row.run_id == run_id and row.cells[5] == str(info.pid) and row.cells[4] == info.host
        assert row.cells[3] == "call" and row.cells[6] == "lock held"
        await pilot.press("escape")
        await pilot.press("colon")
        await until(pilot, lambda: isinstance(app.screen, JumpPrompt))
        await pilot.press(*run_id[:6], "enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("c")
        await confirm(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.CANCELLED)


# ------------------------------------------------------------------------------------------ : jumps


def test_resolve_jump() -> None:
    runs = [RUN_RUNNING, RUN_RETRYING, "a8000000-0000-4000-8000-000000000000"]
    assert resolve_jump("workers", runs).view == "workers" and resolve_jump(":w", runs).view == "workers"
    assert resolve_jump("runs", runs).view == "runs"
    assert resolve_jump("3f2a", runs).run_id == RUN_RUNNING
    assert resolve_jump("a8", runs).error[0] == "run_id_ambiguous"  # type: ignore[index]
    assert resolve_jump("zzz", runs).error[0] == "run_not_found"  # type: ignore[index]
    assert resolve_jump("  ", runs).error[0] == "usage"  # type: ignore[index]


async def test_colon_jumps_between_views_and_to_a_run_by_prefix() -> None:
    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)

        async def jump(text: str) -> None:
            await pilot.press("colon")
            await until(pilot, lambda: isinstance(app.screen, JumpPrompt))
            await pilot.press(*text, "enter")
            await pilot.pause()

        await jump(RUN_RETRYING[:4])
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.screen.run_id == RUN_RETRYING  # type: ignore[attr-defined]
        await jump("workers")
        await until(pilot, lambda: isinstance(app.screen, WorkersScreen))
        await jump("runs")
        await until(pilot, lambda: len(app.screen_stack) == 1)
        await jump("nope")
        await until(pilot, lambda: isinstance(app.screen, ErrorDialog))
        assert app.screen.code == "run_not_found"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ logs view


async def test_log_tail_starts_at_the_end_of_a_100_mb_log_and_then_follows(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    with open(path, "wb") as f:
        f.truncate(100 * 1024 * 1024)  # 100 MB (sparse), then the lines a reader wants: the last ones
        f.seek(0, 2)
        f.write(b"".join(b"line %d\n" % i for i in range(1000)))
    tail = LogTail(str(path))
    first = await tail.read_new()
    assert first.lines[-1] == "line 999" and first.skipped > 100 * 1024 * 1024 - INITIAL_BYTES
    assert tail.bytes_read <= INITIAL_BYTES  # the first screen costs the tail, never the file
    with open(path, "ab") as f:
        f.write(b"line 1000\nhalf a li")
    assert (await tail.read_new()).lines == ["line 1000"]  # a partial line waits for its newline
    with open(path, "ab") as f:
        f.write(b"ne\n")
    assert (await tail.read_new()).lines == ["half a line"]
    assert (await tail.read_new()).lines == []
    path.write_bytes(b"rotated\n")  # truncated and rewritten
    again = await tail.read_new()
    assert again.reset and again.lines == ["rotated"]


async def test_logs_view_follows_pauses_with_new_count_and_switches_sources(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    app = await afixture_app(store=store)
    folder = tmp_path / "store" / "runs" / RUN_RUNNING
    (folder / "worker.log").write_text("".join(f"worker line {i}\n" for i in range(60)))
    (folder / "exec.stderr").write_text("fetch#1 fetch: measuring 3 word(s)\n")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.open_run(RUN_RUNNING)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        await pilot.press("L")
        await until(pilot, lambda: isinstance(app.screen, LogsScreen))
        screen: Any = app.screen
        log = screen.query_one(Log)
        await until(pilot, lambda: log.line_count == 60)
        assert log.lines[-1] == "worker line 59" and screen.follow
        with open(folder / "worker.log", "a") as f:
            f.write("worker line 60\n")
        screen.poll()
        await until(pilot, lambda: log.line_count == 61)
        await pilot.press("k")  # scrolling up pauses following
        assert not screen.follow
        with open(folder / "worker.log", "a") as f:
            f.write("a\nb\nc\n")
        screen.poll()
        await until(pilot, lambda: "+3 new" in str(screen.query_one("#logs-title").render()))
        assert screen.new_while_paused == 3
        await pilot.press("G")
        assert screen.follow and "new" not in str(screen.query_one("#logs-title").render())
        await pilot.press("3")
        await until(pilot, lambda: log.line_count == 1)
        assert log.lines == ["fetch#1 fetch: measuring 3 word(s)"]
        await pilot.press("2")
        assert log.line_count == 0 and "(empty so far)" in str(screen.query_one("#logs-title").render())


async def test_logs_view_on_a_store_without_files_says_so() -> None:
    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.push_screen(LogsScreen(RUN_RUNNING))
        await until(pilot, lambda: isinstance(app.screen, LogsScreen))
        await pilot.pause()
        assert "not a filesystem store" in str(app.screen.query_one("#logs-title").render())


async def test_logs_view_follows_a_real_demo_pipeline(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    run_id = await start(store, "demo_pipeline", {"words": ["ab", "cde"], "exec_seconds": 1})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: status(app, run_id) is not None)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("L")
        await until(pilot, lambda: isinstance(app.screen, LogsScreen))
        screen: Any = app.screen
        await pilot.press("3")

        def stderr_done() -> bool:
            screen.poll()
            return "fetch#1 fetch: done" in screen.query_one(Log).lines

        await until(pilot, stderr_done)
        assert screen.query_one(Log).lines[0] == "fetch#1 fetch: measuring 2 word(s) after 1s"


# ------------------------------------------------------------------------------------------ attempt timeline


def test_timeline_segments_show_attempts_backoff_gaps_and_orphans() -> None:
    sv = StateView(sid("call"), status=StateStatus.RETRYING, max_attempts=5, not_before_millis=10_000)
    sv.attempts = [
        AttemptView(0, 1, 0, None, terminal_seq=2, terminal_millis=400, error_code="http_503", error_message="down"),
        AttemptView(1, 4, 4_400, None, terminal_seq=5, terminal_millis=5_000, error_code="orphan_attempt_recovered"),
        AttemptView(2, 7, 8_000, None, terminal_seq=8, terminal_millis=8_500, error_code="http_503"),
    ]
    segs = timeline_segments(sv, now_millis=9_000)
    assert [(s.kind.value, s.millis) for s in segs] == [
        ("failed", 400),
        ("wait", 4_000),
        ("orphan", 600),
        ("wait", 3_000),
        ("failed", 500),
        ("wait", 1_500),
    ]
    assert segs[3].note == "until the resume" and segs[-1].note == "next attempt due"
    text = timeline_text(sv, 9_000, width=40, ascii_only=True).plain
    bar = text.splitlines()[1]
    assert set(bar) == {"x", ".", "!"} and len(bar) <= 40
    assert "#2   orphan" in text and "wait    4.0s  backoff" in text and "[http_503] down" in text
    assert text.isascii()


async def test_t_shows_the_selected_states_attempt_timeline() -> None:
    app = await afixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.open_run(RUN_RETRYING)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        run_screen: Any = app.screen
        run_screen.selected = sid("call")
        await pilot.press("T")
        await until(pilot, lambda: isinstance(app.screen, TimelineScreen))
        await pilot.pause()
        shown = str(app.screen.query_one(AttemptTimeline).render())
        assert "2 attempt(s)" in shown and "#1" in shown and "#2" in shown and "next attempt due" in shown
        await pilot.press("escape")
        assert app.screen is run_screen


# ------------------------------------------------------------------------------------------ re-run with edited params


async def test_rerun_opens_the_start_form_prefilled_from_the_manifest_and_starts_the_edited_run(tmp_path: Path) -> None:
    app, store = fs_app(tmp_path / "store")
    params = {"fail_times": 0, "base_delay_ms": 5, "max_delay_ms": 50, "max_attempts": 2}
    run_id = await start(store, "demo_flaky", params)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.COMPLETED)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.model.manifest is not None)
        await pilot.press("E")
        await until(pilot, lambda: isinstance(app.screen, StartScreen) and bool(app.screen.query(ParamForm)))
        form = app.screen.query_one(ParamForm)
        await pilot.pause()
        assert form.values()["base_delay_ms"] == "5" and form.values()["max_attempts"] == "2"
        assert "Re-run demo_flaky of run" in str(app.screen.query_one("#start-title").render())
        form.set_value("max_delay_ms", "70")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.run_id != run_id)
        new_id = app.screen.run_id  # type: ignore[attr-defined]
        await until(pilot, lambda: status(app, new_id) is RunDisplayStatus.COMPLETED)
        model = app.watcher.models[new_id]
        assert model.manifest is not None
        assert model.manifest.input_params == {**params, "max_delay_ms": 70}


# ------------------------------------------------------------------------------------------ new failures


async def test_a_run_that_fails_while_another_screen_is_open_gets_a_notice_and_the_bell() -> None:
    app = await afixture_app()
    rings: list[int] = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.bell = lambda: rings.append(1)  # type: ignore[method-assign]
        assert app.notices == []  # the failures already in the store at start are not news
        app.open_run(RUN_COMPLETED)
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        err = StateError.new("http_500", "upstream exploded", retryable=False, state_id=sid("transform"))
        await app.fixture.append(
            RUN_RUNNING,
            [
                StateFailed(state_id=sid("transform"), error=err),
                RunCompleted(status=RunStatus.FAILED, final_snapshot_id=None),
            ],
        )
        await app.sync_store()
        await until(pilot, lambda: bool(app.notices))
        assert app.notices == [f"run {RUN_RUNNING[:8]} demo_pipeline failed: [http_500] upstream exploded"]
        assert rings == [1]
        assert any("upstream exploded" in str(n.message) for n in app._notifications)
        await app.sync_store()  # the same failure is news once
        await pilot.pause()
        assert len(app.notices) == 1 and rings == [1]
        app.bell_on_failure = False
        app.fixture.leases[RUN_RETRYING] = LeaseStatus.STALE  # its worker is lost
        await app.fixture.append(RUN_RETRYING, [])
        await app.sync_store()
        await until(pilot, lambda: len(app.notices) == 2)
        assert "lost its worker" in app.notices[-1] and rings == [1]


# ------------------------------------------------------------------------------------------ shell


async def test_shell_in_the_run_folder_then_refresh_and_offer_resume(tmp_path: Path, monkeypatch: Any) -> None:
    """Fix without leaving: `!` suspends into $SHELL in the run's folder; the fix made there (the missing file)
    is followed by the resume offer, and the recovery run completes."""
    app, store = fs_app(tmp_path / "store")
    needed = tmp_path / "needed-file"
    run_id = await start(store, "demo_fix", {"required_file": str(needed)})
    ran: list[shell.ShellCommand] = []

    def fake_shell(command: shell.ShellCommand) -> int:
        ran.append(command)
        needed.write_text("fixed")  # what the operator does in the shell
        return 0

    monkeypatch.setattr(shell, "run_shell", fake_shell)
    monkeypatch.setenv("SHELL", "/bin/bash")
    monkeypatch.setattr(app, "suspend", contextlib.nullcontext)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: status(app, run_id) is RunDisplayStatus.FAILED)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        await pilot.press("exclamation_mark")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        (command,) = ran
        assert command.argv == ("/bin/bash",) and command.cwd == str(store.run_dir(RunId(run_id)))
        assert command.env["MFM_RUN_ID"] == run_id and command.env["MFM_STORE"] == str(store.root)
        assert "Resume failed run" in app.screen.body  # type: ignore[attr-defined]
        await pilot.press("y")
        recovery = lambda: app.watcher.models[RunId(run_id)].recovered_by  # noqa: E731
        await until(pilot, lambda: recovery() is not None and status(app, recovery()) is RunDisplayStatus.COMPLETED)


def test_shell_command_outside_a_filesystem_store_keeps_the_folder_and_sets_the_run() -> None:
    command = shell.shell_command(object(), RunId(RUN_RUNNING), {"PATH": "/bin"})
    assert command.argv == ("/bin/sh",) and command.env == {"PATH": "/bin", "MFM_RUN_ID": RUN_RUNNING}
