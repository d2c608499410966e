"""Entry points behind ``Engine``: start (§5.1), resume (§13) and replay of a past run (§0.11)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from engine._kinds import ArtifactKind
from engine._runtime.cancel import CancelToken, CancelWatcher
from engine._runtime.clock import Clock, Failpoints, Sleeper
from engine._runtime.context_runtime import SnapshotCache
from engine._runtime.envelopes import EnvelopeViolation, History, analyze
from engine._runtime.facts import FactIndex
from engine._runtime.invocation import Invocation, Override
from engine._runtime.pending import pending_for
from engine._runtime.scheduler import Scheduler, max_concurrency
from engine._runtime.writer import EventWriter
from engine._wire import construct
from engine.artifacts import read_canonical_json, verified_put_json
from engine.config import FanOutJoin, IoMode, RunConfig, RunManifest
from engine.engine import RunPhase, RunResult, StartRun, Stores
from engine.errors import ContextError, ErrorCategory, ErrorInfo, MfmError, RunError, StateError, StorageError
from engine.events import EventEnvelope, RunCompleted, RunStarted, RunStatus, StateFailed, fact_event
from engine.hashing import CanonicalJsonError, artifact_id_for_json
from engine.ids import ArtifactId, RunId, StateId
from engine.meta import SideEffectKind, StateMeta
from engine.plan import ExecutionPlan, PlanValidationError, topological_order
from engine.transport import LiveTransportFactory

__all__ = ["Runtime", "check_manifest_contract", "validate_execution_plan"]

CODE_ORPHAN_RECOVERED = "orphan_attempt_recovered"
ORPHAN_MESSAGE = "orphaned state attempt recovered during resume"


@dataclass
class Runtime:
    """The engine's collaborators, as injected into ``Engine``."""

    plan_resolver: Callable[[RunManifest], ExecutionPlan] | None
    factory: LiveTransportFactory
    clock: Clock
    sleeper: Sleeper
    run_ids: Callable[[], RunId]
    random_source: Callable[[int], bytes] | None
    failpoints: Failpoints | None
    cancel_poll_interval: float
    last_invocation: Invocation | None = field(default=None, repr=False)

    # ------------------------------------------------------------------------------------ start

    async def start(
        self,
        stores: Stores,
        run: StartRun,
        cancel: CancelToken | None,
        *,
        run_id: RunId | None = None,
        seed_facts: list[tuple[str, ArtifactId, dict[str, str]]] | None = None,
    ) -> RunResult:
        """Start a new run: ``run_id`` given by the caller, else the next of ``run_ids`` (drawn once the run is
        known to be valid)."""
        check_execution_mode(run.run_config)
        check_manifest_contract(run.manifest, run.manifest_id, run.plan, run.run_config)
        metas: dict[StateId, StateMeta] = {}
        order = validate_execution_plan(run.plan, metas)
        await check_stored_manifest(stores, run.manifest, run.manifest_id)
        run_id = run_id if run_id is not None else self.run_ids()
        blobs = pending_for(stores.events, stores.artifacts)
        if blobs is not None:  # what the run creates commits with its events
            stores = replace(stores, artifacts=blobs)
        snapshots = SnapshotCache(stores.artifacts)
        try:
            initial = run.initial_context.dump()
            if not isinstance(initial, dict):
                raise ContextError.serialization("context_snapshot_not_object", "initial context is not a JSON object")
            initial_id = await snapshots.write(initial)
            writer = EventWriter(stores.events, run_id, 0, self.clock, blobs)
            facts = FactIndex()
            head_events: list[Any] = [
                construct(RunStarted, op_id=run.plan.op_id, manifest_id=run.manifest_id, initial_snapshot_id=initial_id)
            ]
            for key, pid, meta in seed_facts or ():
                head_events.append(fact_event(key, pid, meta))
                facts.bind_if_unbound(key, pid)
            writer.defer(head_events)  # appended with the first StateEntered (or RunCompleted{Cancelled})
        except MfmError as exc:
            raise RunError.wrap(exc) from exc
        inv = self._invocation(
            stores, run_id, run.plan, order, run.run_config, writer, facts, snapshots, cancel, metas=metas
        )
        inv.checkpoint_id, inv.checkpoint_value = initial_id, initial
        async with _driving(inv):
            return await Scheduler(inv).run()

    # ------------------------------------------------------------------------------------ resume

    async def resume(self, stores: Stores, run_id: RunId, cancel: CancelToken | None) -> RunResult:
        try:
            return await self._resume(stores, RunId(run_id), cancel)
        except MfmError as exc:
            raise RunError.wrap(exc) from exc

    async def _resume(self, stores: Stores, run_id: RunId, cancel: CancelToken | None) -> RunResult:
        envelopes, history = await load_history(stores, run_id)
        facts = FactIndex.rebuild(envelopes)
        del envelopes  # not needed by the rest of the run (which may be long): let it go
        assert history.run_started is not None
        manifest = await load_manifest(stores, history.run_started.manifest_id)
        check_execution_mode(manifest.run_config)
        if history.run_started.op_id != manifest.op_id:
            raise RunError.invalid_plan(
                "run_started_op_id_mismatch",
                f"RunStarted.op_id {history.run_started.op_id} differs from the manifest's op_id {manifest.op_id}",
            )
        plan = self.resolve_plan(manifest)
        if plan.op_id != manifest.op_id:
            raise RunError.invalid_plan(
                "plan_op_id_mismatch", f"resolved plan op_id {plan.op_id} differs from manifest op_id {manifest.op_id}"
            )
        metas: dict[StateId, StateMeta] = {}
        order = validate_execution_plan(plan, metas)
        in_plan = set(order)
        for sid in sorted(history.mentioned):
            if sid not in in_plan:
                raise RunError.invalid_plan(
                    "recovery_state_not_in_plan", f"run history mentions state {sid}, which the resolved plan lacks"
                )
        if history.run_completed is not None:
            rc = history.run_completed
            return RunResult(run_id=run_id, phase=_phase(rc.status), final_snapshot_id=rc.final_snapshot_id)
        cfg = manifest.run_config
        assert history.last_checkpoint is not None
        blobs = pending_for(stores.events, stores.artifacts)
        if blobs is not None:  # what the run creates commits with its events
            stores = replace(stores, artifacts=blobs)
        snapshots = SnapshotCache(stores.artifacts)
        writer = EventWriter(stores.events, run_id, history.last_seq, self.clock, blobs)
        inv = self._invocation(stores, run_id, plan, order, cfg, writer, facts, snapshots, cancel, metas=metas)
        inv.completed = dict(history.completed)
        inv.checkpoint_id = history.last_checkpoint
        inv.checkpoint_value = None  # loaded when first needed: a bad snapshot fails inside the attempt (O94)

        # §13 step 9, for every orphan in topological order (§0.5).
        pos = {s: i for i, s in enumerate(order)}
        orphans = sorted(history.orphans, key=lambda o: pos[o.state_id])
        recovery: list[Any] = [
            construct(
                StateFailed,
                state_id=o.state_id,
                error=StateError(
                    ErrorInfo.new(
                        CODE_ORPHAN_RECOVERED, ORPHAN_MESSAGE, category=ErrorCategory.UNKNOWN, retryable=True
                    ),
                    o.state_id,
                ),
                failure_snapshot_id=None,
            )
            for o in orphans
        ]
        overrides = {o.state_id: Override(o.attempt + 1, o.base_snapshot_id) for o in orphans}
        # §13 step 10, generalised to every not-completed state.
        terminal_failure = False
        for sid in order:
            if sid in inv.completed or sid in overrides:
                continue
            failure = history.failures.get(sid)
            if failure is not None:
                # A crash between an orphan's recovery StateFailed and its restart's StateEntered leaves the
                # restart to do: like the orphan restart itself (§13 step 9) it is not bounded by max_attempts,
                # else a few unlucky crashes would fail a run that never failed.
                restart = failure.code == CODE_ORPHAN_RECOVERED
                if not failure.retryable or (not restart and failure.attempt + 1 >= cfg.retry_policy.max_attempts):
                    terminal_failure = True
                    break
                overrides[sid] = Override(failure.attempt + 1, failure.base_snapshot_id)
            elif sid in history.last_attempt:
                overrides[sid] = Override(history.last_attempt[sid] + 1, inv.checkpoint_id)
        if terminal_failure:
            recovery.append(construct(RunCompleted, status=RunStatus.FAILED, final_snapshot_id=inv.checkpoint_id))
            await writer.append(recovery)
            return RunResult(run_id=run_id, phase=RunPhase.FAILED, final_snapshot_id=inv.checkpoint_id)
        writer.defer(recovery)  # appended with the restarts' StateEntered, in the scheduler's first batch
        scheduler = Scheduler(inv, overrides)
        if max_concurrency(cfg) > 1:
            scheduler.seed_written_by(await written_keys(snapshots, history, inv))
        async with _driving(inv):
            return await scheduler.run()

    def resolve_plan(self, manifest: RunManifest) -> ExecutionPlan:
        if self.plan_resolver is None:
            raise RunError.other(
                "plan_resolver_missing", "this engine has no plan_resolver; resume and replay need one"
            )
        return self.plan_resolver(manifest)

    # ------------------------------------------------------------------------------------ shared

    def _invocation(
        self,
        stores: Stores,
        run_id: RunId,
        plan: ExecutionPlan,
        order: list[StateId],
        cfg: RunConfig,
        writer: EventWriter,
        facts: FactIndex,
        snapshots: SnapshotCache,
        cancel: CancelToken | None,
        *,
        metas: dict[StateId, StateMeta] | None = None,
    ) -> Invocation:
        watcher = CancelWatcher(run_id, cancel, stores.control, self.cancel_poll_interval)
        inv = Invocation(
            stores=stores,
            run_id=run_id,
            plan=plan,
            order=order,
            config=cfg,
            writer=writer,
            facts=facts,
            snapshots=snapshots,
            factory=self.factory,
            clock=self.clock,
            sleeper=self.sleeper,
            random_source=self.random_source,
            failpoints=self.failpoints,
            watcher=watcher,
            checkpoint_id=ArtifactId("0" * 64),
            checkpoint_value={},
            metas=metas or {},
        )
        self.last_invocation = inv
        return inv


# ---------------------------------------------------------------------------------------- helpers
@contextlib.asynccontextmanager
async def _driving(inv: Invocation) -> AsyncIterator[None]:
    """Around a scheduler's run: the cancel watcher checks at once and then polls; an ``MfmError`` leaves as the
    ``RunError`` the caller expects (§3)."""
    await inv.watcher.check_now()
    inv.watcher.start()
    try:
        yield
    except MfmError as exc:
        raise RunError.wrap(exc) from exc
    finally:
        await inv.watcher.stop()


def _phase(status: RunStatus) -> RunPhase:
    return {
        RunStatus.COMPLETED: RunPhase.COMPLETED,
        RunStatus.FAILED: RunPhase.FAILED,
        RunStatus.CANCELLED: RunPhase.CANCELLED,
    }[status]


def check_execution_mode(cfg: RunConfig) -> None:
    mode = cfg.execution_mode
    if isinstance(mode, FanOutJoin) and mode.max_concurrency < 1:
        raise RunError.invalid_plan("invalid_plan", "FanOutJoin.max_concurrency must be at least 1")


def check_manifest_contract(
    manifest: RunManifest, manifest_id: ArtifactId, plan: ExecutionPlan, run_config: RunConfig
) -> None:
    """§5.1 step 2."""
    try:
        value = manifest.model_dump(mode="json")
    except Exception:
        raise RunError.invalid_plan("manifest_serialize_failed", "manifest could not be serialized") from None
    try:
        computed = artifact_id_for_json(value)
    except CanonicalJsonError as exc:
        if exc.is_secret:
            raise RunError.invalid_plan("secrets_detected", "manifest contains secret-looking content") from None
        if exc.is_float:
            raise RunError.invalid_plan(
                "manifest_not_canonical", "manifest is not canonical JSON (floats or unsafe integers)"
            ) from None
        raise RunError.invalid_plan("manifest_serialize_failed", f"manifest could not be serialized: {exc}") from None
    if computed != manifest_id:
        raise RunError.invalid_plan(
            "manifest_id_mismatch", f"manifest_id {manifest_id} is not the canonical hash of the manifest ({computed})"
        )
    if manifest.op_id != plan.op_id:
        raise RunError.invalid_plan(
            "manifest_op_id_mismatch", f"manifest op_id {manifest.op_id} differs from plan op_id {plan.op_id}"
        )
    if manifest.run_config != run_config:
        raise RunError.invalid_plan("run_config_mismatch", "StartRun.run_config differs from manifest.run_config")


def validate_execution_plan(plan: ExecutionPlan, metas: dict[StateId, StateMeta] | None = None) -> list[StateId]:
    """§6.1 checks (→ ``invalid_plan``) then side-effect declarations (§0.10 → ``missing_idempotency_key``).

    ``metas``, when given, receives every state's ``meta()`` (asked once per state and invocation)."""
    try:
        order = topological_order(plan)
    except PlanValidationError as exc:
        raise RunError.invalid_plan("invalid_plan", f"invalid plan: {exc}") from None
    for node in plan.graph.states:
        meta = node.state.meta()
        if metas is not None:
            metas[node.id] = meta
        if meta.side_effects is SideEffectKind.APPLY_SIDE_EFFECT and not meta.idempotency.key_value:
            raise RunError.invalid_plan(
                "missing_idempotency_key",
                f"state {node.id} applies a side effect but declares no Idempotency::Key",
            )
    return order


async def check_stored_manifest(stores: Stores, manifest: RunManifest, manifest_id: ArtifactId) -> None:
    """§5.1 steps 4-5."""
    try:
        if not await stores.artifacts.exists(manifest_id):
            raise StorageError.not_found("manifest_not_found", f"manifest {manifest_id} is not stored")
        stored = await load_manifest(stores, manifest_id)
    except MfmError as exc:
        raise RunError.wrap(exc) from exc
    if stored != manifest:
        raise RunError.wrap(
            StorageError.corruption("manifest_artifact_mismatch", f"stored manifest {manifest_id} differs")
        )


async def load_manifest(stores: Stores, manifest_id: ArtifactId) -> RunManifest:
    value = await read_canonical_json(stores.artifacts, manifest_id)
    try:
        return RunManifest.model_validate(value)
    except (ValidationError, ValueError):
        raise ContextError.serialization(
            "manifest_deserialize_failed", f"artifact {manifest_id} is not a RunManifest"
        ) from None


async def load_history(stores: Stores, run_id: RunId) -> tuple[list[EventEnvelope], History]:
    """§13 steps 1-4."""
    head = await stores.events.head_seq(run_id)
    if head == 0:
        raise StorageError.not_found("run_not_found", f"run {run_id} has no events")
    with _gc_paused():
        envelopes = await stores.events.read_range(run_id, 1, None)
    try:
        history = analyze(envelopes, run_id)
    except EnvelopeViolation as exc:
        raise exc.to_run_error() from None
    if history.run_started is None:
        raise RunError.invalid_plan("missing_run_started", f"run {run_id} has no RunStarted event")
    return envelopes, history


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a whole stream is decoded, then file what was decoded as old.

    Decoding allocates a few container objects per envelope and keeps them all, so the collections these
    allocations trigger walk the growing list again and again for nothing; and once the collector is back on, the
    many young survivors are walked by a young, then a middle, then a full collection. Instead, ``gc.freeze()`` +
    ``gc.unfreeze()`` move every tracked object straight to the oldest generation (list splicing, no walk). Nothing
    is leaked: reference counting frees garbage meanwhile as usual and the next full collection sees everything.
    Reading 100k envelopes then costs about a quarter less CPU. The collector is left as it was found, and the
    freeze step is skipped when someone else uses ``gc.freeze``.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


async def written_keys(snapshots: SnapshotCache, history: History, inv: Invocation) -> dict[str, StateId]:
    """Fan-out resume: which completed state changed which key (diff of consecutive checkpoints)."""
    assert history.run_started is not None
    prev = await snapshots.load(history.run_started.initial_snapshot_id)
    out: dict[str, StateId] = {}
    for sid in history.completed_order:
        cur = await snapshots.load(history.completed[sid])
        for k in set(prev) | set(cur):
            if prev.get(k, _MISSING) != cur.get(k, _MISSING):
                out[k] = sid
        prev = cur
    return out


_MISSING: Any = object()


async def store_manifest(stores: Stores, manifest: RunManifest) -> ArtifactId:
    try:
        return await verified_put_json(stores.artifacts, ArtifactKind.MANIFEST, manifest.model_dump(mode="json"))
    except CanonicalJsonError as exc:
        raise RunError.invalid_plan("manifest_not_canonical", f"manifest cannot be stored: {exc}") from None


def replay_manifest(manifest: RunManifest) -> RunManifest:
    cfg = manifest.run_config.model_copy(update={"io_mode": IoMode.REPLAY})
    return manifest.model_copy(update={"run_config": cfg})
