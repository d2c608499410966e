"""The worker itself: execute one run in this process while holding its lease (see :mod:`engine.workers`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

from engine.child_runs import ChildRunFactory
from engine.engine import RunPhase
from engine.exec_transport import ExecTransportFactory
from engine.ids import ArtifactId, RunId
from engine.operations import OperationEnv, OperationRegistry, load_start_run
from engine.process_groups import describe_all, reporting_groups_to
from engine.runtime import CancelToken, Engine
from engine.workers.base import EXIT_FAILED, EXIT_OK, RunFolders, WorkerError, require_run
from engine.workers.crash_loop import max_orphan_recoveries, reset_crash_loop
from engine.workers.exec_log import exec_log_tap
from engine.workers.lease import Lease, verdict_path, write_private

__all__ = ["run_worker", "verdict_json"]


def _phase_exit(phase: RunPhase) -> int:
    return EXIT_OK if phase is RunPhase.COMPLETED else EXIT_FAILED


def _make_engine(
    store: RunFolders, registry: OperationRegistry, poll: float, token: CancelToken
) -> tuple[Engine, ChildRunFactory]:
    """The engine of a detached worker: exec, plus child runs (§16) started as tasks of this worker (the worker's
    token stops them with the parent)."""
    resolver = registry.plan_resolver(OperationEnv(artifacts=store.stores.artifacts))
    children = ChildRunFactory(
        [ExecTransportFactory(output_tap=exec_log_tap(store))],
        plan_resolver=resolver,
        cancel_poll_interval=poll,
        cancel=token,
    )
    return Engine(plan_resolver=resolver, transports=children, cancel_poll_interval=poll), children


def _install_signal_handlers(token: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, token.cancel, f"worker received {signal.Signals(sig).name}")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _say(message: str) -> None:
    print(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] worker {os.getpid()}: {message}", flush=True)


async def run_worker(
    store: RunFolders,
    registry: OperationRegistry,
    action: str,
    run_id: RunId,
    *,
    manifest_id: ArtifactId | None = None,
    replay_run_id: RunId | None = None,
    lease_fd: int | None = None,
    cancel_poll_interval: float = 0.1,
) -> int:
    """Execute one run in this process while holding its lease; return the exit code."""
    lease_run = replay_run_id if action in ("replay", "recover") and replay_run_id is not None else run_id
    if lease_fd is not None:
        lease = Lease.adopt(store, lease_run, lease_fd, action)
    else:
        lease = Lease.acquire(store, lease_run, action)
        for note in describe_all(lease.previous):
            _say(note)
    # The exec programs' process groups are recorded in the lease while they run (engine.process_groups).
    with lease, reporting_groups_to(lease):
        token = CancelToken()
        _install_signal_handlers(token)
        engine, children = _make_engine(store, registry, cancel_poll_interval, token)
        try:
            return await _act(store, registry, engine, action, run_id, lease_run, manifest_id, token)
        finally:
            await children.drain()  # children still running (their parent ended without awaiting them) finish


async def _act(
    store: RunFolders,
    registry: OperationRegistry,
    engine: Engine,
    action: str,
    run_id: RunId,
    lease_run: RunId,
    manifest_id: ArtifactId | None,
    token: CancelToken,
) -> int:
    stores = store.stores
    if action == "run":
        if manifest_id is None:
            raise WorkerError.new("usage", "worker run needs --manifest")
        if await stores.events.head_seq(run_id) > 0:
            _say(f"run {run_id} already has events; resuming it")
            action = "resume"
        else:
            start = await load_start_run(stores, registry, manifest_id)
            _say(f"starting run {run_id} ({start.manifest.op_id})")
            result = await engine.start(stores, start, run_id=run_id, cancel=token)
            _say(f"run {run_id} {result.phase.value}")
            return _phase_exit(result.phase)
    if action == "resume":
        await require_run(store, run_id)
        _say(f"resuming run {run_id}")
        if await reset_crash_loop(stores, run_id, max_orphan_recoveries(), now_millis=time.time_ns() // 1_000_000):
            _say("it was crash-looping: an explicit resume resets the orphan recovery count")
        result = await engine.resume(stores, run_id, cancel=token)
        _say(f"run {run_id} {result.phase.value}")
        return _phase_exit(result.phase)
    if action == "replay":
        await require_run(store, run_id)
        _say(f"replaying run {run_id} as {lease_run}")
        verdict = await engine.replay(stores, run_id, run_id=lease_run, cancel=token)
        payload = verdict_json(verdict)
        data = (json.dumps(payload, sort_keys=True) + "\n").encode()
        write_private(store, lease_run, verdict_path(store, lease_run).name, data)
        _say(f"replay verdict: {payload['verdict']}")
        return EXIT_OK if payload["verdict"] == "deterministic" else EXIT_FAILED
    if action == "recover":
        _say(f"recovering failed run {run_id} as {lease_run}")
        result = await engine.recover(stores, run_id, cancel=token, new_run_id=lease_run)
        _say(f"run {lease_run} {result.phase.value}")
        return _phase_exit(result.phase)
    raise WorkerError.new("usage", f"unknown worker action {action!r}")


def verdict_json(verdict: Any) -> dict[str, Any]:
    """A replay verdict as stored (``verdict.json``, or the queue row's result on a database store)."""
    result = getattr(verdict, "result", None)
    phase = getattr(result, "phase", None)
    diverged = getattr(verdict, "diverged_state", None)
    return {
        "source_run_id": str(verdict.source_run_id),
        "replay_run_id": str(verdict.replay_run_id),
        "verdict": str(getattr(verdict, "verdict", "")),
        "diverged_state": None if diverged is None else str(diverged),
        "phase": None if phase is None else str(getattr(phase, "value", phase)),
        "source_final": _opt_str(getattr(verdict, "source_final", None)),
        "replay_final": _opt_str(getattr(verdict, "replay_final", None)),
    }


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)
