"""Test helpers: the common fixtures of CONFORMANCE.md, usable by any test or benchmark."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from engine._kinds import ArtifactKind
from engine.config import Duration, EventProfile, Fixed, IoMode, RetryPolicy, RunConfig, RunManifest
from engine.context import DynContext, JsonContext
from engine.engine import ExecutionEngine, RunResult, StartRun, Stores
from engine.errors import ErrorCategory, IoError, StateError
from engine.events import (
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.hashing import canonical_json_bytes
from engine.ids import ArtifactId, FactKey, OpId, RunId, StateId
from engine.io import IoCall, IoProvider
from engine.meta import Idempotency, SideEffectKind, StateMeta
from engine.plan import DependencyEdge, ExecutionPlan, StateGraph, StateNode
from engine.recorder import EventRecorder
from engine.state import State, StateOutcome
from engine.transport import LiveTransport, TransportContext

__all__ = [
    "CountingFactory",
    "CountingTransport",
    "Fail",
    "FakeClock",
    "FakeSleeper",
    "Flaky",
    "FnState",
    "RecordFactAndWrite",
    "SetKey",
    "WriteKey",
    "WriteY",
    "base_config",
    "counting_random",
    "entered",
    "fixed_run_ids",
    "make_manifest",
    "make_plan",
    "read_events",
    "replay_config",
    "sid",
    "snapshot_of",
    "start_plan",
    "store_manifest",
    "trace",
]


def base_config(**changes: Any) -> RunConfig:
    """Live; max_attempts 3, Fixed 0 ms; Minimal; Sequential; no skip tags."""
    cfg = RunConfig(
        io_mode=IoMode.LIVE,
        retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_millis(0))),
        event_profile=EventProfile.MINIMAL,
    )
    return cfg.model_copy(update=changes) if changes else cfg


def replay_config(**changes: Any) -> RunConfig:
    return base_config(io_mode=IoMode.REPLAY, **changes)


def make_manifest(cfg: RunConfig, *, op_id: str = "op", input_params: Any = None) -> RunManifest:
    return RunManifest(
        op_id=OpId(op_id), op_version="0", input_params={} if input_params is None else input_params, run_config=cfg
    )


async def store_manifest(stores: Stores, manifest: RunManifest) -> ArtifactId:
    """Store the manifest's canonical bytes as a ``Manifest`` artifact; return its id."""
    return await stores.artifacts.put(ArtifactKind.MANIFEST, canonical_json_bytes(manifest.model_dump(mode="json")))


def sid(local: str) -> StateId:
    """``machine.main.<local>``."""
    return StateId(f"machine.main.{local}")


def make_plan(
    states: Sequence[tuple[str, State]], edges: Sequence[tuple[str, str]] = (), *, op_id: str = "op"
) -> ExecutionPlan:
    """A plan from ``(local_name, state)`` pairs and ``(from_local, to_local)`` edges."""
    return ExecutionPlan(
        op_id=OpId(op_id),
        graph=StateGraph(
            states=tuple(StateNode(id=sid(name), state=st) for name, st in states),
            edges=tuple(DependencyEdge.of(sid(a), sid(b)) for a, b in edges),
        ),
    )


# ------------------------------------------------------------------------------------------------
# Runtime fakes (clock, sleeper, transports) and the helper states of CONFORMANCE.md.
# ------------------------------------------------------------------------------------------------


class FakeClock:
    """Wall-clock millis that only move when told to (``advance``); ``step`` auto-advances per read."""

    def __init__(self, start_millis: int = 1_700_000_000_000, step: int = 0) -> None:
        self.millis = start_millis
        self.step = step
        self.reads = 0

    def now_millis(self) -> int:
        self.reads += 1
        value = self.millis
        self.millis += self.step
        return value

    def advance(self, millis: int) -> None:
        self.millis += millis


class FakeSleeper:
    """Records every requested sleep (seconds) and returns at once; never sleeps for real.

    With a ``clock``, a sleep advances it by the requested time. With ``block=True`` it waits until
    the awaiting task is cancelled (a cancel during backoff); ``sleeping`` is set on entry.
    """

    def __init__(self, clock: FakeClock | None = None, *, block: bool = False) -> None:
        self.requested: list[float] = []
        self.clock = clock
        self.block = block
        self.sleeping = asyncio.Event()
        self.interrupted = 0

    @property
    def requested_ms(self) -> list[int]:
        return [round(s * 1000) for s in self.requested]

    async def sleep(self, seconds: float) -> None:
        self.requested.append(seconds)
        if self.clock is not None:
            self.clock.advance(round(seconds * 1000))
        if self.block:
            self.sleeping.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.interrupted += 1
                raise


def fixed_run_ids(*ids: str) -> Callable[[], RunId]:
    """A ``run_ids`` source returning the given UUIDs in order, then ``0000…0001``, ``…0002`` …."""
    queue = list(ids)
    counter = [0]

    def next_id() -> RunId:
        if queue:
            return RunId(queue.pop(0))
        counter[0] += 1
        return RunId(f"00000000-0000-4000-8000-{counter[0]:012d}")

    return next_id


def counting_random(n: int) -> bytes:
    """Deterministic "randomness": bytes 0, 1, 2, … (mod 256)."""
    return bytes(i % 256 for i in range(n))


class CountingTransport:
    """Answers ``{"n": <number of previous calls>}``; ``calls`` lists (namespace, request)."""

    def __init__(self, owner: CountingFactory) -> None:
        self.owner = owner

    async def call(self, namespace: str, request: Any) -> Any:
        n = len(self.owner.calls)
        self.owner.calls.append((namespace, request))
        if self.owner.respond is not None:
            return self.owner.respond(namespace, request, n)
        return {"n": n}


class CountingFactory:
    """A ``LiveTransportFactory`` for ``group`` counting ``make`` calls and transport calls.

    ``respond(namespace, request, n)`` overrides the answer (raise ``IoError`` to fail).
    """

    def __init__(self, group: str = "test", respond: Callable[[str, Any, int], Any] | None = None) -> None:
        self.group = group
        self.respond = respond
        self.made: list[TransportContext] = []
        self.calls: list[tuple[str, Any]] = []

    @property
    def namespace_group(self) -> str:
        return self.group

    @property
    def make_count(self) -> int:
        return len(self.made)

    def make(self, context: TransportContext) -> LiveTransport:
        self.made.append(context)
        return CountingTransport(self)

    def calls_to(self, namespace: str) -> int:
        return sum(1 for ns, _ in self.calls if ns == namespace)


class FnState:
    """A state from an async function ``fn(ctx, io, rec)`` (failure: raise ``StateError``)."""

    def __init__(
        self,
        fn: Callable[[DynContext, IoProvider, EventRecorder], Awaitable[None]],
        meta: StateMeta | None = None,
    ) -> None:
        self.fn = fn
        self._meta = meta or StateMeta()
        self.calls = 0

    def meta(self) -> StateMeta:
        return self._meta

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
        self.calls += 1
        await self.fn(ctx, io, rec)
        return StateOutcome()


class SetKey:
    """Fails ``unexpected_context`` if ``x`` exists, else writes ``x = 1`` (CONFORMANCE fixtures)."""

    def __init__(self, key: str = "x", value: Any = 1) -> None:
        self.key = key
        self.value = value
        self.calls = 0

    def meta(self) -> StateMeta:
        return StateMeta()

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
        self.calls += 1
        if ctx.read(self.key) is not None:
            raise StateError.new("unexpected_context", f"{self.key} already present", category=ErrorCategory.CONTEXT)
        ctx.write(self.key, self.value)
        return StateOutcome()


class WriteKey:
    """Writes ``key = value``; counts calls."""

    def __init__(self, key: str, value: Any, meta: StateMeta | None = None) -> None:
        self.key = key
        self.value = value
        self._meta = meta or StateMeta()
        self.calls = 0

    def meta(self) -> StateMeta:
        return self._meta

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
        self.calls += 1
        ctx.write(self.key, self.value)
        return StateOutcome()


class WriteY(WriteKey):
    """Tagged ``apply_side_effect``, ``ApplySideEffect`` with ``Key("test:tagged_write")``; writes ``y = 2``."""

    def __init__(self) -> None:
        super().__init__(
            "y",
            2,
            StateMeta(
                tags=("apply_side_effect",),
                side_effects=SideEffectKind.APPLY_SIDE_EFFECT,
                idempotency=Idempotency.key("test:tagged_write"),
            ),
        )


class Flaky:
    """Fails retryable (``flaky``) on its first ``failures`` invocations, then writes ``key = 1``."""

    def __init__(self, failures: int = 1, key: str = "x", *, code: str = "flaky", retryable: bool = True) -> None:
        self.failures = failures
        self.key = key
        self.code = code
        self.retryable = retryable
        self.calls = 0

    def meta(self) -> StateMeta:
        return StateMeta()

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
        self.calls += 1
        if self.calls <= self.failures:
            raise StateError.new(self.code, f"{self.code} failure #{self.calls}", retryable=self.retryable)
        ctx.write(self.key, 1)
        return StateOutcome()


class Fail(Flaky):
    """Always fails with ``code`` (retryable or not)."""

    def __init__(self, code: str = "boom", *, retryable: bool = False) -> None:
        super().__init__(failures=2**31, code=code, retryable=retryable)


class RecordFactAndWrite:
    """Live call ``test`` / ``{"q":1}`` with fact key ``k``; expects ``{"n":0}``; writes ``x = 1``.

    A response other than ``{"n": 0}`` or an IO error becomes a non-retryable ``StateError``
    carrying the error's info (so MissingFact surfaces with its own code and category).
    """

    def __init__(self, key: str = "k") -> None:
        self.key = key
        self.calls = 0
        self.errors: list[IoError] = []

    def meta(self) -> StateMeta:
        return StateMeta()

    async def handle(self, ctx: DynContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
        self.calls += 1
        try:
            res = await io.call(IoCall(namespace="test", request={"q": 1}, fact_key=FactKey(self.key)))
        except IoError as exc:
            self.errors.append(exc)
            raise StateError(exc.info) from None
        if res.response != {"n": 0}:
            raise StateError.new("unexpected_response", "unexpected response")
        ctx.write("x", 1)
        return StateOutcome()


async def start_plan(
    engine: ExecutionEngine,
    stores: Stores,
    plan: ExecutionPlan,
    cfg: RunConfig,
    initial: dict[str, Any] | None = None,
    **start_kwargs: Any,
) -> RunResult:
    """Store the manifest of ``cfg`` and ``start`` the plan with ``initial`` (default ``{}``)."""
    manifest = make_manifest(cfg, op_id=str(plan.op_id))
    mid = await store_manifest(stores, manifest)
    run = StartRun(
        manifest=manifest, manifest_id=mid, plan=plan, run_config=cfg, initial_context=JsonContext(initial or {})
    )
    return await engine.start(stores, run, **start_kwargs)


async def read_events(stores: Stores, run_id: RunId) -> list[EventEnvelope]:
    return await stores.events.read_range(run_id, 1, None)


def entered(envelopes: Sequence[EventEnvelope], state: str) -> list[int]:
    """``attempt`` of every ``StateEntered`` for ``state`` (local name or full id), in order."""
    full = state if "." in state else sid(state)
    return [e.event.attempt for e in envelopes if isinstance(e.event, StateEntered) and e.event.state_id == full]


def trace(envelopes: Sequence[EventEnvelope]) -> list[tuple[Any, ...]]:
    """Kernel events in the §14 shorthand: ``("RS", initial)``, ``("E", s, a, base)``, ``("C", s, snap)``,
    ``("F", s, code, retryable)``, ``("RC", status, final)``; domain events as ``("D", name)``."""
    out: list[tuple[Any, ...]] = []
    for env in envelopes:
        ev = env.event
        if isinstance(ev, RunStarted):
            out.append(("RS", ev.initial_snapshot_id))
        elif isinstance(ev, StateEntered):
            out.append(("E", _local(ev.state_id), ev.attempt, ev.base_snapshot_id))
        elif isinstance(ev, StateCompleted):
            out.append(("C", _local(ev.state_id), ev.context_snapshot_id))
        elif isinstance(ev, StateFailed):
            out.append(("F", _local(ev.state_id), ev.error.code, ev.error.retryable))
        elif isinstance(ev, RunCompleted):
            out.append(("RC", str(ev.status), ev.final_snapshot_id))
        else:
            out.append(("D", ev.name))
    return out


def _local(state_id: str) -> str:
    return state_id.split(".")[-1]


async def snapshot_of(stores: Stores, snapshot_id: ArtifactId) -> Any:
    return json.loads(await stores.artifacts.get(snapshot_id))
