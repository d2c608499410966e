"""Artifact viewers: manifest, context snapshot and exec fact snapshots; errors shown in place; copy via OSC 52."""

from __future__ import annotations

import asyncio
from typing import Any

from textual.pilot import Pilot
from textual.widgets import TabbedContent, Tree

from engine.events import DomainEvent, RunStarted, StateCompleted
from engine.stores import MemoryStore
from mfm_tui.clipboard import MAX_OSC52_BYTES, osc52_sequence
from mfm_tui.screens.artifact import ArtifactEntry, ArtifactScreen, exec_parts
from mfm_tui.widgets.json_tree import JsonTree
from tests.tui.fixtures import RUN_FANOUT, RUN_RUNNING, FixtureStore, build_fixture_store
from tests.tui.test_run_screen import open_screen, run_app, settle

SMALL = (80, 24)
LARGE = (120, 40)


def _manifest_id(fx: FixtureStore, run_id: str) -> str:
    ev = fx.builders[run_id].envelopes[0].event  # type: ignore[index]
    assert isinstance(ev, RunStarted)
    return str(ev.manifest_id)


def _fact_id(fx: FixtureStore, run_id: str, key: str) -> str:
    for env in fx.builders[run_id].envelopes:  # type: ignore[index]
        ev = env.event
        if isinstance(ev, DomainEvent) and isinstance(ev.payload, dict) and ev.payload.get("key") == key:
            return str(ev.payload["payload_id"])
    raise AssertionError(key)


def _result_id(fx: FixtureStore, run_id: str, local: str) -> str:
    for env in fx.builders[run_id].envelopes:  # type: ignore[index]
        ev = env.event
        if isinstance(ev, StateCompleted) and ev.state_id.endswith(local):
            return str(ev.context_snapshot_id)
    raise AssertionError(local)


def _snap(snap_compare: Any, build: Any, size: tuple[int, int], keys: tuple[str, ...] = ()) -> None:
    fx = asyncio.run(build_fixture_store(MemoryStore()))
    app, _ = run_app(fx, RUN_RUNNING)
    screen = ArtifactScreen(fx.store, build(fx))

    async def before(pilot: Pilot[None]) -> None:
        await open_screen(pilot, screen)
        for key in keys:
            await pilot.press(key)
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=before)


def test_snapshot_manifest(snap_compare: Any) -> None:
    _snap(snap_compare, lambda fx: [ArtifactEntry("manifest", _manifest_id(fx, RUN_RUNNING), "Manifest")], LARGE)


def test_snapshot_manifest_raw_small(snap_compare: Any) -> None:
    _snap(
        snap_compare, lambda fx: [ArtifactEntry("manifest", _manifest_id(fx, RUN_RUNNING), "Manifest")], SMALL, ("2",)
    )


def test_snapshot_context_snapshot_in_list(snap_compare: Any) -> None:
    def entries(fx: FixtureStore) -> list[ArtifactEntry]:
        return [
            ArtifactEntry("fetch result", _result_id(fx, RUN_RUNNING, "fetch"), "ContextSnapshot"),
            ArtifactEntry("manifest", _manifest_id(fx, RUN_RUNNING), "Manifest"),
        ]

    _snap(snap_compare, entries, LARGE)


def test_snapshot_exec_fact(snap_compare: Any) -> None:
    _snap(
        snap_compare,
        lambda fx: [ArtifactEntry("fact exec:fetch#1", _fact_id(fx, RUN_RUNNING, "exec:fetch#1"), "FactPayload")],
        SMALL,
    )


def test_snapshot_missing_artifact(snap_compare: Any) -> None:
    _snap(snap_compare, lambda fx: [ArtifactEntry("result", "e" * 64, "ContextSnapshot")], SMALL)


def test_exec_parts_detects_exec_payloads() -> None:
    assert exec_parts({"exit_code": 1, "stderr": "x", "other": 2}) == {"exit_code": 1, "stderr": "x"}
    assert exec_parts({"rows": 3}) is None
    assert exec_parts([1, 2]) is None


def test_osc52_sequence_and_tmux_passthrough() -> None:
    assert osc52_sequence("hi") == "\x1b]52;c;aGk=\a"
    wrapped = osc52_sequence("hi", tmux=True)
    assert wrapped.startswith("\x1bPtmux;\x1b\x1b]52;c;aGk=") and wrapped.endswith("\x1b\\")


async def test_exec_fact_has_exit_stdout_stderr_tabs_and_y_copies_json() -> None:
    fx = await build_fixture_store(MemoryStore())
    pid = _fact_id(fx, RUN_RUNNING, "exec:fetch#1")
    screen = ArtifactScreen(fx.store, [ArtifactEntry("fact", pid, "FactPayload")])
    app, _ = run_app(fx, RUN_RUNNING)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, screen)
        tabs = screen.query_one(TabbedContent)
        assert [p.id for p in tabs.query("TabPane")] == ["exit", "tree", "raw", "stdout", "stderr"]
        assert screen.value == {"exit_code": 0, "stdout": '{"rows": 3}\n', "stderr": "warning: slow disk\n"}
        await pilot.press("y")
        assert app.clipboard is not None and '"exit_code": 0' in app.clipboard
        await pilot.press("Y")
        assert app.clipboard == pid


async def test_corrupted_artifact_shows_code_and_message_in_place() -> None:
    fx = await build_fixture_store(MemoryStore())
    mid = _manifest_id(fx, RUN_RUNNING)
    fx.store.artifacts._blobs[mid] = b'{"tampered":true}'  # bytes no longer match the id
    screen = ArtifactScreen(fx.store, [ArtifactEntry("manifest", mid, "Manifest"), ArtifactEntry("bad", "XYZ")])
    app, _ = run_app(fx, RUN_RUNNING)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, screen)
        assert screen.error is not None and screen.error[0] == "artifact_content_address_mismatch"
        assert "artifact_content_address_mismatch" in str(screen.query_one("#artifact-error").render())
        await pilot.press("down")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert screen.error is not None and screen.error[0] in ("artifact_not_found", "artifact_id_invalid")


async def test_a_on_the_run_screen_lists_state_and_run_artifacts() -> None:
    fx = await build_fixture_store(MemoryStore())
    app, run_screen = run_app(fx, RUN_FANOUT)
    async with app.run_test(size=LARGE) as pilot:
        await open_screen(pilot, run_screen)
        labels = [e.label for e in run_screen.artifact_entries()]
        assert "manifest" in labels and "checkpoint" in labels and "item_2 base" in labels
        await pilot.press("a")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert isinstance(app.screen, ArtifactScreen)
        assert app.screen.value is not None
        assert app.screen.query_one(JsonTree).root.children
        await pilot.press("escape")
        assert app.screen is run_screen


async def test_json_tree_loads_big_containers_lazily() -> None:
    fx = await build_fixture_store(MemoryStore())
    value = {"items": list(range(1000)), "nested": {"a": {"b": [True, None, "x"]}}}
    app, _ = run_app(fx, RUN_RUNNING)
    async with app.run_test(size=SMALL) as pilot:
        await open_screen(pilot, ArtifactScreen(fx.store, []))
        tree = JsonTree(value, "doc")
        await app.screen.mount(tree)
        await settle(pilot)
        items = tree.root.children[0]
        assert len(items.children) == 201  # 200 shown + "… 800 more"
        more = items.children[-1]
        tree.focus()
        items.expand()
        await settle(pilot)
        tree.select_node(more)
        await settle(pilot)
        assert len(items.children) == 1000
        assert isinstance(tree, Tree)
    assert MAX_OSC52_BYTES >= 100_000
