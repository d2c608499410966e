"""Detached workers end to end: SIGKILL + resume, cancel during backoff and exec, racing resumes, --ops."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
from cli_helpers import Mfm, live_pids_with, wait_until

from engine.events import RunCompleted, StateCompleted, StateFailed
from engine.ids import RunId

pytestmark = pytest.mark.slow

BIG = ("states=40", "events=2", "delay_ms=40")


def _completed_states(mfm: Mfm, run_id: str) -> int:
    return sum(isinstance(e.event, StateCompleted) for e in mfm.read_events(run_id))


def _status(mfm: Mfm, run_id: str) -> str:
    res = mfm("show", run_id, "--json")
    assert res.code == 0, res.err
    status: str = res.json()["status"]
    return status


def _kill_worker(mfm: Mfm, run_id: str) -> int:
    pid = int(mfm.lease(run_id)["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


def test_sigkilled_worker_is_lost_then_resume_matches_an_uncrashed_run(mfm: Mfm) -> None:
    reference = mfm("start", "demo_big", *(x for p in BIG for x in ("-p", p)), "--wait", "--json")
    assert reference.code == 0, reference.err
    run_id = mfm.start("demo_big", *BIG)
    wait_until(lambda: _completed_states(mfm, run_id) >= 3, what="a few states")
    _kill_worker(mfm, run_id)
    wait_until(lambda: _status(mfm, run_id) == "worker_lost", what="worker lost")
    listing = mfm("runs")
    assert "worker lost" in listing.out
    resumed = mfm("resume", run_id[:8], "--wait", "--json")
    assert resumed.code == 0, resumed.err
    assert resumed.json()["status"] == "completed"
    assert resumed.json()["final_snapshot_id"] == reference.json()["final_snapshot_id"]
    events = mfm.read_events(run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(isinstance(e.event, RunCompleted) for e in events) == 1


def test_events_follow_ends_when_the_worker_is_killed(mfm: Mfm) -> None:
    """`events --follow` prints what the run wrote, then worker_lost (exit 1), instead of following forever."""
    run_id = mfm.start("demo_big", *BIG)
    wait_until(lambda: _completed_states(mfm, run_id) >= 2, what="a few states")
    follow = mfm.popen("events", run_id, "--follow", "--json")
    try:
        _kill_worker(mfm, run_id)
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()  # a follower that never ends (the bug) must not outlive the test
    assert follow.returncode == 1, err
    printed = [json.loads(line)["seq"] for line in out.splitlines()]
    assert printed == [e.seq for e in mfm.read_events(run_id)]
    assert err.startswith(f"error[worker_lost]: the worker of run {run_id} exited without finishing it")


def _cancel_and_wait(mfm: Mfm, run_id: str) -> float:
    t0 = time.monotonic()
    res = mfm("cancel", run_id)
    assert res.code == 0, res.err
    wait_until(lambda: isinstance(mfm.read_events(run_id)[-1].event, RunCompleted), timeout=120, what="RunCompleted")
    return time.monotonic() - t0


def test_cancel_during_backoff_interrupts_the_wait(mfm: Mfm) -> None:
    # A 60 s backoff: finishing as Cancelled long before it proves the wait was interrupted.
    run_id = mfm.start("demo_flaky", "fail_times=3", "base_delay_ms=60000", "max_delay_ms=60000")
    wait_until(lambda: any(e.kind == "retry_scheduled" for e in mfm.read_events(run_id)), what="retry_scheduled")
    elapsed = _cancel_and_wait(mfm, run_id)
    events = mfm.read_events(run_id)
    assert events[-1].event.status.value == "Cancelled"  # type: ignore[union-attr]
    # The run ended before the backoff it was sleeping in would have: the wait was interrupted (recorded times).
    retry = next(e for e in events if e.kind == "retry_scheduled")
    assert events[-1].ts_millis is not None
    assert events[-1].ts_millis < retry.event.payload["not_before_millis"]  # type: ignore[union-attr]
    print(f"cancel during backoff: Cancelled {elapsed:.2f} s after `mfm cancel` started")
    assert _status(mfm, run_id) == "cancelled"
    again = mfm("cancel", run_id)
    assert again.code == 4 and again.err_lines == [again.err_lines[0]]
    assert again.err_lines[0].startswith("error[run_already_finished]: ")


def test_cancel_during_exec_kills_the_program(mfm: Mfm) -> None:
    marker = "sleep 597"  # the demo's program runs `sleep <exec_seconds>`
    run_id = mfm.start("demo_pipeline", "exec_seconds=597")
    wait_until(lambda: bool(live_pids_with(marker)), what="the exec program")
    elapsed = _cancel_and_wait(mfm, run_id)
    events = mfm.read_events(run_id)
    failed = [e.event for e in events if isinstance(e.event, StateFailed)]
    assert failed and failed[-1].error.code == "run_cancelled"
    assert events[-1].event.status.value == "Cancelled"  # type: ignore[union-attr]
    print(f"cancel during exec: Cancelled {elapsed:.2f} s after `mfm cancel` started")
    wait_until(lambda: not live_pids_with(marker), timeout=10, what="the program to be gone")
    wait_until(
        lambda: not live_pids_with(f"resume {run_id}") and not live_pids_with(f"--run-id {run_id}"), what="worker"
    )


def test_sigterm_cancels_cooperatively(mfm: Mfm) -> None:
    run_id = mfm.start("demo_big", "states=200", "delay_ms=50")
    wait_until(lambda: _completed_states(mfm, run_id) >= 1, what="a state")
    os.kill(int(mfm.lease(run_id)["pid"]), signal.SIGTERM)
    wait_until(lambda: isinstance(mfm.read_events(run_id)[-1].event, RunCompleted), what="RunCompleted")
    assert _status(mfm, run_id) == "cancelled"


def test_two_resumes_at_once_exactly_one_proceeds(mfm: Mfm) -> None:
    run_id = mfm.start("demo_big", "states=300", "events=1", "delay_ms=50")
    wait_until(lambda: _completed_states(mfm, run_id) >= 1, what="a state")
    _kill_worker(mfm, run_id)
    wait_until(lambda: _status(mfm, run_id) == "worker_lost", what="worker lost")
    procs = [mfm.popen("resume", run_id) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs)
    assert [code for code, _ in outcomes] == [0, 4], outcomes
    assert outcomes[1][1].strip().startswith("error[lease_held]: ")
    assert len(outcomes[1][1].strip().splitlines()) == 1
    # and while that worker runs, a third resume is refused too
    third = mfm("resume", run_id)
    assert third.code == 4 and third.err_lines[0].startswith("error[lease_held]: ")
    assert mfm("cancel", run_id).code == 0


def test_operations_from_a_module_in_a_temporary_folder(mfm: Mfm, tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "my_team_ops.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from engine.config import Duration, Fixed, RetryPolicy, RunConfig
            from engine.ids import OpId
            from engine.meta import StateMeta
            from engine.operations import Operation
            from engine.state import StateOutcome
            from engine.testing import make_plan

            NO_DELAY = Duration.from_millis(0)

            class Params(BaseModel):
                greeting: str = "hi"

            class Greet:
                def __init__(self, text):
                    self.text = text
                def meta(self):
                    return StateMeta()
                async def handle(self, ctx, io, rec):
                    ctx.write("greeting", self.text.upper())
                    return StateOutcome()

            OPERATIONS = [
                Operation(
                    op_id=OpId("team_greet"),
                    version="7",
                    description="Say hello.",
                    params_model=Params,
                    build_plan=lambda p, env: make_plan([("greet", Greet(p.greeting))], op_id="team_greet"),
                    run_config=RunConfig(retry_policy=RetryPolicy(max_attempts=1, backoff=Fixed(delay=NO_DELAY))),
                )
            ]
            """
        )
    )
    by_module = Mfm(mfm.store, mfm.store.parent / "home", cwd=folder)
    listed = by_module("ops", "--json", ops=("my_team_ops",))
    assert listed.code == 0, listed.err
    assert "team_greet" in [o["op_id"] for o in listed.json()]
    res = by_module("start", "team_greet", "-p", "greeting=hello", "--wait", "--json", ops=("my_team_ops",))
    assert res.code == 0, res.err
    assert res.json()["status"] == "completed"
    by_path = mfm("start", "team_greet", "--wait", "--json", ops=(str(folder / "my_team_ops.py"),))
    assert by_path.code == 0, by_path.err
    missing = mfm("ops", ops=("no_such_ops_module",))
    assert missing.code == 2 and missing.err_lines[0].startswith("error[ops_module_import_failed]: ")


def test_a_run_whose_worker_died_before_run_started_can_be_resumed(mfm: Mfm) -> None:
    """The spawner records ``start.json``; resume starts such a run again from its manifest."""
    import asyncio

    from engine.operations import load_registry, prepare_run
    from engine.stores.fs import FsStore
    from engine.workers import Lease
    from engine.workers import write_pending as _write_pending

    async def prepare() -> str:
        store = FsStore(mfm.store)
        prepared = await prepare_run(
            store.stores, load_registry(["engine.demo_ops"]), "demo_big", {"states": 2}, run_id=RunId.new_v4()
        )
        Lease.acquire(store, prepared.run_id, "run").release()  # a worker took the lease, then died
        _write_pending(store, prepared.run_id, prepared.manifest_id)
        return str(prepared.run_id)

    run_id = asyncio.run(prepare())
    assert mfm("show", run_id[:8], "--json").json()["status"] == "not_started"
    res = mfm("resume", run_id, "--wait", "--json")
    assert res.code == 0, res.err
    assert res.json()["status"] == "completed" and res.json()["done"] == 2


def test_cancel_right_after_start_before_run_started_lands(mfm: Mfm) -> None:
    """A run whose worker has not written RunStarted yet (here: died before it) can still be cancelled."""
    import asyncio

    from engine.operations import load_registry, prepare_run
    from engine.stores.fs import FsStore
    from engine.workers import Lease
    from engine.workers import write_pending as _write_pending

    async def prepare() -> str:
        store = FsStore(mfm.store)
        prepared = await prepare_run(
            store.stores,
            load_registry(["engine.demo_ops"]),
            "demo_big",
            {"states": 50, "delay_ms": 200},
            run_id=RunId.new_v4(),
        )
        Lease.acquire(store, prepared.run_id, "run").release()
        _write_pending(store, prepared.run_id, prepared.manifest_id)
        return str(prepared.run_id)

    run_id = asyncio.run(prepare())
    res = mfm("cancel", run_id)
    assert res.code == 0, res.err
    wait_until(lambda: bool(mfm.read_events(run_id)) and isinstance(mfm.read_events(run_id)[-1].event, RunCompleted))
    last = mfm.read_events(run_id)[-1].event
    assert isinstance(last, RunCompleted) and last.status.value == "Cancelled"
    assert _completed_states(mfm, run_id) < 50
