"""The engine runtime: ``Engine.start`` / ``resume`` / ``replay``, cancellation, injectables.

``Engine`` implements :class:`engine.engine.ExecutionEngine` (ENGINE-SPEC §5, §7, §8, §13 and the
project decisions of §0: fan-out, cancellation, retry visibility, side-effect safety, replay of a
past run). Time, sleeping, run ids and randomness are injectable so tests are deterministic.

Choices made where the specification leaves room (each is tested):

- **Fan-out** (§0.5): see :mod:`engine._runtime.scheduler`. A terminal failure lets in-flight
  attempts finish; the write-conflict rule applies when ``max_concurrency >= 2`` (Sequential and
  ``FanOutJoin{1}`` never run two states at once, so later states may overwrite earlier keys).
  A skipped state in a fan-out run completes with the checkpoint current at completion.
- **Cancellation** (§0.6): a ``CancelToken`` or a control-store request (polled every
  ``cancel_poll_interval`` seconds of real time) cancels the running attempt tasks — a backoff
  sleep or an exec child (the transport kills it) — then every open attempt is closed with
  ``StateFailed{run_cancelled}`` in topological order and ``RunCompleted{Cancelled}`` is appended,
  all in one batch. Attempts are not entered once a cancel is seen.
- **Appends**: ``StateEntered`` alone (§8 step 1); a terminal event shares its batch with
  ``retry_scheduled`` or, when it ends the run, ``RunCompleted``: 2N+1 appends for N states.
- **Replay sleeps**: backoff sleeps happen in Replay mode too (the reference code does, §7.1);
  ``IoProvider.sleep_ms`` returns at once in Replay (§11.2).
- **Replay of a past run** (§0.11): the new run's stream starts with ``RunStarted`` followed by a
  copy of R's ``fact_recorded`` bindings (``meta.replayed_from`` = R; the run id inside derived
  time/random keys is rewritten to the new run's), so the replay run is self-contained and can
  itself be resumed. The verdict is ``deterministic`` when both runs ended with the same status and
  final snapshot and every state completed with the same snapshot; otherwise ``diverged`` at the
  first state (topological order) whose ``StateCompleted`` snapshot differs.
- **Side effects** (§0.10): an ``ApplySideEffect`` state's IO calls made without a fact key get
  ``side_effect_fact_key(state_id, idempotency_key, n)`` (n = the call's rank among the attempt's
  unkeyed calls), so the transport is reached once across retries, crashes and resumes.
- **Handler exceptions** other than ``StateError``: contract errors (``IoError``, ``ContextError``,
  ``domain_event_invalid``) become a ``StateError`` with the same code/category/retryable; any
  other exception becomes the non-retryable ``state_handler_exception`` (message names only the
  exception type). ``RunError``s of kind Storage/Context raised inside a handler abort the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from engine._runtime.cancel import CancelToken
from engine._runtime.clock import AsyncioSleeper, Clock, Failpoints, Sleeper, SystemClock, as_clock, as_sleeper
from engine._runtime.executor import (
    Runtime,
    load_history,
    load_manifest,
    replay_manifest,
    store_manifest,
)
from engine._runtime.scheduler import CODE_FAN_OUT_WRITE_CONFLICT, CODE_RUN_CANCELLED
from engine.config import RunManifest
from engine.context import JsonContext
from engine.engine import RunPhase, RunResult, StartRun, Stores
from engine.errors import MfmError, RunError, StorageError
from engine.events import RunStatus
from engine.ids import ArtifactId, RunId, StateId
from engine.live_io import derived_fact_key, side_effect_fact_key
from engine.plan import ExecutionPlan, topological_order
from engine.stores._base import CancelRequest
from engine.transport import LiveTransportFactory

__all__ = [
    "CODE_FAN_OUT_WRITE_CONFLICT",
    "CODE_RUN_CANCELLED",
    "AsyncioSleeper",
    "CancelToken",
    "Clock",
    "Engine",
    "Failpoints",
    "ReplayVerdict",
    "Sleeper",
    "SystemClock",
    "derived_fact_key",
    "request_cancel",
    "side_effect_fact_key",
]


@dataclass(frozen=True, slots=True)
class ReplayVerdict:
    """Outcome of "replay run R" (ENGINE-SPEC §0.11)."""

    source_run_id: RunId
    replay_run_id: RunId
    result: RunResult
    verdict: Literal["deterministic", "diverged"]
    diverged_state: StateId | None
    source_final: ArtifactId | None
    replay_final: ArtifactId | None

    @property
    def deterministic(self) -> bool:
        return self.verdict == "deterministic"


def _default_run_id() -> RunId:
    return RunId(str(uuid.uuid4()))


def _router(transports: Sequence[LiveTransportFactory] | LiveTransportFactory | None) -> LiveTransportFactory:
    from engine.live_io_router import LiveIoRouter, UnimplementedTransportFactory

    if transports is None:
        return UnimplementedTransportFactory()
    if isinstance(transports, LiveIoRouter):
        return transports
    factories = [transports] if isinstance(transports, LiveTransportFactory) else list(transports)
    if not factories:
        return UnimplementedTransportFactory()
    return LiveIoRouter(factories)


class Engine:
    """The durable runtime. Implements :class:`engine.engine.ExecutionEngine`."""

    def __init__(
        self,
        *,
        plan_resolver: Callable[[RunManifest], ExecutionPlan] | None = None,
        transports: Sequence[LiveTransportFactory] | LiveTransportFactory | None = None,
        clock: Clock | Callable[[], int] | None = None,
        sleeper: Sleeper | None = None,
        run_ids: Callable[[], RunId] | None = None,
        random_source: Callable[[int], bytes] | None = None,
        failpoints: Failpoints | None = None,
        cancel_poll_interval: float = 0.2,
    ) -> None:
        self.failpoints = failpoints
        self._rt = Runtime(
            plan_resolver=plan_resolver,
            factory=_router(transports),
            clock=as_clock(clock),
            sleeper=as_sleeper(sleeper),
            run_ids=run_ids or _default_run_id,
            random_source=random_source,
            failpoints=failpoints,
            cancel_poll_interval=cancel_poll_interval,
        )

    @property
    def appends(self) -> int:
        """Appends made by the last invocation (for benchmarks)."""
        inv = self._rt.last_invocation
        return 0 if inv is None else inv.writer.appends

    async def start(self, stores: Stores, run: StartRun, *, cancel: CancelToken | None = None) -> RunResult:
        """Validate (nothing stored on failure, §5.1), write the initial snapshot and ``RunStarted``, run."""
        return await self._rt.start(stores, run, cancel)

    async def resume(self, stores: Stores, run_id: RunId, *, cancel: CancelToken | None = None) -> RunResult:
        """Continue a run from its stream (§13). A finished run returns its result and appends nothing."""
        return await self._rt.resume(stores, run_id, cancel)

    async def replay(self, stores: Stores, source_run_id: RunId, *, cancel: CancelToken | None = None) -> ReplayVerdict:
        """Replay run R (§0.11): a new run, R's manifest in Replay mode, facts copied from R, then the verdict."""
        rt = self._rt
        try:
            src_envs, src = await load_history(stores, RunId(source_run_id))
            assert src.run_started is not None
            manifest = await load_manifest(stores, src.run_started.manifest_id)
            initial = await _load_object(stores, src.run_started.initial_snapshot_id)
        except MfmError as exc:
            raise RunError.wrap(exc) from exc
        new_manifest = replay_manifest(manifest)
        plan = rt.resolve_plan(new_manifest)
        manifest_id = await store_manifest(stores, new_manifest)
        from engine._runtime.facts import FactIndex

        index = FactIndex.rebuild(src_envs)
        new_run_id = rt.run_ids()
        old_prefix = f"|run:{source_run_id}|"
        seed: list[tuple[str, ArtifactId, dict[str, str]]] = []
        for key, pid in index.bindings.items():
            if key.startswith(("mfm:now_millis|", "mfm:random_bytes|")) and old_prefix in key:
                key = key.replace(old_prefix, f"|run:{new_run_id}|", 1)
            seed.append((key, pid, {"replayed_from": str(source_run_id)}))
        fixed_ids = rt.run_ids
        rt.run_ids = lambda: new_run_id
        try:
            result = await rt.start(
                stores,
                StartRun(
                    manifest=new_manifest,
                    manifest_id=manifest_id,
                    plan=plan,
                    run_config=new_manifest.run_config,
                    initial_context=JsonContext(initial),
                ),
                cancel,
                seed_facts=seed,
            )
        finally:
            rt.run_ids = fixed_ids
        _, replayed = await load_history(stores, new_run_id)
        source_final = src.run_completed.final_snapshot_id if src.run_completed is not None else src.last_checkpoint
        replay_final = result.final_snapshot_id
        diverged: StateId | None = None
        for sid in topological_order(plan):
            if src.completed.get(sid) != replayed.completed.get(sid):
                diverged = sid
                break
        src_phase = None if src.run_completed is None else src.run_completed.status
        same = (
            source_final == replay_final
            and diverged is None
            and src_phase is not None
            and _status_of(result.phase) == src_phase
        )
        return ReplayVerdict(
            source_run_id=RunId(source_run_id),
            replay_run_id=new_run_id,
            result=result,
            verdict="deterministic" if same else "diverged",
            diverged_state=None if same else diverged,
            source_final=source_final,
            replay_final=replay_final,
        )


def _status_of(phase: RunPhase) -> RunStatus | None:
    return {
        RunPhase.COMPLETED: RunStatus.COMPLETED,
        RunPhase.FAILED: RunStatus.FAILED,
        RunPhase.CANCELLED: RunStatus.CANCELLED,
    }.get(phase)


async def _load_object(stores: Stores, snapshot_id: ArtifactId) -> dict[str, object]:
    from engine._runtime.context_runtime import SnapshotCache

    return await SnapshotCache(stores.artifacts).load(snapshot_id)


async def request_cancel(stores: Stores, run_id: RunId, reason: str = "") -> CancelRequest:
    """Ask a running run to cancel (any process). Refuses unknown and finished runs."""
    run_id = RunId(run_id)
    if stores.control is None:
        raise StorageError.other("control_store_missing", "these stores have no control store; cannot request cancel")
    try:
        _, history = await load_history(stores, run_id)
    except StorageError:
        raise
    except MfmError as exc:
        raise RunError.wrap(exc) from exc
    if history.run_completed is not None:
        raise StorageError.other(
            "run_already_finished",
            f"run {run_id} already finished ({history.run_completed.status}); there is nothing to cancel",
        )
    return await stores.control.request_cancel(run_id, reason)
