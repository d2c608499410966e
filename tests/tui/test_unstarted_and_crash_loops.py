"""The TUI over a real filesystem store: a run whose worker died before ``RunStarted`` is in the runs list ("not
started: worker lost"), and a crash-looping run says so in the runs list and in its run screen's header."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from engine.errors import StateError
from engine.events import EventEnvelope, RunStarted, StateCompleted, StateEntered, StateFailed
from engine.ids import RunId, StateId
from engine.operations import load_registry, prepare_run
from engine.stores import ArtifactKind
from engine.stores.fs import FsStore
from engine.workers import (
    CODE_ORPHAN_RECOVERED,
    Lease,
    LeaseState,
    discard_run,
    lease_state,
    start_run,
    write_pending,
)
from mfm_tui.app import make_app
from mfm_tui.run_model import RunDisplayStatus, lease_status_of
from mfm_tui.screens.run import RunScreen
from mfm_tui.widgets.run_table import RunTable
from tests.tui.fixtures import fixture_clock, settle

CRASH_OPS = str(Path(__file__).resolve().parents[1] / "crash_ops.py")
SIZE = (120, 30)


def _line(app: Any, run_id: str) -> str:
    table = app.screen.query_one(RunTable)
    row = [m.run_id for m in table.rows].index(run_id) + 1
    return "".join(seg.text for seg in table.render_line(row))


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], *, tries: int = 600) -> None:
    app: Any = pilot.app
    for _ in range(tries):
        await app.sync_store()
        if isinstance(app.screen, RunScreen) and app.screen._model_ready:
            await app.screen.poll()
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("gave up waiting")


async def _crash_looping_run(store: FsStore, registry: Any, gate: Path, run: RunId | None = None) -> RunId:
    """A run of ``crash_loop`` whose worker died in ``boom`` four times, resumed three times (written directly)."""
    prepared = await prepare_run(
        store.stores, registry, "crash_loop", {"gate": str(gate)}, run_id=run or RunId.new_v4()
    )
    run = prepared.run_id
    snap = await store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, b"{}")
    start = RunStarted(op_id=prepared.manifest.op_id, manifest_id=prepared.manifest_id, initial_snapshot_id=snap)
    prep, boom = StateId("machine.main.prepare"), StateId("machine.main.boom")
    events: list[Any] = [start, StateEntered(state_id=prep, attempt=0, base_snapshot_id=snap)]
    events.append(StateCompleted(state_id=prep, context_snapshot_id=snap))
    orphan = StateError.new(CODE_ORPHAN_RECOVERED, "orphaned state attempt recovered during resume", retryable=True)
    for attempt in range(4):
        if attempt:
            events.append(StateFailed(state_id=boom, error=orphan))
        events.append(StateEntered(state_id=boom, attempt=attempt, base_snapshot_id=snap))
    t0 = fixture_clock().now_millis() - 95_000
    await store.events.append(
        run, 0, [EventEnvelope(run_id=run, seq=i + 1, ts_millis=t0 + 9_000 * i, event=e) for i, e in enumerate(events)]
    )
    Lease.acquire(store, run, "resume").release()  # its last worker died: the lease is free
    return run


async def test_runs_that_never_started_and_crash_looping_runs_are_in_the_runs_list(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    registry = load_registry([CRASH_OPS], entry_points=False)
    gate = tmp_path / "gate"
    looping = await _crash_looping_run(store, registry, gate)
    app = make_app(
        store,
        registry=registry,
        plan_resolver=registry.plan_resolver(),
        lease_probe=lambda run_id: lease_status_of(lease_state(store, run_id)),
        watch=False,
        ops_modules=(CRASH_OPS,),
    )
    async with app.run_test(size=SIZE) as pilot:
        # Started while the app watches: its worker dies before RunStarted. It has no events, yet it is listed.
        lost = await start_run(store, registry, "die_before_start", {"gate": str(gate)}, ops_modules=(CRASH_OPS,))
        lost_id = lost.run_id
        await until(pilot, lambda: lease_state(store, lost_id).state is LeaseState.STALE)
        # (sync_store rescans the store: the journal never names a run that has no events)
        await until(pilot, lambda: lost_id in app.watcher.models)
        await until(pilot, lambda: app.watcher.models[lost_id].status is RunDisplayStatus.NOT_STARTED)
        await pilot.pause()
        assert "die_before_start" in _line(app, lost_id) and "not started: worker lost" in _line(app, lost_id)

        model = app.watcher.models[looping]
        assert model.status is RunDisplayStatus.CRASH_LOOPING and model.status_label == "crash-looping at boom"
        assert "crash-looping at boom, 3 in a row" in _line(app, looping)
        table = app.screen.query_one(RunTable)
        assert [m.run_id for m in table.rows][:2] == [looping, lost_id]  # the most urgent first

        await discard_run(store, lost_id)  # `mfm discard` from another terminal: the row goes, no error
        await until(pilot, lambda: lost_id not in app.watcher.models)
        await pilot.pause()
        assert lost_id not in [m.run_id for m in table.rows]

        app.open_run(looping)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        header = str(app.screen.query_one("#run-header").render())
        assert "crash-looping at boom" in header and "3 orphan recoveries in a row" in header


# -- snapshots --------------------------------------------------------------------------------------------------

LOOPING = RunId("00000000-0000-4000-8000-00000000c100")
NEVER = RunId("00000000-0000-4000-8000-00000000c200")


def _snapshot_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Both kinds of run in a filesystem store under a fixed-looking ``~/store``, fixed ids, a frozen clock."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MFM_MAX_ORPHAN_RECOVERIES", raising=False)
    store = FsStore(tmp_path / "store")
    registry = load_registry([CRASH_OPS], entry_points=False)
    gate = Path("/nonexistent/mfm-snapshot-gate")

    async def build() -> None:
        await _crash_looping_run(store, registry, gate, LOOPING)
        never = await prepare_run(store.stores, registry, "die_before_start", {"gate": str(gate)}, run_id=NEVER)
        Lease.acquire(store, NEVER, "run").release()
        write_pending(store, NEVER, never.manifest_id)

    asyncio.run(build())
    return make_app(
        store,
        registry=registry,
        plan_resolver=registry.plan_resolver(),
        lease_probe=lambda run_id: lease_status_of(lease_state(store, run_id)),
        watch=False,
        clock=fixture_clock(),
    )


def test_snapshot_runs_list_with_a_crash_looping_run_and_one_that_never_started(
    snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert snap_compare(_snapshot_app(tmp_path, monkeypatch), run_before=settle, terminal_size=(100, 12))


def test_snapshot_run_screen_of_a_crash_looping_run(
    snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _snapshot_app(tmp_path, monkeypatch)

    async def before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        app.open_run(LOOPING)
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen._model_ready)
        await pilot.pause()

    assert snap_compare(app, run_before=before, terminal_size=(120, 30))
