"""Child runs (ENGINE-SPEC §16, "Milestone 5"): the transport wrapper, its supervisor and the SDK helpers.

:class:`ChildRunFactory` wraps the live transport factory. Two reserved namespaces are served by it,
everything else is forwarded to the wrapped factory unchanged:

* ``machine.child_run.spawn`` (request ``child_run_spawn_v1``) creates the child run — id = UUID v5 of
  (parent run id, fact key), manifest as §16 specifies — writes its initial snapshot and ``RunStarted``
  and launches it in the background (the supervisor keeps at most one task per child id); a child
  stream that already exists is checked (``child_run_conflict``) and, if unfinished with no task,
  resumed in the background;
* ``machine.child_run.await`` (request ``child_run_await_v1``) joins the child's task, or resumes the
  child synchronously when no task runs in this process (after a crash of the parent's worker), and
  answers its status (``Running`` maps to ``Failed``) and final snapshot.

Both calls require a fact key, so Live IO records their responses: a retry or a resume of the parent
gets the recorded response (no second spawn), and the parent's replay is served from those facts
(children are not re-executed).

**Grandchildren** (§16 "UNCONFIRMED"): this project follows the reference runtime. A child runs with
the *un-wrapped* factory behind a guard that refuses the two reserved namespaces with
``child_run_depth_exceeded``: the tree depth is bounded at 1 (parent → children).

The SDK helpers :func:`spawn_child_run_v1` / :func:`await_child_run_v1` make the calls and add the
linkage events ``child_run_spawned`` / ``child_run_completed``, emitted only when the call's fact did
not exist before it (so a resume or a replay does not duplicate them). Under the ``Minimal`` event
profile those events are dropped (§9): the run tree (:func:`children_of`) is read from them, so an
operation that spawns children should run under ``Normal`` or above.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from engine._kinds import ArtifactKind
from engine._runtime.cancel import CancelToken
from engine._runtime.clock import Clock, Sleeper, as_clock
from engine._runtime.context_runtime import SnapshotCache
from engine._runtime.executor import check_execution_mode, check_manifest_contract
from engine._runtime.pending import PendingArtifacts
from engine._runtime.writer import EventWriter
from engine._wire import construct
from engine.artifacts import read_canonical_json, verified_put_json
from engine.config import RunConfig, RunManifest
from engine.engine import RunPhase, RunResult, Stores
from engine.errors import IoError, MfmError, StorageError, StorageErrorKind
from engine.events import (
    DOMAIN_EVENT_CHILD_RUN_COMPLETED,
    DOMAIN_EVENT_CHILD_RUN_SPAWNED,
    ChildRunCompleted,
    ChildRunSpawned,
    DomainEvent,
    RunCompleted,
    RunStarted,
    RunStatus,
)
from engine.hashing import CanonicalJsonError
from engine.ids import ArtifactId, FactKey, OpId, RunId
from engine.io import IoCall, IoProvider
from engine.live_io_router import ALL_NAMESPACES, LiveIoRouter, UnimplementedTransportFactory, namespace_matches
from engine.plan import ExecutionPlan
from engine.recorder import EventRecorder
from engine.runtime import Engine
from engine.transport import LiveTransport, LiveTransportFactory, TransportContext

__all__ = [
    "CHILD_RUN_AWAIT",
    "CHILD_RUN_GROUP",
    "CHILD_RUN_SPAWN",
    "PARENT_CANCEL_GRACE_SECONDS",
    "ChildLink",
    "ChildRunAwaitRequest",
    "ChildRunAwaitResponse",
    "ChildRunFactory",
    "ChildRunSpawnRequest",
    "ChildRunSpawnResponse",
    "await_child_run_v1",
    "child_manifest",
    "child_run_id",
    "children_of",
    "request_cancel_children",
    "spawn_child_run_v1",
    "unfinished_children",
]

CHILD_RUN_GROUP = "machine.child_run"
CHILD_RUN_SPAWN = "machine.child_run.spawn"
CHILD_RUN_AWAIT = "machine.child_run.await"


# ------------------------------------------------------------------------------------------- shapes


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChildRunSpawnRequest(_Shape):
    kind: str = "child_run_spawn_v1"
    op_id: OpId
    op_version: str
    op_config: Any = None
    input: Any = None
    run_config: RunConfig
    initial_context: Any = None


class ChildRunSpawnResponse(_Shape):
    parent_run_id: RunId
    child_run_id: RunId
    child_manifest_id: ArtifactId
    child_initial_snapshot_id: ArtifactId


class ChildRunAwaitRequest(_Shape):
    kind: str = "child_run_await_v1"
    child_run_id: RunId
    child_manifest_id: ArtifactId


class ChildRunAwaitResponse(_Shape):
    child_run_id: RunId
    status: RunStatus
    final_snapshot_id: ArtifactId | None
    final_snapshot: Any = None


def child_run_id(parent_run_id: RunId | str, fact_key: str) -> RunId:
    """UUID v5 with namespace = the parent run's UUID and name = the fact key's UTF-8 bytes (§16)."""
    return RunId(str(uuid.uuid5(uuid.UUID(str(parent_run_id)), fact_key)))


def child_manifest(req: ChildRunSpawnRequest) -> RunManifest:
    """The child's manifest exactly as §16 builds it (``build``: all null, empty env allowlist)."""
    step = {"step_id": "main", "op_id": str(req.op_id), "op_version": req.op_version, "op_config": req.op_config}
    pipeline = {"machine_id": str(req.op_id), "pipeline_version": req.op_version, "steps": [step]}
    return RunManifest(
        op_id=req.op_id,
        op_version=req.op_version,
        input_params={"pipeline": pipeline, "input": req.input},
        run_config=req.run_config,
    )


def _err(code: str, message: str) -> IoError:
    return IoError.other(code, message)


def _parse_request(model: type[_Shape], kind: str, request: Any) -> Any:
    if not isinstance(request, dict) or request.get("kind") != kind:
        raise _err("child_run_request_invalid", f"child run request must be an object with kind {kind!r}")
    try:
        return model.model_validate(request)
    except (ValidationError, ValueError) as exc:
        first = exc.errors(include_url=False)[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"]) or "(request)"
        raise _err("child_run_request_invalid", f"invalid {kind} request: {where}: {first['msg']}") from None


# ------------------------------------------------------------------------------------------- the wrapper


class _NoGrandchildren:
    """The factory children run with: the un-wrapped one, with the reserved namespaces refused."""

    def __init__(self, inner: LiveTransportFactory) -> None:
        self._inner = inner

    @property
    def namespace_group(self) -> str:
        return ALL_NAMESPACES

    def make(self, context: TransportContext) -> LiveTransport:
        return _GuardedTransport(self._inner, context)


class _GuardedTransport:
    def __init__(self, inner: LiveTransportFactory, context: TransportContext) -> None:
        self._inner_factory = inner
        self._context = context
        self._inner: LiveTransport | None = None

    async def call(self, namespace: str, request: Any) -> Any:
        if isinstance(namespace, str) and namespace_matches(namespace, CHILD_RUN_GROUP):
            raise _err(
                "child_run_depth_exceeded",
                f"run {self._context.run_id} is a child run; a child cannot spawn or await children (depth 1)",
            )
        if self._inner is None:
            self._inner = self._inner_factory.make(self._context)
        return await self._inner.call(namespace, request)


PARENT_CANCEL_GRACE_SECONDS = 5.0
"""How long an await of a child cancelled along with its parent leaves the parent's cancel to land first."""


def durable_stores(stores: Stores) -> Stores:
    """The stores under a parent's pending-blob overlay (issue 12's unit of work): a child's manifest, initial
    snapshot and stream must be durable before the parent's next commit names them (a parent that crashes before
    that commit must still find its running children, CONFORMANCE 88), and a child run gets its own overlay."""
    if isinstance(stores.artifacts, PendingArtifacts):
        return dataclasses.replace(stores, artifacts=stores.artifacts.store)
    return stores


class ChildRunFactory:
    """Wraps the live transport factory with the two ``machine.child_run.*`` namespaces (§16).

    ``inner``: the factory (or factories, routed by namespace) that serves every other namespace and
    that children run with. ``plan_resolver`` resolves a child's plan from its manifest (children are
    resumed by the same resolver, in this process or by any worker). One instance is one supervisor:
    at most one background task per child id.
    """

    def __init__(
        self,
        inner: Sequence[LiveTransportFactory] | LiveTransportFactory | None,
        *,
        plan_resolver: Callable[[RunManifest], ExecutionPlan],
        clock: Clock | Callable[[], int] | None = None,
        sleeper: Sleeper | None = None,
        cancel_poll_interval: float = 0.2,
        cancel: CancelToken | None = None,
    ) -> None:
        if inner is None:
            factory: LiveTransportFactory = UnimplementedTransportFactory()
        elif isinstance(inner, LiveTransportFactory):
            factory = inner
        else:
            factory = LiveIoRouter(list(inner))
        self.inner = factory
        self.plan_resolver = plan_resolver
        self._clock = as_clock(clock)  # the writer of a child's RunStarted stamps with it
        self.child_engine = Engine(
            plan_resolver=plan_resolver,
            transports=_NoGrandchildren(factory),
            clock=self._clock,
            sleeper=sleeper,
            cancel_poll_interval=cancel_poll_interval,
        )
        self.cancel = cancel  # a worker's token (SIGTERM): it stops the children with the parent
        self.tasks: dict[RunId, asyncio.Task[RunResult]] = {}
        self.spawned = 0  # children initialised by this supervisor (tests and benchmarks)

    @property
    def namespace_group(self) -> str:
        return ALL_NAMESPACES

    def make(self, context: TransportContext) -> LiveTransport:
        return ChildRunTransport(self, context)

    # ------------------------------------------------------------------------------------- supervisor

    def _launch(self, stores: Stores, child: RunId) -> None:
        task = self.tasks.get(child)
        if task is not None and not task.done():
            return
        self.tasks[child] = asyncio.create_task(
            self.child_engine.resume(stores, child, cancel=self.cancel), name=f"child-run {child}"
        )

    async def drain(self) -> None:
        """Wait for every child task of this supervisor (a worker does, before it exits, so that a child whose
        parent ended without awaiting it — a cancel, a failure — still finishes or closes as Cancelled)."""
        while self.tasks:
            tasks = list(self.tasks.values())
            await asyncio.gather(*tasks, return_exceptions=True)
            for child, task in list(self.tasks.items()):
                if task.done():
                    del self.tasks[child]

    async def spawn(self, context: TransportContext, request: Any, fact_key: str) -> dict[str, Any]:
        req: ChildRunSpawnRequest = _parse_request(ChildRunSpawnRequest, "child_run_spawn_v1", request)
        stores = durable_stores(context.stores)
        child = child_run_id(context.run_id, fact_key)
        manifest = child_manifest(req)
        try:
            manifest_id = await verified_put_json(stores.artifacts, ArtifactKind.MANIFEST, manifest.to_json_value())
        except (MfmError, CanonicalJsonError) as exc:
            raise _err("child_run_engine_failed", f"child manifest could not be stored: {exc}") from None
        started = await _run_started(stores, child)
        if started is None:
            await self._initialise(stores, child, manifest, manifest_id, req.initial_context)
            started = await _run_started(stores, child)
            assert started is not None
            if started.manifest_id != manifest_id:
                raise StorageError.concurrency("run_already_exists", f"child run {child} exists with another manifest")
            initial_id = started.initial_snapshot_id
            self._launch(stores, child)
        else:
            if started.manifest_id != manifest_id:
                raise _err(
                    "child_run_conflict",
                    f"child run {child} exists with manifest {started.manifest_id}, not {manifest_id}",
                )
            initial_id = started.initial_snapshot_id
            if not await _finished(stores, child):
                self._launch(stores, child)
        return ChildRunSpawnResponse(
            parent_run_id=context.run_id,
            child_run_id=child,
            child_manifest_id=manifest_id,
            child_initial_snapshot_id=initial_id,
        ).model_dump(mode="json")

    async def _initialise(
        self, stores: Stores, child: RunId, manifest: RunManifest, manifest_id: ArtifactId, initial: Any
    ) -> None:
        """§16: plan resolved, initial context built, execution mode and manifest contract checked, then the
        initial snapshot and ``RunStarted``. A concurrent initialiser of the same id is tolerated."""
        try:
            plan = self.plan_resolver(manifest)
            check_execution_mode(manifest.run_config)
            check_manifest_contract(manifest, manifest_id, plan, manifest.run_config)
            value = {} if initial is None else initial
            if not isinstance(value, dict):
                raise _err("child_run_request_invalid", "initial_context must be a JSON object or null")
            initial_id = await SnapshotCache(stores.artifacts).write(value)
            writer = EventWriter(stores.events, child, 0, self._clock)
            rs = construct(RunStarted, op_id=plan.op_id, manifest_id=manifest_id, initial_snapshot_id=initial_id)
            await writer.append([rs])
        except IoError:
            raise
        except StorageError as exc:
            if exc.kind is StorageErrorKind.CONCURRENCY:
                return  # someone else initialised it: the caller re-reads RunStarted
            raise _err("child_run_engine_failed", f"child run {child} could not be started: {exc.message}") from None
        except MfmError as exc:
            raise _err("child_run_engine_failed", f"child run {child} could not be started: {exc.message}") from None
        except Exception as exc:  # a plan resolver's own failure (unknown op, bad params)
            raise _err("child_run_engine_failed", f"child run {child} could not be started: {exc}") from None
        self.spawned += 1

    async def await_child(self, context: TransportContext, request: Any) -> dict[str, Any]:
        req: ChildRunAwaitRequest = _parse_request(ChildRunAwaitRequest, "child_run_await_v1", request)
        stores = durable_stores(context.stores)
        child = req.child_run_id
        started = await _run_started(stores, child)
        if started is None:
            raise _err("child_run_missing_after_spawn", f"child run {child} has no events")
        if started.manifest_id != req.child_manifest_id:
            raise _err(
                "child_run_conflict",
                f"child run {child} has manifest {started.manifest_id}, not {req.child_manifest_id}",
            )
        task = self.tasks.get(child)
        if task is not None:
            try:
                result = await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    raise _err("child_run_task_failed", f"child run {child}'s task was cancelled") from None
                raise
            except Exception as exc:
                raise _err("child_run_task_failed", f"child run {child} failed: {exc}") from None
            finally:
                if task.done():
                    self.tasks.pop(child, None)
        else:
            try:
                result = await self.child_engine.resume(stores, child, cancel=self.cancel)
            except MfmError as exc:
                if isinstance(exc, StorageError) and exc.kind is StorageErrorKind.NOT_FOUND:
                    raise _err("child_run_missing_after_spawn", f"child run {child}: {exc.message}") from None
                if exc.code in ("run_not_found", "stream_empty"):
                    raise _err("child_run_missing_after_spawn", f"child run {child}: {exc.message}") from None
                raise _err(
                    "child_run_engine_failed", f"child run {child} could not be resumed: {exc.message}"
                ) from None
        status = {
            RunPhase.COMPLETED: RunStatus.COMPLETED,
            RunPhase.FAILED: RunStatus.FAILED,
            RunPhase.CANCELLED: RunStatus.CANCELLED,
            RunPhase.RUNNING: RunStatus.FAILED,
        }[result.phase]
        # The operator cancelled the tree: the parent first, then its children (``cancel_run``). The parent's own
        # cancel watcher interrupts this state within its poll interval; answering now would race it and fail the
        # parent on a child it asked to stop (the parent must end Cancelled too).
        control = stores.control
        if status is RunStatus.CANCELLED and control is not None and await control.cancel_request(context.run_id):
            await asyncio.sleep(PARENT_CANCEL_GRACE_SECONDS)
        final: Any = None
        if result.final_snapshot_id is not None:
            try:
                final = await read_canonical_json(stores.artifacts, result.final_snapshot_id)
            except MfmError as exc:
                raise _err("child_run_engine_failed", f"child run {child}'s final snapshot: {exc.message}") from None
        return ChildRunAwaitResponse(
            child_run_id=child, status=status, final_snapshot_id=result.final_snapshot_id, final_snapshot=final
        ).model_dump(mode="json")


class ChildRunTransport:
    """One attempt's transport: the reserved namespaces here, the rest to the wrapped factory."""

    def __init__(self, owner: ChildRunFactory, context: TransportContext) -> None:
        self._owner = owner
        self._context = context
        self._inner: LiveTransport | None = None

    async def call(self, namespace: str, request: Any) -> Any:
        return await self.call_keyed(namespace, request, None)

    async def call_keyed(self, namespace: str, request: Any, fact_key: str | None) -> Any:
        """A call with the fact key Live IO binds its response to (the reserved namespaces need it)."""
        if namespace in (CHILD_RUN_SPAWN, CHILD_RUN_AWAIT):
            if fact_key is None:
                raise IoError.missing_fact_key(f"{namespace} requires a fact key")
            if namespace == CHILD_RUN_SPAWN:
                return await self._owner.spawn(self._context, request, fact_key)
            return await self._owner.await_child(self._context, request)
        if self._inner is None:
            self._inner = self._owner.inner.make(self._context)
        return await self._inner.call(namespace, request)


async def _run_started(stores: Stores, run_id: RunId) -> RunStarted | None:
    if await stores.events.head_seq(run_id) == 0:
        return None
    first = await stores.events.read_range(run_id, 1, 1)
    if not first or not isinstance(first[0].event, RunStarted):
        raise _err("child_run_engine_failed", f"child run {run_id}'s stream does not start with RunStarted")
    return first[0].event


async def _finished(stores: Stores, run_id: RunId) -> bool:
    head = await stores.events.head_seq(run_id)
    last = await stores.events.read_range(run_id, head, head)
    return bool(last) and isinstance(last[0].event, RunCompleted)


# ------------------------------------------------------------------------------------------- SDK helpers


async def spawn_child_run_v1(
    io: IoProvider, rec: EventRecorder, fact_key: str, request: ChildRunSpawnRequest
) -> ChildRunSpawnResponse:
    """Spawn (or find again) the child bound to ``fact_key``; emit ``child_run_spawned`` the first time only."""
    existed = await io.get_recorded_fact(fact_key) is not None
    try:
        body = request.model_dump(mode="json")
    except Exception:
        raise _err(
            "child_run_spawn_request_serialize_failed", "child run spawn request could not be serialised"
        ) from None
    result = await io.call(IoCall(namespace=CHILD_RUN_SPAWN, request=body, fact_key=FactKey(fact_key)))
    try:
        response = ChildRunSpawnResponse.model_validate(result.response)
    except (ValidationError, ValueError):
        raise _err("child_run_spawn_response_invalid", "child run spawn response has the wrong shape") from None
    if not existed:
        payload = ChildRunSpawned(
            parent_run_id=response.parent_run_id,
            child_run_id=response.child_run_id,
            child_manifest_id=response.child_manifest_id,
        )
        await rec.emit(DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_SPAWNED, payload=payload.model_dump(mode="json")))
    return response


async def await_child_run_v1(
    io: IoProvider, rec: EventRecorder, fact_key: str, spawned: ChildRunSpawnResponse
) -> ChildRunAwaitResponse:
    """Join the child; emit ``child_run_completed`` the first time only."""
    existed = await io.get_recorded_fact(fact_key) is not None
    body = ChildRunAwaitRequest(child_run_id=spawned.child_run_id, child_manifest_id=spawned.child_manifest_id)
    result = await io.call(
        IoCall(namespace=CHILD_RUN_AWAIT, request=body.model_dump(mode="json"), fact_key=FactKey(fact_key))
    )
    try:
        response = ChildRunAwaitResponse.model_validate(result.response)
    except (ValidationError, ValueError):
        raise _err("child_run_await_response_invalid", "child run await response has the wrong shape") from None
    if not existed:
        payload = ChildRunCompleted(
            child_run_id=response.child_run_id, status=response.status, final_snapshot_id=response.final_snapshot_id
        )
        await rec.emit(DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_COMPLETED, payload=payload.model_dump(mode="json")))
    return response


# ------------------------------------------------------------------------------------------- the tree


class ChildLink(_Shape):
    """A child as its parent's stream announces it (``child_run_spawned``, then ``child_run_completed``)."""

    child_run_id: RunId
    child_manifest_id: ArtifactId
    status: RunStatus | None = None
    final_snapshot_id: ArtifactId | None = None


def children_of(envelopes: Sequence[Any]) -> list[ChildLink]:
    """The children announced in a parent's events, in spawn order (malformed linkage events are skipped)."""
    links: dict[str, ChildLink] = {}
    for env in envelopes:
        ev = getattr(env, "event", env)
        if not isinstance(ev, DomainEvent):
            continue
        try:
            if ev.name == DOMAIN_EVENT_CHILD_RUN_SPAWNED:
                sp = ChildRunSpawned.model_validate(ev.payload)
                links.setdefault(
                    str(sp.child_run_id),
                    ChildLink(child_run_id=sp.child_run_id, child_manifest_id=sp.child_manifest_id),
                )
            elif ev.name == DOMAIN_EVENT_CHILD_RUN_COMPLETED:
                done = ChildRunCompleted.model_validate(ev.payload)
                link = links.get(str(done.child_run_id))
                if link is not None:
                    links[str(done.child_run_id)] = link.model_copy(
                        update={"status": done.status, "final_snapshot_id": done.final_snapshot_id}
                    )
        except (ValidationError, ValueError):
            continue
    return list(links.values())


async def unfinished_children(stores: Stores, run_id: RunId) -> list[RunId]:
    """The children of ``run_id`` (from its linkage events) whose streams have no ``RunCompleted``."""
    envelopes = await stores.events.read_range(RunId(run_id), 1, None)
    out: list[RunId] = []
    for link in children_of(envelopes):
        if await stores.events.head_seq(link.child_run_id) > 0 and not await _finished(stores, link.child_run_id):
            out.append(link.child_run_id)
    return out


async def request_cancel_children(stores: Stores, run_id: RunId, reason: str) -> list[RunId]:
    """Cancel a parent's running children too: a cancel request for each unfinished child (§0.6 applied to the
    tree). The children run as tasks of the parent's worker, which polls their requests as it polls the parent's;
    a child left without a worker is closed Cancelled by its next resume. Returns the children asked."""
    control = stores.control
    if control is None:
        return []
    asked = await unfinished_children(stores, run_id)
    for child in asked:
        await control.request_cancel(child, f"{reason} (parent {run_id} cancelled)" if reason else f"parent {run_id}")
    return asked
