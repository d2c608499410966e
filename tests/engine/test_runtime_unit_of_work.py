"""The engine commits a step's blobs with the events that refer to them (issue 12), one store operation per state.

A recording unit of work around the memory store notes every ``commit`` / ``append`` / ``put`` the engine makes: the
context snapshot travels in the same commit as the first event naming it (``RunStarted`` / ``StateCompleted``), a
fact payload with its ``fact_recorded``, nothing is ``put`` on its own, and a sequential run makes exactly one store
operation per state boundary. The stream itself is the one of unbatched appends (the batching tests and the golden
streams say so; here: the same trace as on a store without a unit of work).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine._runtime.pending import PendingArtifacts
from engine.engine import RunPhase, Stores
from engine.errors import StorageError
from engine.events import DOMAIN_EVENT_FACT_RECORDED, DomainEvent, EventEnvelope, RunStarted, StateCompleted
from engine.ids import ArtifactId, RunId
from engine.io import IoCall, IoProvider
from engine.recorder import EventRecorder
from engine.runtime import Engine, Failpoints
from engine.stores import Blob, MemoryArtifactStore, MemoryEventStore, MemoryStore
from engine.testing import (
    CountingFactory,
    FakeClock,
    FakeSleeper,
    FnState,
    WriteKey,
    base_config,
    fixed_run_ids,
    make_plan,
    read_events,
    start_plan,
    trace,
)


class RecordingArtifacts:
    """The memory artifact store, counting ``put`` calls by kind."""

    def __init__(self, inner: MemoryArtifactStore) -> None:
        self.inner = inner
        self.puts: list[ArtifactKind] = []

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        self.puts.append(kind)
        return await self.inner.put(kind, data)

    async def get(self, artifact_id: ArtifactId) -> bytes:
        return await self.inner.get(artifact_id)

    async def exists(self, artifact_id: ArtifactId) -> bool:
        return await self.inner.exists(artifact_id)


class RecordingUnit:
    """The memory event store as a unit of work paired with :class:`RecordingArtifacts`; records each durable
    operation as ``(op, [event kinds…], [blob ids…], envelopes)``."""

    def __init__(self, ms: MemoryStore, artifacts: RecordingArtifacts) -> None:
        self.inner = ms.events
        self.artifact_store = artifacts
        self.ops: list[tuple[str, list[str], list[ArtifactId], list[EventEnvelope]]] = []
        self.fail_next_commit = False

    async def head_seq(self, run_id: RunId) -> int:
        return await self.inner.head_seq(run_id)

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        return await self.inner.read_range(run_id, from_seq, to_seq)

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        self.ops.append(("append", [e.kind for e in events], [], list(events)))
        return await self.inner.append(run_id, expected_seq, events)

    async def commit(
        self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope], blobs: Sequence[Blob]
    ) -> int:
        if self.fail_next_commit:
            self.fail_next_commit = False
            raise StorageError.other("injected", "injected commit failure")
        self.ops.append(("commit", [e.kind for e in events], [b.artifact_id for b in blobs], list(events)))
        return await self.inner.commit(run_id, expected_seq, events, blobs)


def _setup(**kw: Any) -> tuple[MemoryStore, RecordingUnit, RecordingArtifacts, Stores, Engine]:
    ms = MemoryStore()
    arts = RecordingArtifacts(ms.artifacts)
    unit = RecordingUnit(ms, arts)
    stores = Stores(events=unit, artifacts=arts, control=ms.events)
    kw.setdefault("clock", FakeClock(step=1))
    engine = Engine(sleeper=FakeSleeper(), run_ids=fixed_run_ids(), **kw)
    return ms, unit, arts, stores, engine


def _chain(n: int) -> Any:
    return make_plan(
        [(f"s{i}", WriteKey(f"k{i}", "v" * 40 + str(i))) for i in range(1, n + 1)],
        [(f"s{i}", f"s{i + 1}") for i in range(1, n)],
    )


def _named(env: EventEnvelope) -> list[ArtifactId]:
    ev = env.event
    if isinstance(ev, RunStarted):
        return [ev.initial_snapshot_id]
    if isinstance(ev, StateCompleted):
        return [ev.context_snapshot_id]
    if isinstance(ev, DomainEvent) and ev.name == DOMAIN_EVENT_FACT_RECORDED:
        return [ArtifactId(ev.payload["payload_id"])]
    return []


async def test_sequential_run_one_commit_per_state_boundary_blobs_with_their_events() -> None:
    """N states: N+1 commits ([RS,E1], [C1,E2], … [Cn,RC]) and nothing else; every snapshot is in the commit of
    the first event naming it; no artifact is put on its own (only the manifest, before the run)."""
    ms, unit, arts, stores, engine = _setup()
    n = 5
    res = await start_plan(engine, stores, _chain(n), base_config())
    assert res.phase is RunPhase.COMPLETED
    assert [op for op, *_ in unit.ops] == ["commit"] * (n + 1)
    assert arts.puts == [ArtifactKind.MANIFEST]
    committed: set[ArtifactId] = set()
    for _, _, blobs, envs in unit.ops:
        committed |= set(blobs)
        for env in envs:
            for aid in _named(env):
                assert aid in committed, f"seq {env.seq} names {aid}, committed later or never"
    # each state's new snapshot travels exactly with its StateCompleted
    for _, _, blobs, envs in unit.ops[1:]:
        assert blobs == [a for e in envs for a in _named(e)]
    assert await ms.artifacts.exists(res.final_snapshot_id) if res.final_snapshot_id else True


async def test_stream_is_the_one_of_a_store_without_a_unit_of_work() -> None:
    """Same trace and payloads as on a store without ``commit`` (which puts each blob, then appends)."""
    _, _, _, stores, engine = _setup()
    res = await start_plan(engine, stores, _chain(3), base_config())
    plain = MemoryStore()
    plain_stores = Stores(events=_NoUnit(plain.events), artifacts=plain.artifacts)
    res2 = await start_plan(
        Engine(sleeper=FakeSleeper(), run_ids=fixed_run_ids(), clock=FakeClock(step=1)),
        plain_stores,
        _chain(3),
        base_config(),
    )
    a = [e.model_dump(mode="json") for e in await read_events(stores, res.run_id)]
    b = [e.model_dump(mode="json") for e in await read_events(plain_stores, res2.run_id)]
    assert a == b and trace(await read_events(stores, res.run_id))[0][0] == "RS"


class _NoUnit:
    """An event store without ``commit``."""

    def __init__(self, inner: MemoryEventStore) -> None:
        self.inner = inner

    async def head_seq(self, run_id: RunId) -> int:
        return await self.inner.head_seq(run_id)

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        return await self.inner.read_range(run_id, from_seq, to_seq)

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        return await self.inner.append(run_id, expected_seq, events)


async def test_store_without_unit_of_work_puts_each_blob_before_its_event() -> None:
    """No ``commit``: every snapshot is put (and so durable) before the append naming it."""
    ms = MemoryStore()
    arts = RecordingArtifacts(ms.artifacts)
    seen: list[int] = []

    class Checking(_NoUnit):
        async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
            for env in events:
                for aid in _named(env):
                    assert await ms.artifacts.exists(aid)
            seen.append(len(arts.puts))
            return await super().append(run_id, expected_seq, events)

    stores = Stores(events=Checking(ms.events), artifacts=arts)
    res = await start_plan(Engine(sleeper=FakeSleeper(), run_ids=fixed_run_ids()), stores, _chain(3), base_config())
    assert res.phase is RunPhase.COMPLETED
    assert arts.puts.count(ArtifactKind.CONTEXT_SNAPSHOT) == 4 and len(seen) == 4


async def test_fact_payload_commits_with_its_fact_recorded_and_resume_never_reruns_it() -> None:
    """A recorded fact's payload is in the commit of its ``fact_recorded``; after a stop right after the handler
    (the state never completed), resume answers the call from the recorded fact: the transport ran once."""
    _, unit, arts, stores, _ = _setup()
    factory = CountingFactory(group="proof")

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        res = await io.call(IoCall(namespace="proof.x", request={"n": 1}, fact_key="fact:1"))
        ctx.write("got", res.response)

    plan = make_plan([("s1", FnState(handler))])
    engine = Engine(
        plan_resolver=lambda m: plan,
        sleeper=FakeSleeper(),
        run_ids=fixed_run_ids(),
        transports=[factory],
        failpoints=Failpoints.stop_after_handler(),
    )
    res = await start_plan(engine, stores, plan, base_config())
    assert res.phase is RunPhase.RUNNING
    fact_ops = [op for op in unit.ops if DOMAIN_EVENT_FACT_RECORDED in op[1]]
    assert len(fact_ops) == 1
    _, _, blobs, envs = fact_ops[0]
    fact_env = next(e for e in envs if _named(e) and isinstance(e.event, DomainEvent))
    assert _named(fact_env)[0] in blobs and arts.puts == [ArtifactKind.MANIFEST]
    assert len(factory.calls) == 1
    engine2 = Engine(plan_resolver=lambda m: plan, sleeper=FakeSleeper(), transports=[factory])
    res2 = await engine2.resume(stores, res.run_id)
    assert res2.phase is RunPhase.COMPLETED and len(factory.calls) == 1


async def test_failed_commit_keeps_blobs_for_the_next_batch() -> None:
    """A commit that fails takes nothing with it: the blobs of its events go with the events' next commit, and
    every event still lands after the blobs it names."""
    ms, unit, _, stores, engine = _setup()
    flaky_once = {"armed": True}

    async def handler(ctx: Any, io: IoProvider, rec: EventRecorder) -> None:
        if flaky_once["armed"]:
            flaky_once["armed"] = False
            unit.fail_next_commit = True  # the next commit is the one of this state's fact_recorded
            with contextlib.suppress(Exception):
                await io.record_value("k", {"a": 1})
        await io.record_value("k2", {"b": 2})
        ctx.write("x", 1)

    res = await start_plan(engine, stores, make_plan([("s1", FnState(handler))]), base_config())
    assert res.phase is RunPhase.COMPLETED
    committed: set[ArtifactId] = set()
    for _, _, blobs, envs in unit.ops:
        committed |= set(blobs)
        for env in envs:
            for aid in _named(env):
                assert aid in committed
    for aid in committed:
        assert await ms.artifacts.exists(aid)


async def test_pending_blobs_read_in_process_until_committed() -> None:
    """The overlay: a put blob reads back at once without touching the store; once settled, reads go to the store."""
    inner = MemoryArtifactStore()
    pending = PendingArtifacts(inner, MemoryEventStore(inner))
    aid = await pending.put(ArtifactKind.OUTPUT, b'{"a":1}')
    assert await pending.get(aid) == b'{"a":1}' and await pending.exists(aid)
    assert not await inner.exists(aid)
    claimed = pending.claim()
    assert [b.artifact_id for b in claimed] == [aid] and pending.claim() == []
    assert await pending.get(aid) == b'{"a":1}'  # claimed, in flight: still readable
    pending.unclaim(claimed)
    assert pending.claim() == claimed
    inner.put_many(claimed)
    pending.settle(claimed)
    with pytest.raises(StorageError):
        await PendingArtifacts(MemoryArtifactStore(), MemoryEventStore()).get(aid)
    assert await pending.get(aid) == b'{"a":1}' and await inner.exists(aid)
