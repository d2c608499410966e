"""The app shell: live store watching, navigation, help and palette, themes, errors that never crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from engine.errors import StorageError
from engine.events import RunCompleted, RunStatus, StateCompleted, StateEntered
from engine.ids import ArtifactId
from engine.stores import MemoryStore
from engine.testing import make_plan
from mfm_tui.app import make_app, store_label
from mfm_tui.glyphs import ASCII, UNICODE
from mfm_tui.run_model import LeaseStatus, PlanShape, RunDisplayStatus
from mfm_tui.screens.dialogs import ErrorDialog
from mfm_tui.screens.help import HelpScreen
from mfm_tui.screens.runs import RunsScreen
from mfm_tui.widgets.run_table import RunTable
from tests.tui import fixtures as fx
from tests.tui.fixtures import FaultyStore, afixture_app, fixture_app, settle, wait_until

SNAP = ArtifactId("5" * 64)


def _rows(app: Any) -> list[str]:
    return [m.run_id for m in app.screen.query_one(RunTable).rows]


def _line(app: Any, run_id: str) -> str:
    table = app.screen.query_one(RunTable)
    row = [m.run_id for m in table.rows].index(run_id) + 1
    return "".join(seg.text for seg in table.render_line(row))


def _finish_running_run() -> list[Any]:
    return [
        StateCompleted(state_id=fx.sid("transform"), context_snapshot_id=SNAP),
        StateEntered(state_id=fx.sid("report"), attempt=0, base_snapshot_id=SNAP),
        StateCompleted(state_id=fx.sid("report"), context_snapshot_id=SNAP),
        RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=SNAP),
    ]


# ------------------------------------------------------------------------------------------ snapshots


def test_snapshot_help_screen(snap_compare: Any) -> None:
    assert snap_compare(fixture_app(), run_before=settle, press=["question_mark"])


def test_snapshot_palette_open(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False
        await pilot.pause()

    assert snap_compare(fixture_app(), run_before=run_before)


def test_snapshot_error_dialog_for_an_unreadable_store(snap_compare: Any) -> None:
    store = FaultyStore(MemoryStore())
    message = "cannot read /srv/mfm/store/changes.log: Permission denied"
    store.events.fail_all = StorageError.other("event_store_io", message)
    assert snap_compare(fixture_app(empty=True, store=store), run_before=settle)


def test_snapshot_corrupted_run_in_place(snap_compare: Any) -> None:
    store = FaultyStore(MemoryStore())
    store.events.bad_runs[fx.RUN_COMPLETED] = StorageError.corruption(
        "machine_event_decode_failed", "event record could not be decoded: line 7"
    )
    assert snap_compare(fixture_app(store=store), run_before=settle)


# ------------------------------------------------------------------------------------------ live updates


async def test_appended_events_appear_while_watching() -> None:
    app = await afixture_app(watch=True)
    async with app.run_test() as pilot:
        await settle(pilot)
        app.watcher.poll_interval = 0.02  # a memory store has no journal file: the timer finds the change
        assert "transform" in _line(app, fx.RUN_RUNNING)
        await app.fixture.append(fx.RUN_RUNNING, _finish_running_run())
        await wait_until(pilot, lambda: app.watcher.models[fx.RUN_RUNNING].status is RunDisplayStatus.COMPLETED)
        await pilot.pause()
        assert "5/5" in _line(app, fx.RUN_RUNNING)
        assert _rows(app)[-3] == fx.RUN_RUNNING  # completed runs sink to the bottom


async def test_new_run_on_top_does_not_move_the_cursor_off_its_run() -> None:
    store = MemoryStore()
    app = await afixture_app(store=store)
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("j", "j", "j")
        table = app.screen.query_one(RunTable)
        chosen = table.cursor_run_id
        assert chosen == fx.RUN_RETRYING
        # A second copy of the failed run's events under a new id lands at the top of the list.
        b = fx.RunBuilder(fx.RunId("0c9d11ab-0000-4000-8000-0000000000ff"), fx.NOW_MILLIS - 1000)
        b.start(fx._manifest("demo_fix", {}))
        b.enter("prepare")
        b.fail("prepare", "boom", "exploded")
        b.finish(RunStatus.FAILED)
        await store.events.append(b.run_id, 0, b.envelopes)
        await app.sync_store()
        await pilot.pause()
        assert _rows(app)[0] == b.run_id
        assert table.cursor_run_id == chosen and table.cursor_row == 4


async def test_a_worker_dying_turns_the_run_into_worker_lost() -> None:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        assert "transform" in _line(app, fx.RUN_RUNNING)
        app.fixture.leases[fx.RUN_RUNNING] = LeaseStatus.STALE
        await app.sync_store()
        await pilot.pause()
        assert app.watcher.models[fx.RUN_RUNNING].status is RunDisplayStatus.WORKER_LOST
        assert "worker lost at transform" in _line(app, fx.RUN_RUNNING)


async def test_fs_store_journal_is_watched(tmp_path: Path) -> None:
    from engine.stores.fs import FsStore

    store = FsStore(tmp_path / "store")
    f = await fx.build_fixture_store(store)
    app = make_app(store, clock=fx.fixture_clock(), lease_probe=f.lease_probe, plan_resolver=f.plan_resolver)
    async with app.run_test() as pilot:
        await settle(pilot)
        app.watcher.poll_interval = 1.0  # watchfiles wakes it at once; the timer is the fallback without inotify
        assert len(_rows(app)) == 9
        await f.append(fx.RUN_RUNNING, _finish_running_run())
        await wait_until(
            pilot, lambda: app.watcher.models[fx.RUN_RUNNING].status is RunDisplayStatus.COMPLETED, tries=500
        )
        assert store_label(store).endswith("store")


# ------------------------------------------------------------------------------------------ errors


async def test_unreadable_store_shows_a_dialog_and_recovers() -> None:
    inner = MemoryStore()
    await fx.build_fixture_store(inner)
    store = FaultyStore(inner)
    store.events.fail_all = StorageError.other("event_store_io", "disk on fire")
    app = await afixture_app(empty=True, store=store)
    async with app.run_test() as pilot:
        await settle(pilot)
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorDialog))
        dialog = app.screen
        assert isinstance(dialog, ErrorDialog) and dialog.code == "event_store_io"
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        summary = str(app.screen.query_one("#runs-summary").render())
        assert "event_store_io" in summary
        store.events.fail_all = None
        await app.sync_store()
        await pilot.pause()
        assert len(_rows(app)) == 9


async def test_corrupted_and_vanished_runs_are_shown_in_place_and_the_rest_keeps_updating() -> None:
    inner = MemoryStore()
    store = FaultyStore(inner)
    app = await afixture_app(store=store)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        store.events.bad_runs[fx.RUN_RUNNING] = StorageError.corruption("machine_event_decode_failed", "bad line 9")
        store.events.hidden.add(fx.RUN_FAILED)
        await app.fixture.append(fx.RUN_RUNNING, _finish_running_run()[:1])
        entered = StateEntered(state_id=fx.sid("call"), attempt=2, base_snapshot_id=SNAP)
        await app.fixture.append(fx.RUN_RETRYING, [entered])
        await app.sync_store()
        await pilot.pause()
        assert not isinstance(app.screen, ErrorDialog)  # per-run problems stay in their rows
        assert "[machine_event_decode_failed] bad line 9" in _line(app, fx.RUN_RUNNING)
        assert "[run_vanished]" in _line(app, fx.RUN_FAILED)
        assert "call 3/5" in _line(app, fx.RUN_RETRYING)
        assert app.watcher.models[fx.RUN_RETRYING].status is RunDisplayStatus.RUNNING
        del store.events.bad_runs[fx.RUN_RUNNING]
        await app.sync_store()
        await pilot.pause()
        assert "[" not in _line(app, fx.RUN_RUNNING)


async def test_a_run_screen_that_fails_to_open_reports_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import mfm_tui.screens as screens  # the app opens runs through this face (the run screen loads on demand)

    def broken(**kwargs: Any) -> Any:
        raise StorageError.not_found("artifact_not_found", "artifact not found: manifest")

    monkeypatch.setattr(screens, "RunScreen", broken)
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorDialog))
        assert app.screen.code == "artifact_not_found"


# ------------------------------------------------------------------------------------------ help, themes


async def test_help_lists_every_binding_of_the_current_screen() -> None:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        entries = app.help_entries(app.screen)
        described = {e.description: (e.keys, e.group) for e in entries}
        assert described["Open the selected run"] == ("⏎", "This screen")
        assert described["Next run"] == ("j ↓", "This screen") or described["Next run"] == ("↓ j", "This screen")
        assert not any("Scroll" in d or "Copy selected text" in d for d in described)
        assert "Next status tab" in described and "Sort by urgency, newest, oldest, op, duration" in described
        assert described["Show every key of this screen"][1] == "Everywhere"
        assert "Command palette: every action" in described
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_palette_offers_the_screen_actions_and_themes() -> None:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Filter (/)" in titles and "Open (⏎)" in titles and "Bottom (end, G)" in titles
        assert "Theme: mfm-ascii" in titles and "Theme" not in titles


async def test_theme_switch_swaps_glyphs_and_unknown_theme_is_refused() -> None:
    app = await afixture_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        assert app.glyphs is UNICODE and _line(app, fx.RUN_FAILED).startswith(" ✗")
        app.theme = "mfm-ascii"
        await pilot.pause()
        await pilot.pause()
        assert app.ascii_only and app.glyphs is ASCII
        assert _line(app, fx.RUN_FAILED).startswith(" x")
        binding = app.screen.query_one(RunTable)._bindings.key_to_bindings["enter"][0]
        assert app.get_key_display(binding) == "enter"
    with pytest.raises(ValueError, match="unknown theme"):
        make_app(MemoryStore(), theme="neon")


def test_store_label_and_plan_resolver_conversion() -> None:
    assert store_label(MemoryStore()) == "memory"

    class _S:
        def meta(self) -> Any:
            from engine.meta import StateMeta

            return StateMeta()

        async def handle(self, ctx: Any, io: Any, rec: Any) -> Any:
            raise NotImplementedError

    plan = make_plan([("a", _S()), ("b", _S())], [("a", "b")])
    app = make_app(MemoryStore(), plan_resolver=lambda manifest: plan)
    shape = app.plan_resolver(None)  # type: ignore[arg-type]
    assert isinstance(shape, PlanShape) and len(shape.state_ids) == 2

    def failing(manifest: Any) -> Any:
        raise KeyError("unknown op")

    assert make_app(MemoryStore(), plan_resolver=failing).plan_resolver(None) is None  # type: ignore[arg-type]


def _screen_text(app: Any) -> str:
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


async def test_ascii_theme_draws_nothing_outside_ascii() -> None:
    store = FaultyStore(MemoryStore())
    app = await afixture_app(store=store, theme="mfm-ascii", read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        seen = {"runs": _screen_text(app)}
        await pilot.press("slash", "x")
        seen["filter"] = _screen_text(app)
        await pilot.press("escape", "question_mark")
        seen["help"] = _screen_text(app)
        await pilot.press("escape", "ctrl+p")
        await pilot.pause(0.3)
        seen["palette"] = _screen_text(app)
        await pilot.press("escape")
        store.events.fail_all = StorageError.other("event_store_io", "gone")
        await app.sync_store()
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorDialog))
        seen["error"] = _screen_text(app)
    for name, text in seen.items():
        bad = sorted({ch for ch in text if not ch.isascii()})
        assert bad == [], f"{name}: {bad}"
    assert "x  0c9d11ab" in seen["runs"] and "+---" in seen["error"]


# ------------------------------------------------------------------------------------------ the watcher alone


class _CountingEvents:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads: list[tuple[str, int]] = []

    async def read_range(self, run_id: Any, from_seq: int, to_seq: int | None = None) -> Any:
        self.reads.append((run_id, from_seq))
        return await self.inner.read_range(run_id, from_seq, to_seq)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_watcher_rereads_only_changed_runs_from_their_last_seq() -> None:
    from mfm_tui.store_watcher import StoreWatcher

    inner = MemoryStore()
    f = await fx.build_fixture_store(inner)
    store = FaultyStore(inner)
    counting = _CountingEvents(store.events)
    store.events = counting  # type: ignore[assignment]
    probed: list[str] = []

    def probe(run_id: Any) -> LeaseStatus:
        probed.append(run_id)
        return f.lease_probe(run_id)

    watcher = StoreWatcher(store, lease_probe=probe, plan_resolver=f.plan_resolver)
    first = await watcher.load()
    assert first.initial and len(first.updated) == 9 and first.errors == []
    assert all(seq == 1 for _run, seq in counting.reads)
    unfinished = {r for r, m in watcher.models.items() if m.engine_status is None}
    assert set(probed) == unfinished  # finished runs have no lease worth probing
    head = watcher.models[fx.RUN_RUNNING].last_seq
    counting.reads.clear()
    await f.append(fx.RUN_RUNNING, _finish_running_run())
    update = await watcher.poll()
    assert counting.reads == [(fx.RUN_RUNNING, head + 1)]
    assert update.grown == {fx.RUN_RUNNING} and update.updated == {fx.RUN_RUNNING}
    assert watcher.models[fx.RUN_RUNNING].total == 5  # the plan shape came with the manifest
    assert not await watcher.poll()  # nothing new: an empty update


async def test_watcher_loop_wakes_on_demand_and_emits() -> None:
    import asyncio

    from mfm_tui.store_watcher import StoreWatcher

    store = MemoryStore()
    f = await fx.build_fixture_store(store)
    watcher = StoreWatcher(store, poll_interval=60.0, min_interval=0.0)
    await watcher.load()
    seen: list[Any] = []
    got = asyncio.Event()

    def emit(update: Any) -> None:
        seen.append(update)
        got.set()

    task = asyncio.ensure_future(watcher.watch(emit))
    try:
        await f.append(fx.RUN_RUNNING, _finish_running_run())
        watcher.wake()
        await asyncio.wait_for(got.wait(), timeout=10)
    finally:
        task.cancel()
    assert seen[0].grown == {fx.RUN_RUNNING}


async def test_watcher_plan_resolvers_may_be_async_or_fail() -> None:
    from mfm_tui.store_watcher import StoreWatcher

    store = MemoryStore()
    await fx.build_fixture_store(store, only=[fx.RUN_RUNNING, fx.RUN_FAILED])

    async def resolver(manifest: Any) -> Any:
        if manifest.op_id == "demo_fix":
            raise LookupError("unknown operation")
        return fx.plan_shape_for(manifest)

    watcher = StoreWatcher(store, plan_resolver=resolver)
    await watcher.load()
    assert watcher.models[fx.RUN_RUNNING].total == 5
    assert watcher.models[fx.RUN_FAILED].total == 2  # states seen in events only


async def test_a_crashing_watcher_is_reported_and_restarted() -> None:
    app = await afixture_app(watch=True)
    real_poll = app.watcher.poll
    calls = {"n": 0}

    async def flaky_poll(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return await real_poll(**kwargs)

    app.watcher.poll = flaky_poll
    app.watcher.poll_interval = 0.02
    app.watch_restart_delay = 0.01
    async with app.run_test() as pilot:
        await settle(pilot)
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorDialog))
        assert app.screen.code == "unexpected_error" and "RuntimeError: boom" in app.screen.message
        await pilot.press("escape")
        await app.fixture.append(fx.RUN_RUNNING, _finish_running_run())
        await wait_until(pilot, lambda: app.watcher.models[fx.RUN_RUNNING].status is RunDisplayStatus.COMPLETED)


@pytest.mark.parametrize("recovery_first", [False, True])
async def test_watcher_marks_a_failed_run_recovered_by_its_recovery_run(recovery_first: bool) -> None:
    """The recovery run's ``recovered_from`` event links back to the failed run, whichever is read first."""
    from engine.events import DomainEvent, EventEnvelope, RunStarted
    from engine.ids import RunId
    from mfm_tui.store_watcher import StoreWatcher
    from mfm_tui.widgets.run_table import now_text

    inner = MemoryStore()
    f = await fx.build_fixture_store(inner, only=[fx.RUN_FAILED])
    failed = f.builders[fx.RUN_FAILED]
    started = failed.envelopes[0].event
    assert isinstance(started, RunStarted)
    recovery = RunId("00000000-0000-4000-8000-00000000ec01")
    link = DomainEvent(name="recovered_from", payload={"source_run_id": fx.RUN_FAILED, "failed_state_id": None})
    envs = [
        EventEnvelope(run_id=recovery, seq=i + 1, ts_millis=fx.NOW_MILLIS, event=ev)
        for i, ev in enumerate([started, link])
    ]
    watcher = StoreWatcher(inner, plan_resolver=f.plan_resolver)
    if recovery_first:
        await inner.events.append(recovery, 0, envs)
        await watcher.load()
    else:
        await watcher.load()
        assert now_text(watcher.models[fx.RUN_FAILED], fx.NOW_MILLIS) == "check [needs_file]"
        await inner.events.append(recovery, 0, envs)
        update = await watcher.poll()
        assert fx.RUN_FAILED in update.updated
    assert watcher.models[recovery].recovered_from == fx.RUN_FAILED
    assert watcher.models[fx.RUN_FAILED].recovered_by == recovery
    assert now_text(watcher.models[fx.RUN_FAILED], fx.NOW_MILLIS) == "recovered as 00000000"


async def test_fs_store_journal_is_watched_not_polled(tmp_path: Path) -> None:
    """Issue 15, idle: with the timer far away, an append is still seen at once: the journal is watched."""
    from engine.stores.fs import FsStore

    store = FsStore(tmp_path / "store")
    f = await fx.build_fixture_store(store)
    app = make_app(store, clock=fx.fixture_clock(), lease_probe=f.lease_probe, plan_resolver=f.plan_resolver)
    app.watcher.poll_interval = 3600.0
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.pause(0.2)  # the watcher's loop is waiting
        await f.append(fx.RUN_RUNNING, _finish_running_run())
        await wait_until(
            pilot, lambda: app.watcher.models[fx.RUN_RUNNING].status is RunDisplayStatus.COMPLETED, tries=500
        )
