"""Many processes appending to, resuming and cancelling the same run at once.

- raw appends: at every ``expected_seq`` exactly one process wins; the others get ``StorageError`` Concurrency
  (``event_store_concurrency``); every batch lands whole and contiguous; nothing is lost or duplicated;
- engines without leases (the last line of defence, §3.4): concurrent ``resume`` of one run — the losers abort with
  ``RunError`` (storage, concurrency) and append nothing more; the stream stays valid and finishes exactly once;
- the command line: concurrent ``mfm resume`` and ``mfm cancel`` of one run — one worker wins the lease, the others
  are told ``lease_held`` (exit 4) or that it already finished; cancel requests all succeed, the first is kept;
- after each: ``mfm doctor`` (engine.doctor) finds nothing.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.doctor import check_store
from engine.errors import RunError, RunErrorKind, StorageError, StorageErrorKind
from engine.events import DomainEvent, EventEnvelope, RunCompleted, RunStarted
from engine.ids import OpId, RunId
from engine.stores.fs import FsStore

CTX = multiprocessing.get_context("fork")
RUN = RunId("44444444-4444-4444-8444-444444444444")


def _appender(root: str, writer: int, batches: int, size: int, barrier: Any, out: Any) -> None:
    """Append ``batches`` batches of ``size`` events, retrying on concurrency; report wins and losses."""

    async def go() -> tuple[int, int, list[str]]:
        store = FsStore(root)
        wins = losses = 0
        other: list[str] = []
        barrier.wait()
        while wins < batches:
            head = await store.events.head_seq(RUN)
            envs = [
                EventEnvelope(
                    run_id=RUN,
                    seq=head + 1 + i,
                    ts_millis=1,
                    event=DomainEvent(name="w", payload={"writer": writer, "batch": wins, "i": i}),
                )
                for i in range(size)
            ]
            try:
                assert await store.events.append(RUN, head, envs) == head + size
                wins += 1
            except StorageError as exc:
                if exc.kind is StorageErrorKind.CONCURRENCY and exc.code == "event_store_concurrency":
                    losses += 1
                else:
                    other.append(exc.one_line())
                    break
        return wins, losses, other

    out.put((writer, *asyncio.run(go())))


def test_concurrent_appenders_one_winner_per_seq(tmp_path: Path) -> None:
    root = tmp_path / "store"

    async def begin() -> None:  # a RunStarted first, so the stream is a valid run for doctor
        store = FsStore(root)
        empty = await store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, b"{}")
        started = RunStarted(op_id=OpId("op"), manifest_id=empty, initial_snapshot_id=empty)
        await store.events.append(RUN, 0, [EventEnvelope(run_id=RUN, seq=1, ts_millis=1, event=started)])

    asyncio.run(begin())
    writers, batches, size = 6, 25, 3
    barrier = CTX.Barrier(writers)
    out = CTX.Queue()
    procs = [CTX.Process(target=_appender, args=(str(root), w, batches, size, barrier, out)) for w in range(writers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert all(not other for *_, other in results), results
    losses = sum(r[2] for r in results)
    print(f"\nappenders: {writers} processes, {writers * batches} batches won, {losses} concurrency errors")
    assert all(r[1] == batches for r in results)
    envs = asyncio.run(FsStore(root).events.read_range(RUN, 2))
    assert [e.seq for e in envs] == list(range(2, writers * batches * size + 2))
    # every batch whole and contiguous: the ``size`` events of one (writer, batch) sit next to each other
    for start in range(0, len(envs), size):
        chunk = [e.event.payload for e in envs[start : start + size]]  # type: ignore[union-attr]
        assert len({(p["writer"], p["batch"]) for p in chunk}) == 1, chunk
        assert [p["i"] for p in chunk] == list(range(size))
    assert Counter(e.event.payload["writer"] for e in envs) == dict.fromkeys(range(writers), batches * size)  # type: ignore[union-attr]
    assert check_store(root).ok


# ---------------------------------------------------------------------------------------------
# Engines racing on one run without leases
# ---------------------------------------------------------------------------------------------


def _resumer(root: str, run_id: str, barrier: Any, out: Any) -> None:
    from engine.exec_transport import ExecTransportFactory
    from engine.operations import OperationEnv, load_registry
    from engine.runtime import Engine

    async def go() -> str:
        store = FsStore(root)
        registry = load_registry(["engine.demo_ops"], entry_points=False)
        engine = Engine(
            plan_resolver=registry.plan_resolver(OperationEnv(artifacts=store.artifacts)),
            transports=[ExecTransportFactory()],
        )
        barrier.wait()
        try:
            result = await engine.resume(store.stores, RunId(run_id))
        except RunError as exc:
            cause = exc.cause
            if (
                exc.kind is RunErrorKind.STORAGE
                and isinstance(cause, StorageError)
                and cause.kind is StorageErrorKind.CONCURRENCY
            ):
                return f"lost:{exc.code}"
            return f"error:{exc.kind}:{exc.one_line()}"
        return f"won:{result.phase.value}"

    out.put(asyncio.run(go()))


def _prepare_demo(root: Path, op_id: str, params: dict[str, Any]) -> tuple[str, str]:
    from engine.operations import load_registry, prepare_run

    async def go() -> tuple[str, str]:
        store = FsStore(root)
        prepared = await prepare_run(
            store.stores, load_registry(["engine.demo_ops"], entry_points=False), op_id, params, run_id=RunId.new_v4()
        )
        return str(prepared.run_id), str(prepared.manifest_id)

    return asyncio.run(go())


def _start_and_stop_after_first_state(root: Path) -> str:
    """A demo_big run with RunStarted and its first state completed, then "crashed" (no worker)."""
    from engine.operations import OperationEnv, load_registry, load_start_run
    from engine.runtime import Engine, Failpoints

    run_id, manifest_id = _prepare_demo(root, "demo_big", {"states": 12, "events": 2, "delay_ms": 1})

    async def go() -> None:
        store = FsStore(root)
        registry = load_registry(["engine.demo_ops"], entry_points=False)
        start = await load_start_run(store.stores, registry, manifest_id)  # type: ignore[arg-type]
        engine = Engine(
            plan_resolver=registry.plan_resolver(OperationEnv(artifacts=store.artifacts)),
            run_ids=lambda: RunId(run_id),
            failpoints=Failpoints.stop_after_handler("demo.main.s_0001"),
        )
        result = await engine.start(store.stores, start)
        assert result.phase.value == "Running"

    asyncio.run(go())
    return run_id


def test_concurrent_engine_resumes_without_leases(tmp_path: Path) -> None:
    root = tmp_path / "store"
    run_id = _start_and_stop_after_first_state(root)
    racers = 5
    barrier = CTX.Barrier(racers)
    out = CTX.Queue()
    procs = [CTX.Process(target=_resumer, args=(str(root), run_id, barrier, out)) for _ in range(racers)]
    for p in procs:
        p.start()
    outcomes = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    print(f"\nengine resumes without leases: {Counter(outcomes)}")
    assert all(o.startswith(("won:", "lost:")) for o in outcomes), outcomes
    assert all(o == "lost:event_store_concurrency" for o in outcomes if o.startswith("lost")), outcomes
    assert any(o.startswith("lost") for o in outcomes)  # they really raced
    envs = asyncio.run(FsStore(root).events.read_range(RunId(run_id), 1))
    finished = [e for e in envs if isinstance(e.event, RunCompleted)]
    if not finished:  # every racer lost the same seq: the stream is still valid; one more resume finishes it
        out2 = CTX.Queue()
        solo = CTX.Process(target=_resumer, args=(str(root), run_id, CTX.Barrier(1), out2))
        solo.start()
        assert out2.get(timeout=120) == "won:Completed"
        solo.join(60)
        envs = asyncio.run(FsStore(root).events.read_range(RunId(run_id), 1))
        finished = [e for e in envs if isinstance(e.event, RunCompleted)]
    assert len(finished) == 1 and finished[0].event.status.value == "Completed"  # type: ignore[union-attr]
    assert sum(isinstance(e.event, RunStarted) for e in envs) == 1
    assert check_store(root).ok, check_store(root).codes()


# ---------------------------------------------------------------------------------------------
# The command line: resume and cancel races
# ---------------------------------------------------------------------------------------------


def _mfm(store: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MFM_STORE", "XDG_DATA_HOME")}
    return subprocess.Popen(
        [sys.executable, "-m", "mfm_tui", "--store", str(store), "--ops", "engine.demo_ops", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _wait_finished(store: Path, run_id: str, timeout: float = 120) -> list[EventEnvelope]:
    """Poll the store until the run has RunCompleted and no worker holds it (waiting for outside processes)."""
    from engine.workers import LeaseState, lease_state

    deadline = time.monotonic() + timeout
    fs = FsStore(store)
    while time.monotonic() < deadline:
        envs = asyncio.run(fs.events.read_range(RunId(run_id), 1))
        if any(isinstance(e.event, RunCompleted) for e in envs) and (
            lease_state(fs, RunId(run_id)).state is not LeaseState.HELD
        ):
            return envs
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def _lost_worker_run(store: Path) -> str:
    """A demo_big run whose worker was SIGKILLed mid-way (stale lease)."""
    started = _mfm(store, "start", "demo_big", "-p", "states=40", "-p", "events=1", "-p", "delay_ms=20", "--json")
    out, err = started.communicate(timeout=60)
    assert started.returncode == 0, err
    run_id: str = json.loads(out)["run_id"]
    lease = store / "runs" / run_id / "lease"
    deadline = time.monotonic() + 60
    pid = None
    while time.monotonic() < deadline:
        try:
            pid = json.loads(lease.read_text()).get("pid")
            if pid and (store / "runs" / run_id / "events.jsonl").stat().st_size > 2000:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert pid
    os.kill(pid, signal.SIGKILL)
    from engine.workers import LeaseState, lease_state

    fs = FsStore(store)
    while lease_state(fs, RunId(run_id)).state is LeaseState.HELD and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lease_state(fs, RunId(run_id)).state is LeaseState.STALE
    return run_id


@pytest.mark.slow
def test_concurrent_cli_resumes_one_worker_wins(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_id = _lost_worker_run(store)
    assert check_store(store).codes() == ["stale_lease"]
    procs = [_mfm(store, "resume", run_id) for _ in range(6)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    codes = Counter(code for code, _, _ in results)
    print(f"\nmfm resume x6 on one lost run: exit codes {dict(codes)}")
    assert codes[0] >= 1, results
    assert set(codes) <= {0, 4}, results
    for code, _out, err in results:
        if code == 4:  # the winner's worker holds the lease, or (a slow racer, under load) has already finished
            assert err.startswith(("error[lease_held]", "error[run_already_finished]")), err
            assert "Traceback" not in err
    envs = _wait_finished(store, run_id)
    finished = [e for e in envs if isinstance(e.event, RunCompleted)]
    assert len(finished) == 1 and finished[0].event.status.value == "Completed"  # type: ignore[union-attr]
    assert check_store(store).ok, check_store(store).codes()


@pytest.mark.slow
def test_concurrent_cancels_and_resumes_of_a_running_run(tmp_path: Path) -> None:
    store = tmp_path / "store"
    started = _mfm(store, "start", "demo_big", "-p", "states=200", "-p", "delay_ms=150", "--json")
    out, err = started.communicate(timeout=60)
    assert started.returncode == 0, err
    run_id = json.loads(out)["run_id"]
    deadline = time.monotonic() + 60
    while not (store / "runs" / run_id / "events.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    procs = [_mfm(store, "cancel", run_id, "--reason", f"racer {i}") for i in range(4)]
    procs += [_mfm(store, "resume", run_id) for _ in range(3)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    cancels, resumes = results[:4], results[4:]
    print(f"\ncancel x4 + resume x3 on a running run: {[r[0] for r in cancels]} / {[r[0] for r in resumes]}")
    # the first request lands; one that arrives after the worker closed the run is told so (§0.6)
    assert any(code == 0 for code, _, _ in cancels), cancels
    for code, _, cancel_err in cancels:
        assert code == 0 or (code == 4 and cancel_err.startswith("error[run_already_finished]")), cancels
    assert all(code in (0, 4) for code, _, _ in resumes), resumes  # the live worker keeps the lease
    assert all("Traceback" not in o + e for _, o, e in results)
    envs = _wait_finished(store, run_id)
    finished = [e for e in envs if isinstance(e.event, RunCompleted)]
    assert len(finished) == 1 and finished[0].event.status.value == "Cancelled"  # type: ignore[union-attr]
    request = json.loads((store / "runs" / run_id / "control" / "cancel.json").read_text())
    assert request["reason"].startswith("racer ")  # the first request is kept, never replaced
    late = _mfm(store, "cancel", run_id)
    _, late_err = late.communicate(timeout=60)
    assert late.returncode == 4 and late_err.startswith("error[run_already_finished]")
    assert check_store(store).ok, check_store(store).codes()
