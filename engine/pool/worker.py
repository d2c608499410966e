"""The worker side: ``WorkerPool`` (claim, heartbeat, execute, abandon) and :func:`serve`, the
``mfm worker serve`` loop (see :mod:`engine.pool`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.child_runs import ChildRunFactory
from engine.engine import Stores
from engine.errors import MfmError, StorageError
from engine.events import RunCompleted
from engine.exec_transport import ExecTransportFactory
from engine.ids import RunId
from engine.operations import OperationEnv, OperationRegistry, load_start_run
from engine.pool._sql import DEFAULT_HEARTBEAT, DEFAULT_LEASE_TTL, Claim
from engine.pool.lease import LeasedEventStore, RunLease
from engine.pool.store import PostgresPoolStore
from engine.process_groups import ExecGroup, Machine, describe_all, ensure_gone, reporting_groups_to
from engine.runtime import CancelToken, Engine
from engine.secrets import redact_text
from engine.workers.base import WorkerError, previous_attempt_alive
from engine.workers.crash_loop import (
    DEFAULT_MAX_ORPHAN_RECOVERIES,
    OrphanStreakCounter,
    max_orphan_recoveries,
    reset_crash_loop,
)
from engine.workers.run import verdict_json

__all__ = ["WorkerPool", "serve"]


def _say(host: str, message: str) -> None:
    print(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] worker {host}/{os.getpid()}: {message}", flush=True)


@dataclass
class WorkerPool:
    """One ``mfm worker serve`` process: claims up to ``concurrency`` runs and executes them in this event loop."""

    store: PostgresPoolStore
    registry: OperationRegistry
    concurrency: int = 4
    host: str = field(default_factory=socket.gethostname)
    ttl: float = DEFAULT_LEASE_TTL
    heartbeat: float = DEFAULT_HEARTBEAT
    poll: float = 0.25
    cancel_poll: float = 0.1
    quiet: bool = False
    max_orphan_recoveries: int = DEFAULT_MAX_ORPHAN_RECOVERIES
    """A run taken over after this many consecutive orphan recoveries of one state is parked, not resumed again."""
    leases: dict[uuid.UUID, RunLease] = field(default_factory=dict)
    tasks: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)
    completed: int = 0

    def _log(self, message: str) -> None:
        if not self.quiet:
            _say(self.host, message)

    async def run(self, stop: asyncio.Event, *, exit_when_idle: bool = False) -> None:
        """Claim and execute until ``stop`` is set (then abandon the runs in hand and release their claims)."""
        if self.concurrency < 1:
            raise StorageError.other("usage", "concurrency must be at least 1")
        await self.store.queue.ensure()
        self._log(f"serving {self.store.dsn} schema {self.store.schema} ({self.concurrency} slots)")
        beat = asyncio.get_running_loop().create_task(self._heartbeats(stop), name="mfm-pool-heartbeat")
        try:
            while not stop.is_set():
                free = self.concurrency - len(self.tasks)
                got = 0
                if free > 0:
                    sent = time.monotonic()
                    try:
                        claims = await self.store.queue.claim(free, self.host, os.getpid(), self.ttl)
                    except StorageError as err:
                        self._log(f"claim failed: {err.message}")
                        claims = []
                    got = len(claims)
                    for c in claims:
                        self._begin(c, sent)
                if exit_when_idle and not self.tasks and got == 0:
                    return
                if got and len(self.tasks) < self.concurrency:
                    continue  # there may be more
                waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
                waiters |= set(self.tasks.values())
                await asyncio.wait(waiters, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    if w not in self.tasks.values() and not w.done():
                        w.cancel()
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await self._abandon()

    def _begin(self, claim: Claim, sent: float) -> None:
        lease = RunLease(claim, sent, self.ttl)
        self.leases[claim.token] = lease
        again = f" (claim {claim.claims}: previous worker lost)" if claim.claims > 1 else ""
        self._log(f"claimed {claim.action} {claim.run_id}{again}")
        task = asyncio.get_running_loop().create_task(self._execute(lease), name=f"mfm-run-{claim.run_id}")
        self.tasks[claim.token] = task

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.heartbeat)
            tokens = [t for t, lease in self.leases.items() if lease.lost_reason is None]
            if not tokens:
                continue
            sent = time.monotonic()
            try:
                alive = await self.store.queue.heartbeat(tokens, self.ttl)
            except StorageError as err:
                self._log(f"heartbeat failed: {err.message}")
                continue  # the leases run out locally unless a later heartbeat succeeds in time
            for token in tokens:
                lease = self.leases.get(token)
                if lease is None:
                    continue
                if token in alive:
                    lease.renewed(sent)
                else:
                    lease.lose("another worker took the run over")
                    task = self.tasks.get(token)
                    if task is not None:
                        task.cancel()

    async def _execute(self, lease: RunLease) -> None:
        claim = lease.claim
        try:
            await _settle_previous_attempt(self.store, claim, self._log)
            with reporting_groups_to(_RowGroups(self.store, claim)):
                outcome, result = await _execute_claim(
                    self.store, self.registry, lease, self.cancel_poll, self.max_orphan_recoveries
                )
        except asyncio.CancelledError:
            self.tasks.pop(claim.token, None)
            self.leases.pop(claim.token, None)
            if lease.lost_reason is None:  # abandoned (worker stopping): hand the run over at once
                with contextlib.suppress(StorageError):
                    await self.store.queue.release(claim.run_id, claim.token, "worker stopped")
            raise
        except MfmError as err:
            if err.code == CODE_CRASH_LOOPING:
                self._log(f"run {claim.run_id}: {err.message}")
                with contextlib.suppress(StorageError):
                    await self.store.queue.park(claim.run_id, claim.token, CODE_CRASH_LOOPING, err.message)
                self.tasks.pop(claim.token, None)
                self.leases.pop(claim.token, None)
                return
            self._log(f"run {claim.run_id}: {err.one_line()}; releasing it")
            with contextlib.suppress(StorageError):
                await self.store.queue.release(claim.run_id, claim.token, redact_text(err.one_line()))
        except Exception as exc:  # a bug in an operation must not take the whole worker down
            self._log(f"run {claim.run_id}: unexpected {type(exc).__name__}: {exc}; releasing it")
            with contextlib.suppress(StorageError):
                # the row is the store's: what an exception says passes the secrets guard first (§12)
                await self.store.queue.release(claim.run_id, claim.token, redact_text(f"{type(exc).__name__}: {exc}"))
        else:
            ok = False
            with contextlib.suppress(StorageError):
                ok = await self.store.queue.finish(claim.run_id, claim.token, outcome, result)
            self.completed += 1
            self._log(f"run {claim.run_id} {outcome}" + ("" if ok else " (lease was lost meanwhile)"))
        self.tasks.pop(claim.token, None)
        self.leases.pop(claim.token, None)

    async def _abandon(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


CODE_CRASH_LOOPING = "crash_looping"
"""The queue row ``outcome`` of a parked crash-looping run (and the code of the error that parks it)."""


async def _crash_loop_check(stores: Stores, claim: Claim, limit: int) -> None:
    """Before resuming a run that has events: a takeover (its previous worker died) of a run whose stream shows
    ``limit`` consecutive orphan recoveries of one state raises ``crash_looping`` (the run is parked); a claim that
    is not a takeover (an explicit resume queued it) resets the count (``engine.workers.reset_crash_loop``)."""
    if not claim.taken_over:
        await reset_crash_loop(stores, claim.run_id, limit, now_millis=time.time_ns() // 1_000_000)
        return
    streak = OrphanStreakCounter().feed_all(await stores.events.read_range(claim.run_id, 1)).crash_loop(limit)
    if streak is not None:
        raise WorkerError.new(
            CODE_CRASH_LOOPING,
            f"crash loop: {streak.recoveries} consecutive orphan recoveries at {streak.state_id} (limit {limit}); "
            f"not taken over again: fix the cause, then `mfm resume {claim.run_id[:8]}`",
            {"state_id": str(streak.state_id), "orphan_recoveries": streak.recoveries, "limit": limit},
        )


class _RowGroups:
    """The run's queue row as its :class:`~engine.process_groups.GroupReporter`: the exec process groups of this
    attempt are recorded in ``exec_groups`` while they run, with the machine they run on."""

    def __init__(self, store: PostgresPoolStore, claim: Claim) -> None:
        self._queue = store.queue
        self._claim = claim
        self._machine = Machine.here()
        self._groups: dict[int, ExecGroup] = {}
        self._lock = asyncio.Lock()

    async def group_started(self, group: ExecGroup) -> None:
        async with self._lock:
            self._groups[group.pgid] = group
            await self._write()

    async def group_ended(self, group: ExecGroup) -> None:
        async with self._lock:
            if self._groups.pop(group.pgid, None) is not None:
                await self._write()

    async def _write(self) -> None:
        groups = [g.to_json() for g in self._groups.values()]
        record = {"machine": self._machine.to_json(), "groups": groups} if groups else None
        await self._queue.record_groups(self._claim.run_id, self._claim.token, record)


async def _settle_previous_attempt(store: PostgresPoolStore, claim: Claim, log: Callable[[str], None]) -> None:
    """Before a takeover executes anything: make sure the exec process groups the previous holder recorded are
    gone (``engine.process_groups.ensure_gone``: SIGKILL on this machine, never a reused pid; a group on another
    host is only reported). One that survives SIGKILL → ``previous_attempt_alive`` (the claim is released)."""
    record = claim.exec_groups
    if not record:
        return
    groups = ExecGroup.list_from_json(record.get("groups"))
    checks = await asyncio.to_thread(ensure_gone, groups, Machine.from_json(record.get("machine")))
    for note in describe_all(checks):
        log(f"run {claim.run_id}: {note}")
    alive = [c for c in checks if not c.safe]
    if alive:
        raise previous_attempt_alive(claim.run_id, alive[0])
    await store.queue.record_groups(claim.run_id, claim.token, None)


async def _execute_claim(
    store: PostgresPoolStore,
    registry: OperationRegistry,
    lease: RunLease,
    cancel_poll: float,
    crash_loop_limit: int = DEFAULT_MAX_ORPHAN_RECOVERIES,
) -> tuple[str, dict[str, Any] | None]:
    """Run one claimed row to its end; return ``(outcome, result)`` for the queue row."""
    claim = lease.claim
    events = LeasedEventStore(store.events, lease)
    stores = Stores(events=events, artifacts=store.artifacts, control=store.events)
    resolver = registry.plan_resolver(OperationEnv(artifacts=store.artifacts))
    token = CancelToken()
    # Children (§16) run as tasks of this worker, in the same store, under the parent's lease; they are waited for
    # before the claim is released.
    children = ChildRunFactory(
        [ExecTransportFactory()], plan_resolver=resolver, cancel_poll_interval=cancel_poll, cancel=token
    )
    engine = Engine(plan_resolver=resolver, transports=children, cancel_poll_interval=cancel_poll)
    try:
        return await _execute_with(store, registry, claim, stores, engine, token, crash_loop_limit)
    finally:
        await children.drain()


async def _execute_with(
    store: PostgresPoolStore,
    registry: OperationRegistry,
    claim: Claim,
    stores: Stores,
    engine: Engine,
    token: CancelToken,
    crash_loop_limit: int,
) -> tuple[str, dict[str, Any] | None]:
    target = claim.run_id
    head = await store.events.head_seq(target)
    if claim.action in ("start", "resume") and head == 0:
        if claim.manifest_id is None:
            raise WorkerError.new("run_not_found", f"run {target} has no events and no manifest")
        start = await load_start_run(stores, registry, claim.manifest_id)
        return (await engine.start(stores, start, run_id=target, cancel=token)).phase.value, None
    if claim.action == "replay" and head == 0:
        assert claim.source_run_id is not None
        verdict = await engine.replay(stores, claim.source_run_id, run_id=target, cancel=token)
        return verdict.result.phase.value, verdict_json(verdict)
    if claim.action == "recover" and head == 0:
        assert claim.source_run_id is not None
        return (await engine.recover(stores, claim.source_run_id, cancel=token, new_run_id=target)).phase.value, None
    # The run has events: its previous worker was lost (or this is a resume): continue it from its stream.
    await _crash_loop_check(stores, claim, crash_loop_limit)
    result = await engine.resume(stores, target, cancel=token)
    if claim.action == "replay" and claim.source_run_id is not None:
        return result.phase.value, await _resumed_verdict(store, claim.source_run_id, target, result)
    return result.phase.value, None


async def _resumed_verdict(store: PostgresPoolStore, source: RunId, replay: RunId, result: Any) -> dict[str, Any]:
    """The verdict of a replay whose first worker was lost: final snapshot and status compared (no per-state
    divergence is located in this case)."""

    async def last(run: RunId) -> RunCompleted | None:
        head = await store.events.head_seq(run)
        envs = await store.events.read_range(run, head, head)
        return envs[0].event if envs and isinstance(envs[0].event, RunCompleted) else None

    src, rep = await last(source), await last(replay)
    same = src is not None and rep is not None and src.final_snapshot_id == rep.final_snapshot_id
    same = same and src is not None and rep is not None and src.status == rep.status
    return {
        "source_run_id": str(source),
        "replay_run_id": str(replay),
        "verdict": "deterministic" if same else "diverged",
        "diverged_state": None,
        "phase": str(getattr(result.phase, "value", result.phase)),
        "source_final": None if src is None or src.final_snapshot_id is None else str(src.final_snapshot_id),
        "replay_final": None if rep is None or rep.final_snapshot_id is None else str(rep.final_snapshot_id),
    }


async def serve(
    store: PostgresPoolStore,
    registry: OperationRegistry,
    *,
    concurrency: int = 4,
    host: str | None = None,
    ttl: float = DEFAULT_LEASE_TTL,
    heartbeat: float = DEFAULT_HEARTBEAT,
    poll: float = 0.25,
    cancel_poll: float = 0.1,
    exit_when_idle: bool = False,
    quiet: bool = False,
    crash_loop_limit: int | None = None,
) -> int:
    """``mfm worker serve``: run a :class:`WorkerPool` until SIGTERM/SIGINT (or, with ``exit_when_idle``, until the
    queue is empty). Returns 0. The crash-loop limit is ``$MFM_MAX_ORPHAN_RECOVERIES`` (default 3) unless given."""
    limit = max_orphan_recoveries() if crash_loop_limit is None else crash_loop_limit
    if not 0 < heartbeat < ttl:
        raise StorageError.other(
            "usage", f"heartbeat ({heartbeat} s) must be positive and below the lease ttl ({ttl} s)"
        )
    pool = WorkerPool(
        store,
        registry,
        concurrency=concurrency,
        host=host or socket.gethostname(),
        ttl=ttl,
        heartbeat=heartbeat,
        poll=poll,
        cancel_poll=cancel_poll,
        quiet=quiet,
        max_orphan_recoveries=limit,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        await pool.run(stop, exit_when_idle=exit_when_idle)
    finally:
        pool._log(f"stopping after {pool.completed} run(s)")
        await store.close()
    return 0
