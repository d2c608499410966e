"""A deterministic fixture store for the TUI tests (shared by the runs screen and the run screen).

Runs in every status, written directly as ``EventEnvelope``s (no engine), with fixed run ids, fixed
``ts_millis`` relative to ``NOW_MILLIS`` and real artifacts (manifests, context snapshots, fact
payloads). Works over any store with ``.events`` (EventStore + RunLister + ControlStore) and
``.artifacts``: ``MemoryStore()`` or ``FsStore(path)``.

    fx = await build_fixture_store(MemoryStore())
    app = make_app(fx.store, clock=fixture_clock(), lease_probe=fx.lease_probe, plan_resolver=fx.plan_resolver)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from engine._kinds import ArtifactKind
from engine.config import Duration, EventProfile, Exponential, FanOutJoin, Fixed, RetryPolicy, RunConfig, RunManifest
from engine.errors import StateError
from engine.events import (
    DOMAIN_EVENT_ARTIFACT_WRITTEN,
    DOMAIN_EVENT_FACT_RECORDED,
    DOMAIN_EVENT_RETRY_SCHEDULED,
    DomainEvent,
    Event,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.hashing import artifact_id_for_bytes, canonical_json_bytes
from engine.ids import ArtifactId, OpId, RunId, StateId
from engine.stores import CancelRequest
from engine.testing import FakeClock
from mfm_tui.run_model import LeaseStatus, PlanShape, RunModel
from mfm_tui.widgets.run_table import now_text

__all__ = [
    "NOW_MILLIS",
    "RUN_CANCELLED",
    "RUN_CANCELLING",
    "RUN_COMPLETED",
    "RUN_FAILED",
    "RUN_FANOUT",
    "RUN_LOST",
    "RUN_RETRYING",
    "RUN_RUNNING",
    "RUN_SKIPPED",
    "FixtureStore",
    "RunBuilder",
    "build_fixture_store",
    "fixture_clock",
    "plan_shape_for",
]

NOW_MILLIS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: the frozen clock's 'now'."""

RUN_FAILED = RunId("0c9d11ab-5f1e-4c2a-9b7d-000000000001")
RUN_RETRYING = RunId("a81c7e22-3b4d-4e5f-8a6b-000000000002")
RUN_LOST = RunId("5e03a9d1-7c8b-4a9d-b0e1-000000000003")
RUN_RUNNING = RunId("3f2a91c0-1d2e-4f3a-8b4c-000000000004")
RUN_COMPLETED = RunId("77e0aa10-9e8f-4d7c-a6b5-000000000005")
RUN_CANCELLED = RunId("19bb2c3e-4a5b-4c6d-9e7f-000000000006")
RUN_FANOUT = RunId("4be1aa07-2c3d-4e4f-8061-000000000007")
RUN_SKIPPED = RunId("9d7c6b5a-8e9f-4a0b-b1c2-000000000008")
RUN_CANCELLING = RunId("6d1e2f30-5b6c-4d7e-8f90-000000000009")

SEC = 1000
MIN = 60 * SEC


def fixture_clock() -> FakeClock:
    return FakeClock(NOW_MILLIS)


def sid(local: str) -> StateId:
    return StateId(f"demo.main.{local}")


# ---------------------------------------------------------------------------------------------- plans

_PIPELINE = ("fetch", "validate", "parse", "transform", "report")
_FANOUT_ITEMS = 6


def _chain(names: Sequence[str]) -> PlanShape:
    ids = tuple(sid(n) for n in names)
    return PlanShape(state_ids=ids, edges=tuple(pairwise(ids)), tags={i: () for i in ids})


def plan_shape_for(manifest: RunManifest) -> PlanShape | None:
    """The fixture operations' plan shapes (what a registry's plan resolver would give)."""
    params: Any = manifest.input_params if isinstance(manifest.input_params, dict) else {}
    op = str(manifest.op_id)
    if op == "demo_pipeline":
        return _chain(_PIPELINE)
    if op == "demo_fix":
        return _chain(("prepare", "check", "finish"))
    if op == "demo_flaky":
        return _chain(("setup", "call", "report"))
    if op == "demo_big":
        return _chain([f"step_{i:04d}" for i in range(int(params.get("states", 40)))])
    if op == "demo_side_effect":
        ids = (sid("prepare"), sid("apply"), sid("report"))
        return PlanShape(
            state_ids=ids,
            edges=((ids[0], ids[1]), (ids[1], ids[2])),
            tags={ids[0]: (), ids[1]: ("apply_side_effect",), ids[2]: ("report",)},
        )
    if op == "demo_fanout":
        n = int(params.get("items", _FANOUT_ITEMS))
        fetch, join, report = sid("fetch"), sid("join"), sid("report")
        items = tuple(sid(f"item_{i}") for i in range(n))
        edges = tuple((fetch, i) for i in items) + tuple((i, join) for i in items) + ((join, report),)
        return PlanShape(state_ids=(fetch, *items, join, report), edges=edges, tags={})
    return None


# ---------------------------------------------------------------------------------------------- builder


@dataclass
class RunBuilder:
    """Writes one run's envelopes with explicit timestamps; artifacts collected for a later put."""

    run_id: RunId
    t: int
    envelopes: list[EventEnvelope] = field(default_factory=list)
    artifacts: dict[ArtifactId, tuple[ArtifactKind, bytes]] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    checkpoint: ArtifactId | None = None

    def put(self, kind: ArtifactKind, value: Any) -> ArtifactId:
        data = canonical_json_bytes(value)
        aid = artifact_id_for_bytes(data)
        self.artifacts[aid] = (kind, data)
        return aid

    def snapshot(self) -> ArtifactId:
        return self.put(ArtifactKind.CONTEXT_SNAPSHOT, dict(self.context))

    def ev(self, event: Event, dt: int = 0) -> EventEnvelope:
        self.t += dt
        env = EventEnvelope(run_id=self.run_id, seq=len(self.envelopes) + 1, ts_millis=self.t, event=event)
        self.envelopes.append(env)
        return env

    def start(self, manifest: RunManifest) -> None:
        mid = self.put(ArtifactKind.MANIFEST, manifest.model_dump(mode="json"))
        self.context = {"demo.main.in.params": manifest.input_params}
        self.checkpoint = self.snapshot()
        self.ev(RunStarted(op_id=manifest.op_id, manifest_id=mid, initial_snapshot_id=self.checkpoint))

    def enter(self, local: str, attempt: int = 0, dt: int = 20) -> None:
        assert self.checkpoint is not None
        self.ev(StateEntered(state_id=sid(local), attempt=attempt, base_snapshot_id=self.checkpoint), dt)

    def fact(self, key: str, payload: Any, dt: int = 10) -> None:
        pid = self.put(ArtifactKind.FACT_PAYLOAD, payload)
        self.ev(DomainEvent(name=DOMAIN_EVENT_FACT_RECORDED, payload={"key": key, "payload_id": pid, "meta": {}}), dt)

    def output(self, value: Any, dt: int = 5) -> None:
        aid = self.put(ArtifactKind.OUTPUT, value)
        payload = {"artifact_id": aid, "kind": "Output", "meta": {}}
        self.ev(DomainEvent(name=DOMAIN_EVENT_ARTIFACT_WRITTEN, payload=payload, payload_ref=aid), dt)

    def complete(self, local: str, dt: int = 100, *, writes: dict[str, Any] | None = None) -> None:
        self.context.update(writes if writes is not None else {f"demo.main.out.{local}": "ok"})
        self.checkpoint = self.snapshot()
        self.ev(StateCompleted(state_id=sid(local), context_snapshot_id=self.checkpoint), dt)

    def skip(self, local: str, dt: int = 1) -> None:
        assert self.checkpoint is not None
        self.ev(StateCompleted(state_id=sid(local), context_snapshot_id=self.checkpoint), dt)

    def fail(self, local: str, code: str, message: str, *, retryable: bool = False, dt: int = 100) -> None:
        err = StateError.new(code, message, retryable=retryable, state_id=sid(local))
        self.ev(StateFailed(state_id=sid(local), error=err), dt)

    def retry_scheduled(self, local: str, failed_attempt: int, delay_ms: int, dt: int = 1) -> None:
        payload = {
            "state_id": sid(local),
            "failed_attempt": failed_attempt,
            "next_attempt": failed_attempt + 1,
            "delay_ms": delay_ms,
            "not_before_millis": self.t + dt + delay_ms,
        }
        self.ev(DomainEvent(name=DOMAIN_EVENT_RETRY_SCHEDULED, payload=payload), dt)

    def finish(self, status: RunStatus, dt: int = 5) -> None:
        self.ev(RunCompleted(status=status, final_snapshot_id=self.checkpoint), dt)

    def run_state(self, local: str, dt_enter: int = 20, dt_run: int = 100) -> None:
        self.enter(local, dt=dt_enter)
        self.complete(local, dt=dt_run)


def _manifest(op: str, params: Any, *, max_attempts: int = 3, backoff: Any = None, **cfg: Any) -> RunManifest:
    policy = RetryPolicy(
        max_attempts=max_attempts, backoff=backoff if backoff is not None else Fixed(delay=Duration.from_millis(0))
    )
    config = RunConfig(retry_policy=policy, event_profile=EventProfile.NORMAL, **cfg)
    return RunManifest(op_id=OpId(op), op_version="1", input_params=params, run_config=config)


def _runs() -> list[RunBuilder]:
    runs: list[RunBuilder] = []

    # failed: demo_fix, non-retryable needs_file at `check`, 3m ago, took 0.4s
    b = RunBuilder(RUN_FAILED, NOW_MILLIS - 3 * MIN)
    b.start(_manifest("demo_fix", {"file": "/tmp/mfm-demo/fix-me"}))
    b.run_state("prepare", dt_run=150)
    b.enter("check")
    b.fail("check", "needs_file", "file /tmp/mfm-demo/fix-me not found: create it, then resume", dt=200)
    b.finish(RunStatus.FAILED, dt=30)
    runs.append(b)

    # retrying with a retry_scheduled event: demo_flaky `call` 2/5 in 7s
    backoff = Exponential(base_delay=Duration.from_secs(4), max_delay=Duration.from_secs(60))
    b = RunBuilder(RUN_RETRYING, NOW_MILLIS - 40 * SEC)
    b.start(_manifest("demo_flaky", {"failures": 3}, max_attempts=5, backoff=backoff))
    b.run_state("setup")
    b.t = NOW_MILLIS - 30 * SEC
    b.enter("call", 0)
    b.fail("call", "http_503", "upstream unavailable", retryable=True, dt=400)
    b.retry_scheduled("call", 0, 4000)
    b.t = NOW_MILLIS - 1420
    b.enter("call", 1)
    b.fail("call", "http_503", "upstream unavailable", retryable=True, dt=399)
    b.retry_scheduled("call", 1, 8000)  # at now - 1s: not_before = now + 7s
    runs.append(b)

    # worker lost (lease stale): demo_big at step_0021 of 60, 9m ago
    b = RunBuilder(RUN_LOST, NOW_MILLIS - 9 * MIN)
    b.start(_manifest("demo_big", {"states": 60, "events": 1}))
    for i in range(21):
        b.enter(f"step_{i:04d}", dt=50)
        b.fact(f"big:step_{i:04d}", {"i": i}, dt=1000)
        b.complete(f"step_{i:04d}", dt=2300)
    b.enter("step_0021", dt=40)
    runs.append(b)

    # running: demo_pipeline at `transform`, 3/5 done, started 12s ago
    b = RunBuilder(RUN_RUNNING, NOW_MILLIS - 12 * SEC)
    b.start(_manifest("demo_pipeline", {"rows": 3}, exec_allowlist=("/bin/",)))
    b.enter("fetch")
    exec_out = {"exit_code": 0, "stdout": '{"rows": 3}\n', "stderr": "warning: slow disk\n"}
    b.fact("exec:fetch#1", exec_out, dt=1800)
    b.complete("fetch", dt=50, writes={"demo.main.out.rows": [1, 2, 3]})
    b.run_state("validate", dt_run=900)
    b.run_state("parse", dt_run=1200)
    b.enter("transform", dt=30)
    runs.append(b)

    # completed fan-out: 8/8, 5m ago, took 21s
    b = RunBuilder(RUN_COMPLETED, NOW_MILLIS - 5 * MIN)
    b.start(_manifest("demo_fanout", {"items": 6}, execution_mode=FanOutJoin(max_concurrency=3)))
    b.run_state("fetch", dt_run=1000)
    for i in range(_FANOUT_ITEMS):
        b.enter(f"item_{i}", dt=10)
    for i in range(_FANOUT_ITEMS):
        b.complete(f"item_{i}", dt=2500, writes={f"demo.main.out.item_{i}": i * i})
    b.run_state("join", dt_run=2000)
    b.run_state("report", dt_run=2800)
    b.output({"sum_of_squares": sum(i * i for i in range(_FANOUT_ITEMS))})
    b.finish(RunStatus.COMPLETED, dt=10)
    runs.append(b)

    # cancelled: demo_big at step_0012 of 30, 1h ago, took 2m03s
    b = RunBuilder(RUN_CANCELLED, NOW_MILLIS - 60 * MIN)
    b.start(_manifest("demo_big", {"states": 30, "events": 0}))
    for i in range(12):
        b.run_state(f"step_{i:04d}", dt_enter=100, dt_run=10_000)
    b.enter("step_0012", dt=100)
    b.fail("step_0012", "run_cancelled", "run cancelled by operator", dt=2490)
    b.finish(RunStatus.CANCELLED, dt=10)
    runs.append(b)

    # fan-out in flight: fetch ✓, item_0 ✓, item_1 ●, item_2 ↻ (derived countdown), rest pending
    b = RunBuilder(RUN_FANOUT, NOW_MILLIS - 21 * SEC)
    b.start(
        _manifest(
            "demo_fanout",
            {"items": 4},
            max_attempts=5,
            backoff=Fixed(delay=Duration.from_secs(5)),
            execution_mode=FanOutJoin(max_concurrency=3),
        )
    )
    b.run_state("fetch", dt_run=3000)
    b.enter("item_0", dt=10)
    b.enter("item_1", dt=10)
    b.enter("item_2", dt=10)
    b.fact("exec:item_0#1", {"exit_code": 0, "stdout": "0\n", "stderr": ""}, dt=500)
    b.complete("item_0", dt=4000, writes={"demo.main.out.item_0": 0})
    b.t = NOW_MILLIS - 1 * SEC - 100
    b.fail("item_2", "http_503", "upstream unavailable", retryable=True, dt=100)  # no retry_scheduled: derived
    runs.append(b)

    # completed with a skipped state (skip_tags), 2h ago
    b = RunBuilder(RUN_SKIPPED, NOW_MILLIS - 120 * MIN)
    b.start(_manifest("demo_side_effect", {"dir": "/tmp/mfm-demo"}, skip_tags=("apply_side_effect",)))
    b.run_state("prepare", dt_run=300)
    b.enter("apply")
    b.skip("apply")
    b.run_state("report", dt_run=200)
    b.finish(RunStatus.COMPLETED)
    runs.append(b)

    # cancel requested, not yet honoured: demo_side_effect at `apply`
    b = RunBuilder(RUN_CANCELLING, NOW_MILLIS - 2 * MIN)
    b.start(_manifest("demo_side_effect", {"dir": "/tmp/mfm-demo"}))
    b.run_state("prepare", dt_run=300)
    b.enter("apply")
    runs.append(b)
    return runs


LEASES: dict[RunId, LeaseStatus] = {
    RUN_LOST: LeaseStatus.STALE,
    RUN_RUNNING: LeaseStatus.HELD,
    RUN_RETRYING: LeaseStatus.HELD,
    RUN_FANOUT: LeaseStatus.HELD,
    RUN_CANCELLING: LeaseStatus.HELD,
}


@dataclass
class FixtureStore:
    store: Any
    builders: dict[RunId, RunBuilder]
    leases: dict[RunId, LeaseStatus] = field(default_factory=lambda: dict(LEASES))

    @property
    def run_ids(self) -> list[RunId]:
        return list(self.builders)

    def lease_probe(self, run_id: RunId) -> LeaseStatus:
        return self.leases.get(run_id, LeaseStatus.NONE)

    @staticmethod
    def plan_resolver(manifest: RunManifest) -> PlanShape | None:
        return plan_shape_for(manifest)

    async def append(self, run_id: RunId, events: Sequence[Event], *, dt: int = 100) -> list[EventEnvelope]:
        """Append events after the run's head (live-update tests)."""
        head = await self.store.events.head_seq(run_id)
        t = NOW_MILLIS
        envs = [
            EventEnvelope(run_id=run_id, seq=head + 1 + i, ts_millis=t + i * dt, event=ev)
            for i, ev in enumerate(events)
        ]
        await self.store.events.append(run_id, head, envs)
        return envs


async def build_fixture_store(store: Any, *, only: Sequence[RunId] | None = None) -> FixtureStore:
    """Write the fixture runs (all, or ``only`` those) into ``store`` and return the handle."""
    builders = {b.run_id: b for b in _runs() if only is None or b.run_id in only}
    for b in builders.values():
        for aid, (kind, data) in b.artifacts.items():
            got = await store.artifacts.put(kind, data)
            assert got == aid
        await store.events.append(b.run_id, 0, b.envelopes)
    if RUN_CANCELLING in builders:
        request = await store.events.request_cancel(RUN_CANCELLING, "operator asked")
        cancels = getattr(store.events, "_cancels", None)
        if isinstance(cancels, dict):  # the memory store stamps the wall clock: pin it for stable snapshots
            cancels[RUN_CANCELLING] = CancelRequest(RUN_CANCELLING, NOW_MILLIS - 20 * SEC, request.reason)
    return FixtureStore(store=store, builders=builders)


# ---------------------------------------------------------------------------------------------- apps


def fixture_app(*, empty: bool = False, store: Any = None, **kwargs: Any) -> Any:
    """``make_app`` over a fresh fixture store, for snapshot tests (sync; no event loop may be running)."""
    import asyncio

    from engine.stores import MemoryStore

    store = store if store is not None else MemoryStore()
    fx = None if empty else asyncio.run(build_fixture_store(store))
    return _app_over(store, fx, kwargs)


async def afixture_app(*, empty: bool = False, store: Any = None, **kwargs: Any) -> Any:
    """``make_app`` over a fresh fixture store, from an async test."""
    from engine.stores import MemoryStore

    store = store if store is not None else MemoryStore()
    fx = None if empty else await build_fixture_store(store)
    return _app_over(store, fx, kwargs)


def _app_over(store: Any, fx: FixtureStore | None, kwargs: dict[str, Any]) -> Any:
    from mfm_tui.app import make_app

    kwargs.setdefault("clock", fixture_clock())
    kwargs.setdefault("watch", False)
    if fx is not None:
        kwargs.setdefault("lease_probe", fx.lease_probe)
        kwargs.setdefault("plan_resolver", fx.plan_resolver)
    app = make_app(store, **kwargs)
    app.fixture = fx
    return app


async def wait_until(pilot: Any, predicate: Any, *, tries: int = 200) -> None:
    """Let the app run until ``predicate()`` holds (bounded; fails loudly instead of hanging)."""
    for _ in range(tries):
        if predicate():
            return
        await pilot.pause(0.01)
    raise AssertionError(f"condition never held: {predicate}")


async def settle(pilot: Any) -> None:
    """Wait for the first load, its messages, and steady input cursors (stable snapshots)."""
    from textual.widgets import Input

    home = pilot.app.screen_stack[0]
    await wait_until(pilot, lambda: pilot.app.loaded and getattr(home, "loaded", True))
    await pilot.pause()
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


class _FaultyEvents:
    """Wraps an event store; ``fail_all`` breaks listing and the journal, ``bad_runs`` breaks single runs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail_all: Exception | None = None
        self.bad_runs: dict[RunId, Exception] = {}
        self.hidden: set[RunId] = set()

    async def list_runs(self) -> list[RunId]:
        if self.fail_all is not None:
            raise self.fail_all
        return [r for r in await self.inner.list_runs() if r not in self.hidden]

    async def changes_since(self, cursor: int | None) -> Any:
        if self.fail_all is not None:
            raise self.fail_all
        return await self.inner.changes_since(cursor)

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        if run_id in self.bad_runs:
            raise self.bad_runs[run_id]
        if run_id in self.hidden:
            return []
        return list(await self.inner.read_range(run_id, from_seq, to_seq))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FaultyStore:
    """A store whose reads can be broken on demand (error dialogs, corrupted and vanished runs)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.events = _FaultyEvents(inner.events)
        self.artifacts = inner.artifacts


def list_row(model: RunModel, now: int) -> tuple[Any, ...]:
    """What a runs-list row shows of a model (to compare rows loaded two ways)."""
    current = model.current_state
    return (
        model.status,
        model.op_id,
        model.started_millis,
        model.ended_millis,
        model.duration_millis(now),
        model.last_seq,
        model.done,
        model.total,
        None if current is None else current.state_id,
        model.error,
        now_text(model, now),
        model.crash_loop,
        model.recovered_from,
        model.final_snapshot_id,
    )
