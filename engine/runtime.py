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
- **Appends** (issue 12): events that nothing waits on are batched without changing the stream:
  ``RunStarted`` with the first ``StateEntered``, ``StateCompleted(sₙ)`` with ``StateEntered(sₙ₊₁)``
  (under fan-out: with every state entered at that boundary), the last ``StateCompleted`` with
  ``RunCompleted``, a retry's ``StateFailed`` + ``retry_scheduled`` with its next ``StateEntered``
  when the backoff is zero (before a real sleep they are appended on their own). The snapshot a
  ``StateCompleted`` names is durable before that batch. N+1 appends for N sequential states
  (:mod:`engine._runtime.scheduler`).
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
- **Recovery of a failed run** (this project's answer to "fix it, then resume"): a run that ended
  ``RunCompleted{Failed}`` is final (§13 step 7), so ``Engine.recover`` starts a NEW run with the
  same manifest and initial snapshot whose stream opens with ``RunStarted``, a ``recovered_from``
  domain event, the failed run's fact bindings (except those bound inside attempts of states that
  did not complete, when the stream attributes them unambiguously: an operator fixes the world
  outside, so those observations are taken again), and an ``E``/``C`` pair per completed state
  (same attempt, base and snapshot, in completion order). Resume then continues at the first
  state that did not complete. The failed run keeps its history untouched.
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
from engine._runtime.context_runtime import SnapshotCache
from engine._runtime.executor import (
    Runtime,
    load_history,
    load_manifest,
    replay_manifest,
    store_manifest,
)
from engine._runtime.facts import FactIndex
from engine._runtime.scheduler import CODE_FAN_OUT_WRITE_CONFLICT, CODE_RUN_CANCELLED
from engine._runtime.writer import EventWriter
from engine._wire import construct
from engine.config import RunManifest
from engine.context import JsonContext
from engine.engine import RunPhase, RunResult, StartRun, Stores
from engine.errors import MfmError, RunError, StorageError
from engine.events import (
    DOMAIN_EVENT_FACT_RECORDED,
    DOMAIN_EVENT_RECOVERED_FROM,
    DOMAIN_EVENT_RETRY_SCHEDULED,
    DomainEvent,
    EventEnvelope,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
    fact_event,
)
from engine.ids import ArtifactId, RunId, StateId
from engine.live_io import derived_fact_key, side_effect_fact_key
from engine.live_io_router import ALL_NAMESPACES, LiveIoRouter, UnimplementedTransportFactory
from engine.plan import ExecutionPlan, topological_order
from engine.stores import CancelRequest, ControlStore, RetryNowRequest
from engine.transport import LiveTransportFactory

__all__ = [
    "CODE_FAN_OUT_WRITE_CONFLICT",
    "CODE_RUN_CANCELLED",
    "AsyncioSleeper",
    "CancelToken",
    "Clock",
    "Engine",
    "Failpoints",
    "RecoveryPlan",
    "ReplayVerdict",
    "Sleeper",
    "SystemClock",
    "derived_fact_key",
    "plan_recovery",
    "request_cancel",
    "request_retry_now",
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
    if transports is None:
        return UnimplementedTransportFactory()
    if isinstance(transports, LiveIoRouter):
        return transports
    if isinstance(transports, LiveTransportFactory) and transports.namespace_group == ALL_NAMESPACES:
        return transports  # takes every namespace itself (e.g. the child-run wrapper, §16): used as is
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

    async def start(
        self, stores: Stores, run: StartRun, *, run_id: RunId | None = None, cancel: CancelToken | None = None
    ) -> RunResult:
        """Validate (nothing stored on failure, §5.1), write the initial snapshot and ``RunStarted``, run.

        ``run_id``: the new run's id, made by the caller (default: the next of ``run_ids``)."""
        return await self._rt.start(stores, run, cancel, run_id=run_id)

    async def resume(self, stores: Stores, run_id: RunId, *, cancel: CancelToken | None = None) -> RunResult:
        """Continue a run from its stream (§13). A finished run returns its result and appends nothing."""
        return await self._rt.resume(stores, run_id, cancel)

    async def replay(
        self,
        stores: Stores,
        source_run_id: RunId,
        *,
        run_id: RunId | None = None,
        cancel: CancelToken | None = None,
    ) -> ReplayVerdict:
        """Replay run R (§0.11): a new run, R's manifest in Replay mode, facts copied from R, then the verdict.

        ``run_id``: the new (replay) run's id, made by the caller (default: the next of ``run_ids``)."""
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
        index = FactIndex.rebuild(src_envs)
        new_run_id = run_id if run_id is not None else rt.run_ids()
        old_prefix = f"|run:{source_run_id}|"
        seed: list[tuple[str, ArtifactId, dict[str, str]]] = []
        for key, pid in index.bindings.items():
            if key.startswith(("mfm:now_millis|", "mfm:random_bytes|")) and old_prefix in key:
                key = key.replace(old_prefix, f"|run:{new_run_id}|", 1)
            seed.append((key, pid, {"replayed_from": str(source_run_id)}))
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
            run_id=new_run_id,
            seed_facts=seed,
        )
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

    async def recover(
        self,
        stores: Stores,
        failed_run_id: RunId,
        *,
        cancel: CancelToken | None = None,
        new_run_id: RunId | None = None,
    ) -> RunResult:
        """Recover a run that ended Failed: a new run carries its completed states over and continues.

        See "Recovery of a failed run" above. Refuses (``run_not_failed``) a run that is unfinished,
        completed or cancelled. Returns the new run's result (its ``run_id`` is the recovery run).
        """
        rt = self._rt
        source = RunId(failed_run_id)
        await plan_recovery(stores, source)
        try:
            envelopes, history = await load_history(stores, source)
            assert history.run_started is not None
            manifest = await load_manifest(stores, history.run_started.manifest_id)
        except MfmError as exc:
            raise RunError.wrap(exc) from exc
        plan = rt.resolve_plan(manifest)
        order = set(topological_order(plan))
        for sid in sorted(history.mentioned):
            if sid not in order:
                raise RunError.invalid_plan(
                    "recovery_state_not_in_plan", f"run history mentions state {sid}, which the resolved plan lacks"
                )
        run_id = RunId(new_run_id) if new_run_id is not None else rt.run_ids()
        if await stores.events.head_seq(run_id) != 0:
            raise RunError.wrap(StorageError.concurrency("run_already_exists", f"run {run_id} already exists"))
        writer = EventWriter(stores.events, run_id, 0, rt.clock)
        try:
            await writer.append(_recovery_head(envelopes, source, _last_failed_state(envelopes)))
        except MfmError as exc:
            raise RunError.wrap(exc) from exc
        return await rt.resume(stores, run_id, cancel)


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """What ``Engine.recover`` will do, for confirmation dialogs (no side effects)."""

    source_run_id: RunId
    failed_state_id: StateId | None
    carried_states: tuple[StateId, ...]
    next_states: tuple[StateId, ...]


async def plan_recovery(stores: Stores, run_id: RunId, plan: ExecutionPlan | None = None) -> RecoveryPlan:
    """Describe the recovery of failed run ``run_id``; ``run_not_failed`` unless it ended Failed."""
    try:
        envelopes, history = await load_history(stores, RunId(run_id))
    except MfmError as exc:
        raise RunError.wrap(exc) from exc
    rc = history.run_completed
    if rc is None or rc.status is not RunStatus.FAILED:
        state = "unfinished" if rc is None else str(rc.status).lower()
        raise RunError.other(
            "run_not_failed", f"run {run_id} is {state}; only a failed run can be recovered (resume the others)"
        )
    failed = _last_failed_state(envelopes)
    carried = tuple(history.completed_order)
    pending: tuple[StateId, ...] = ()
    if plan is not None:
        pending = tuple(s for s in topological_order(plan) if s not in history.completed)
    return RecoveryPlan(RunId(run_id), failed, carried, pending)


def _last_failed_state(envelopes: Sequence[EventEnvelope]) -> StateId | None:
    for env in reversed(envelopes):
        if isinstance(env.event, StateFailed):
            return env.event.state_id
    return None


def _recovery_head(
    envelopes: Sequence[EventEnvelope], source_run_id: RunId, failed_state: StateId | None
) -> list[object]:
    """``RunStarted``, ``recovered_from``, carried fact bindings, then an E/C pair per completed state."""
    started: RunStarted | None = None
    open_: dict[StateId, StateEntered] = {}
    completed: list[tuple[StateEntered, StateCompleted]] = []
    completed_ids: set[StateId] = set()
    facts: list[tuple[str, ArtifactId, StateId | None]] = []
    for env in envelopes:
        ev = env.event
        if isinstance(ev, RunStarted) and started is None:
            started = ev
        elif isinstance(ev, StateEntered):
            open_[ev.state_id] = ev
        elif isinstance(ev, StateCompleted):
            entered = open_.pop(ev.state_id, None)
            if entered is not None:
                completed.append((entered, ev))
                completed_ids.add(ev.state_id)
        elif isinstance(ev, StateFailed):
            open_.pop(ev.state_id, None)
        elif isinstance(ev, DomainEvent) and ev.name == DOMAIN_EVENT_FACT_RECORDED:
            payload = ev.payload if isinstance(ev.payload, dict) else {}
            key, pid = payload.get("key"), payload.get("payload_id")
            if isinstance(key, str) and isinstance(pid, str):
                owner = next(iter(open_)) if len(open_) == 1 else None
                facts.append((key, ArtifactId(pid), owner))
    assert started is not None
    head: list[object] = [
        construct(
            RunStarted,
            op_id=started.op_id,
            manifest_id=started.manifest_id,
            initial_snapshot_id=started.initial_snapshot_id,
        ),
        construct(
            DomainEvent,
            name=DOMAIN_EVENT_RECOVERED_FROM,
            payload={
                "source_run_id": str(source_run_id),
                "failed_state_id": None if failed_state is None else str(failed_state),
                "carried_states": len(completed),
            },
            payload_ref=None,
        ),
    ]
    seen: set[str] = set()
    for key, pid, owner in facts:
        if key in seen or key.startswith(("mfm:now_millis|", "mfm:random_bytes|")):
            continue  # derived keys carry the old run id; the carried states never read them again
        if owner is not None and owner not in completed_ids:
            continue  # observed by an attempt that did not complete: observe again after the fix
        seen.add(key)
        head.append(fact_event(key, pid, {"recovered_from": str(source_run_id)}))
    for entered, done in completed:
        head.append(
            construct(
                StateEntered,
                state_id=entered.state_id,
                attempt=entered.attempt,
                base_snapshot_id=entered.base_snapshot_id,
            )
        )
        head.append(construct(StateCompleted, state_id=done.state_id, context_snapshot_id=done.context_snapshot_id))
    return head


def _status_of(phase: RunPhase) -> RunStatus | None:
    return {
        RunPhase.COMPLETED: RunStatus.COMPLETED,
        RunPhase.FAILED: RunStatus.FAILED,
        RunPhase.CANCELLED: RunStatus.CANCELLED,
    }.get(phase)


async def _load_object(stores: Stores, snapshot_id: ArtifactId) -> dict[str, object]:
    return await SnapshotCache(stores.artifacts).load(snapshot_id)


async def request_cancel(stores: Stores, run_id: RunId, reason: str = "") -> CancelRequest:
    """Ask a running run to cancel (any process). Refuses unknown and finished runs."""
    run_id = RunId(run_id)
    control, _ = await _unfinished_run_control(stores, run_id, "request cancel", "there is nothing to cancel")
    return await control.request_cancel(run_id, reason)


async def _unfinished_run_control(
    stores: Stores, run_id: RunId, what: str, nothing: str
) -> tuple[ControlStore, list[EventEnvelope]]:
    """The control store of an unfinished run and its stream, for a control request (``what``); refuses stores
    without one, unknown runs and finished runs (``run_already_finished``: ``nothing`` says why)."""
    if stores.control is None:
        raise StorageError.other("control_store_missing", f"these stores have no control store; cannot {what}")
    try:
        envelopes, history = await load_history(stores, run_id)
    except StorageError:
        raise
    except MfmError as exc:
        raise RunError.wrap(exc) from exc
    if history.run_completed is not None:
        raise StorageError.other(
            "run_already_finished", f"run {run_id} already finished ({history.run_completed.status}); {nothing}"
        )
    return stores.control, envelopes


async def request_retry_now(stores: Stores, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest:
    """Ask a run waiting out a retry backoff to start ``attempt`` of ``state_id`` now (any process).

    The run's worker polls the control store like a cancel request. Refuses unknown and finished runs
    (``run_already_finished``) and a state that is not waiting for that attempt (``not_in_backoff``).
    """
    run_id = RunId(run_id)
    control, envelopes = await _unfinished_run_control(stores, run_id, "retry now", "there is no backoff to cut short")
    waiting = False
    for env in envelopes:
        ev = env.event
        if isinstance(ev, DomainEvent) and ev.name == DOMAIN_EVENT_RETRY_SCHEDULED and isinstance(ev.payload, dict):
            if ev.payload.get("state_id") == str(state_id):
                waiting = ev.payload.get("next_attempt") == attempt
        elif isinstance(ev, StateEntered) and str(ev.state_id) == str(state_id) and ev.attempt == attempt:
            waiting = False
    if not waiting:
        raise StorageError.other(
            "not_in_backoff", f"run {run_id}: state {state_id} is not waiting to start attempt {attempt + 1}"
        )
    return await control.request_retry_now(run_id, str(state_id), int(attempt))
