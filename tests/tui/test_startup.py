"""The TUI's start (issue 15): what its first paint imports, and what the runs list keeps per run.

``mfm tui`` used to import the whole engine (its runtime, executor, workers, every operation) and every screen before
the runs list could paint; and the list made a view for every planned state of every run (10,000 runs of a 20-state
plan: 200,000 pending views). These tests hold the lighter start: the deferred modules are checked in a fresh
interpreter (``sys.modules``), and the views are counted.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from textual.app import App

import mfm_tui.run_model.fold as fold
from engine.ids import StateId
from engine.stores.fs import FsStore
from mfm_tui.app import make_app
from mfm_tui.run_model import PlanShape, StateView
from mfm_tui.screens.run import RunScreen
from mfm_tui.store_watcher import StoreWatcher
from tests.tui.fixtures import RUN_RUNNING, build_fixture_store, fixture_clock, wait_until

ROOT = Path(__file__).resolve().parents[2]

DEFERRED = (
    "engine.runtime",
    "engine._runtime.executor",
    "engine._runtime.scheduler",
    "engine.workers.actions",
    "engine.workers.launcher",
    "engine.workers.run",
    "engine.child_runs",
    "engine.demo_ops",
    "engine.process_exec",
    "engine.exec_transport",
    "mfm_tui.screens.run",
    "mfm_tui.screens.start",
    "mfm_tui.screens.workers",
    "mfm_tui.screens.diff",
    "mfm_tui.commands",
    "mfm_tui.cli.control",
    "mfm_tui.cli.read",
    "mfm_tui.cli.doctor",
)
"""Modules the runs list's first paint does without (imported later, on demand)."""


def _fresh(code: str) -> Any:
    """Run ``code`` in a fresh interpreter of this checkout (from its root); its last stdout line, as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bench() -> ModuleType:
    """bench/tui.py: its direct store writer makes thousands of runs in a second."""
    spec = importlib.util.spec_from_file_location("mfm_bench_tui_startup", ROOT / "bench" / "tui.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_importing_the_cli_and_the_app_leaves_the_runtime_and_the_later_screens_unimported() -> None:
    loaded = _fresh(
        "import json, sys; import mfm_tui.cli, mfm_tui.app; "
        f"print(json.dumps([m for m in {list(DEFERRED)!r} if m in sys.modules]))"
    )
    assert loaded == []


def test_the_deferred_names_still_resolve_where_they_did() -> None:
    """``from engine import X``, ``engine.workers.X`` and the app's screens, once read, are the real objects."""
    got = _fresh(
        "import json, sys; import engine, engine.workers as w, mfm_tui.screens as s; "
        "from engine import Engine, request_cancel, SystemClock; from engine.runtime import Engine as E2; "
        "from engine.workers import start_run; from engine.workers.actions import start_run as s2; "
        "from mfm_tui.screens.run import RunScreen; "
        "print(json.dumps([Engine is E2, start_run is s2, s.RunScreen is RunScreen, w.lease_state is not None, "
        "'engine.runtime' in sys.modules]))"
    )
    assert got == [True, True, True, True, True]


def test_the_first_screenful_of_runs_is_read_without_the_runtime(tmp_path: Path) -> None:
    """The watcher's first batch (what the list paints first) needs no worker action; the runs that never started
    are asked for after it (engine.workers' actions, and with them the runtime, load then)."""
    root = tmp_path / "store"
    _bench().make_store(root, 40, 0)
    got = _fresh(
        "import asyncio, json, sys\n"
        "from engine.stores.fs import FsStore\n"
        "from mfm_tui.store_watcher import StoreWatcher\n"
        "async def main():\n"
        f"    w = StoreWatcher(FsStore({str(root)!r}), first_slice_seconds=60.0, slice_seconds=60.0)\n"
        "    batches = w.load_batches()\n"
        "    first = await batches.__anext__()\n"
        "    before = 'engine.runtime' in sys.modules or 'engine.workers.actions' in sys.modules\n"
        "    async for _ in batches: pass\n"
        "    return [len(first.updated), before, 'engine.workers.actions' in sys.modules]\n"
        "print(json.dumps(asyncio.run(main())))\n"
    )
    assert got == [40, False, True]


async def test_seeding_runs_from_summaries_makes_no_view_for_a_planned_state_not_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list counts done/total without a view per pending planned state; a screen reading ``states`` still gets
    every planned state, in plan order."""
    root = tmp_path / "store"
    _bench().make_store(root, 70, 0, warm=False)  # demo_big runs of 3 states (failed, unfinished, completed ones)
    plan = PlanShape(state_ids=tuple(StateId(f"demo_big.main.step_{i:04d}") for i in range(20)))
    made: list[str] = []

    class CountedView(StateView):
        def __init__(self, state_id: StateId, *args: Any, **kwargs: Any) -> None:
            made.append(state_id)
            super().__init__(state_id, *args, **kwargs)

    monkeypatch.setattr(fold, "StateView", CountedView)
    watcher = StoreWatcher(FsStore(root), plan_resolver=lambda manifest: plan)
    await watcher.load()
    assert len(watcher.models) == 70
    assert all(m.plan is plan for m in watcher.models.values())
    assert len(made) <= 3 * 70  # only the states the runs entered (20 * 70 = 1,400 before)
    rows = {
        r: (m.done, m.total, m.status, m.current_state and m.current_state.state_id) for r, m in watcher.models.items()
    }
    assert {t for _, t, _, _ in rows.values()} == {20}
    for run_id, model in watcher.models.items():
        assert list(model.states) == list(plan.state_ids)  # a view reads them all: made now, in plan order
        current = model.current_state
        assert (model.done, model.total, model.status, current and current.state_id) == rows[run_id]


def test_opening_the_run_screen_leaves_what_it_opens_on_a_key_unimported() -> None:
    """The run screen's first frame does without the artifact viewer and the event dialog (rich.syntax, pygments),
    the logs, the timeline and the start screen; each still resolves through ``mfm_tui.screens`` when its key is
    pressed (and ``EventDialog`` from ``mfm_tui.screens.run``, as before)."""
    later = [
        "rich.syntax",
        "pygments",
        "mfm_tui.screens.artifact",
        "mfm_tui.screens.run.event_dialog",
        "mfm_tui.screens.logs",
        "mfm_tui.screens.timeline",
        "mfm_tui.screens.start",
    ]
    got = _fresh(
        "import json, sys; import mfm_tui.cli, mfm_tui.app, mfm_tui.screens.run; "
        f"before = [m for m in {later!r} if m in sys.modules]; "
        "import mfm_tui.screens as s; "
        "from mfm_tui.screens.artifact import ArtifactScreen, run_artifacts; from mfm_tui.screens.logs import "
        "LogsScreen; from mfm_tui.screens.timeline import TimelineScreen; "
        "from mfm_tui.screens.run import EventDialog; from mfm_tui.screens.run.event_dialog import EventDialog as E; "
        "print(json.dumps([before, s.ArtifactScreen is ArtifactScreen, s.run_artifacts is run_artifacts, "
        "s.LogsScreen is LogsScreen, s.TimelineScreen is TimelineScreen, s.EventDialog is EventDialog is E]))"
    )
    assert got == [[], True, True, True, True, True]


async def test_the_footers_keys_are_built_without_a_style_pass_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Textual's Footer flipped each key's ``-compact`` class twice per build, each time a stylesheet pass on that key
    (68 passes between the runs list and the 1M run's first frame); the footers of the runs list and the run screen
    now build their keys in their final state: the same keys, the same classes."""
    fx = await build_fixture_store(FsStore(tmp_path / "store"), only=[RUN_RUNNING])
    app = make_app(fx.store, clock=fixture_clock(), plan_resolver=fx.plan_resolver, watch=False)
    passes: list[str] = []
    update_styles = App.update_styles

    def spy(self: App[Any], node: Any, animate: bool = True) -> None:
        if type(node).__name__ == "FooterKey" and not node.has_class("-command-palette"):
            passes.append(node.key)
        update_styles(self, node, animate)

    monkeypatch.setattr(App, "update_styles", spy)
    screen = RunScreen(run_id=RUN_RUNNING, poll=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.loaded)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen._model_ready)
        await pilot.pause()
        keys = [k for k in screen.query("FooterKey") if not k.has_class("-command-palette")]
        shown = [(k.key, k.has_class("-compact")) for k in keys]
    assert len(shown) >= 8 and ("f", False) in shown
    assert not any(compact for _, compact in shown)  # Textual's end state: a non-compact footer's keys
    assert passes == []


def test_the_engines_wire_models_are_built_on_first_use_not_at_start() -> None:
    """Building the engine's ~30 pydantic models' validators cost ~60-90 ms of CPU of ``import mfm_tui.cli,
    mfm_tui.app``; the runs list's first paint validates none of them (summaries are plain JSON). They are built when
    first used (``defer_build``), and then work as before. (The store's fast-path self-check builds three.)"""
    got = _fresh(
        "import json; import mfm_tui.cli, mfm_tui.app\n"
        "from pydantic_core import SchemaValidator\n"
        "from engine._wire import Frozen\n"
        "from engine.config import RunManifest\n"
        "from engine.events import DomainEvent, EventEnvelope, decode_envelope, encode_envelope\n"
        "from engine.testing import base_config\n"
        "def subs(c):\n"
        "    for s in c.__subclasses__():\n"
        "        yield s\n"
        "        yield from subs(s)\n"
        "models = list(subs(Frozen))\n"
        "built = sorted(c.__name__ for c in models if isinstance(c.__pydantic_validator__, SchemaValidator))\n"
        "env = EventEnvelope(run_id='11111111-2222-4333-8444-555555555555', seq=1, ts_millis=5,\n"
        "                    event=DomainEvent(name='tick', payload={'n': 1}))\n"
        "back = decode_envelope(encode_envelope(env))\n"
        "m = RunManifest(op_id='demo', op_version='1', input_params={}, run_config=base_config())\n"
        "same = RunManifest.model_validate_json(m.model_dump_json()) == m\n"
        "print(json.dumps([len(models) > 20, built, back == env, same,\n"
        "                  isinstance(RunManifest.__pydantic_validator__, SchemaValidator)]))\n"
    )
    many, built, round_trip, manifest, manifest_built = got
    assert many and set(built) <= {"EventEnvelope", "StateCompleted", "StateEntered"}, built
    assert round_trip and manifest and manifest_built
