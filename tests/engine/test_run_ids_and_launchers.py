"""The new run's id is an argument (``Engine.start/replay(run_id=…)``), the worker actions pick a launcher by the
store, and ``engine.workers`` never imports ``engine.pool`` (which needs the optional psycopg)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.ids import RunId
from engine.plan import ExecutionPlan
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.stores.fs import FsStore
from engine.testing import FakeClock, FakeSleeper, SetKey, base_config, fixed_run_ids, make_plan, start_plan
from engine.workers import DetachedLauncher, launcher_for

ROOT = Path(__file__).resolve().parents[2]
GIVEN = RunId("0b7e1f1c-0000-4000-8000-00000000abcd")
REPLAY = RunId("0b7e1f1c-0000-4000-8000-00000000dcba")


def _engine(plan: ExecutionPlan) -> tuple[Engine, list[RunId]]:
    drawn: list[RunId] = []
    source = fixed_run_ids()

    def run_ids() -> RunId:
        drawn.append(source())
        return drawn[-1]

    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper(), run_ids=run_ids)
    return engine, drawn


async def test_start_and_replay_use_the_given_run_id_and_draw_none() -> None:
    plan = make_plan([("s1", SetKey("a", 1))])
    store = MemoryStore()
    engine, drawn = _engine(plan)
    live = await start_plan(engine, store.stores, plan, base_config(), run_id=GIVEN)
    assert live.run_id == GIVEN and await store.stores.events.head_seq(GIVEN) > 0
    verdict = await engine.replay(store.stores, GIVEN, run_id=REPLAY)
    assert verdict.replay_run_id == REPLAY and verdict.deterministic
    assert drawn == []


async def test_without_a_run_id_the_engine_draws_one_from_run_ids() -> None:
    plan = make_plan([("s1", SetKey("a", 1))])
    store = MemoryStore()
    engine, drawn = _engine(plan)
    live = await start_plan(engine, store.stores, plan, base_config())
    verdict = await engine.replay(store.stores, live.run_id)
    assert drawn == [live.run_id, verdict.replay_run_id]


def test_a_filesystem_store_gets_a_detached_launcher(tmp_path: Path) -> None:
    launcher = launcher_for(FsStore(tmp_path / "s"))
    assert isinstance(launcher, DetachedLauncher)


def test_engine_workers_does_not_import_the_pool() -> None:
    probe = "import sys, engine.workers; print('engine.pool' in sys.modules, 'psycopg' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "False"]
