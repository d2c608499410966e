"""The CPU shortcuts of issue 12 (engine CPU per state) give exactly what the paths they shortcut give."""

from __future__ import annotations

import asyncio
import copy
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._kinds import ArtifactKind
from engine._runtime.context_runtime import KEEP_SNAPSHOTS, SnapshotCache, encode_member
from engine._runtime.facts import FactIndex
from engine._runtime.writer import _Mutex
from engine._wire import construct, copy_json
from engine.context import JsonContext
from engine.engine import RunPhase
from engine.errors import ContextError, StorageError
from engine.events import DOMAIN_EVENT_FACT_RECORDED, DomainEvent, EventEnvelope, FactRecorded
from engine.hashing import CanonicalJsonError, canonical_json_bytes, canonical_members
from engine.ids import ArtifactId, FactKey, RunId
from engine.meta import StateMeta
from engine.runtime import Engine
from engine.stores import Blob, MemoryStore
from engine.stores import memory as memory_module
from engine.testing import FakeClock, FakeSleeper, WriteKey, base_config, fixed_run_ids, make_plan, start_plan

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.text(max_size=6), _json, max_size=6))
def test_members_cut_from_the_canonical_bytes_are_the_members_encoded_one_by_one(value: dict[str, Any]) -> None:
    try:
        encoded = canonical_json_bytes(value)
    except CanonicalJsonError:
        return  # secret-looking generated text: not a snapshot
    members = canonical_members(value, encoded)
    if members is None:
        assert not encoded.isascii()  # only non-ASCII text is left to the member-by-member path
        return
    assert members == {k: encode_member(k, v) for k, v in value.items()}


def test_members_are_refused_when_they_do_not_rebuild_the_bytes() -> None:
    value = {"b": [1, 2], "a": "x"}
    assert canonical_members(value, canonical_json_bytes(value)) == {"a": b'"a":"x"', "b": b'"b":[1,2]'}
    assert canonical_members(value, b'{"a":"x","b":[1,3]}') is None
    assert canonical_members({"é": 1}, canonical_json_bytes({"é": 1})) is None  # non-ASCII: one by one


async def test_a_snapshot_written_whole_is_extended_by_its_members() -> None:
    """``write`` keeps the members of what it wrote: ``write_delta`` then encodes only the changed key, and its
    bytes are the canonical bytes of the result (before: every member of the base was encoded again)."""
    ms = MemoryStore()
    cache = SnapshotCache(ms.artifacts)
    base = {f"k{i}": {"n": i, "tags": ["a"]} for i in range(20)}
    base_id = await cache.write(base)
    new_id, value = await cache.write_delta(base_id, base, {"k3": 7})
    assert await ms.artifacts.get(new_id) == canonical_json_bytes(value)
    assert value["k3"] == 7 and base["k3"] == {"n": 3, "tags": ["a"]}


@settings(max_examples=200, deadline=None)
@given(value=_json)
def test_copy_json_copies_like_deepcopy(value: Any) -> None:
    copied = copy_json(value)
    assert copied == copy.deepcopy(value)
    if isinstance(value, dict | list) and value:
        assert copied is not value


def test_copy_json_shares_nothing_mutable_and_hands_other_types_to_deepcopy() -> None:
    inner = [1, {"a": [2]}]
    value = {"x": inner, "y": (3, [4])}
    copied = copy_json(value)
    assert copied == value
    copied["x"][1]["a"].append(5)
    copied["y"][1].append(6)
    assert value == {"x": [1, {"a": [2]}], "y": (3, [4])}
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    again = copy_json(cyclic)  # recursion: left to deepcopy, which keeps the cycle
    assert again[0] is again


def test_json_context_dump_is_a_deep_copy() -> None:
    ctx = JsonContext({"a": {"b": [1]}})
    dumped = ctx.dump()
    dumped["a"]["b"].append(2)
    assert ctx.dump() == {"a": {"b": [1]}}


class _CountingMeta(WriteKey):
    def __init__(self, key: str, value: Any) -> None:
        super().__init__(key, value)
        self.meta_calls = 0

    def meta(self) -> StateMeta:
        self.meta_calls += 1
        return super().meta()


async def test_each_states_meta_is_asked_once_per_invocation() -> None:
    states = [_CountingMeta(f"k{i}", i) for i in range(3)]
    plan = make_plan([(f"s{i}", st_) for i, st_ in enumerate(states)], [("s0", "s1"), ("s1", "s2")])
    engine = Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    res = await start_plan(engine, MemoryStore().stores, plan, base_config())
    assert res.phase is RunPhase.COMPLETED
    assert [s.meta_calls for s in states] == [1, 1, 1]  # before: 2 (plan validation, then the invocation)


async def test_the_memory_unit_of_work_trusts_the_hash_of_blob_of_and_checks_any_other_blob(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ms = MemoryStore()
    made = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"a":1}')
    assert made.hashed and made == Blob(made.artifact_id, made.kind, made.data)  # the flag is not compared
    hashes = 0
    real = hashlib.sha256

    def counting(data: bytes) -> Any:
        nonlocal hashes
        hashes += 1
        return real(data)

    monkeypatch.setattr(memory_module.hashlib, "sha256", counting)
    run = RunId("00000000-0000-4000-8000-000000000001")
    await ms.events.commit(run, 0, [], [made])
    assert hashes == 0  # before: hashed again
    assert await ms.artifacts.get(made.artifact_id) == b'{"a":1}'
    forged = Blob(made.artifact_id, ArtifactKind.CONTEXT_SNAPSHOT, b'{"a":2}')  # built by hand: checked
    with pytest.raises(StorageError) as ei:
        await ms.events.commit(run, 0, [], [forged])
    assert ei.value.code == "artifact_put_id_mismatch" and hashes >= 1


def _fact_env(seq: int, payload: Any) -> EventEnvelope:
    run = RunId("00000000-0000-4000-8000-000000000001")
    return construct(
        EventEnvelope,
        run_id=run,
        seq=seq,
        ts_millis=None,
        event=construct(DomainEvent, name=DOMAIN_EVENT_FACT_RECORDED, payload=payload, payload_ref=None),
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"key": "k", "payload_id": "a" * 64},
        {"key": "k", "payload_id": "a" * 64, "meta": {"x": "y"}},
        {"key": "k", "payload_id": "a" * 64, "meta": 3},
    ],
)
def test_fact_index_binds_the_common_shape_as_the_model_does(payload: dict[str, Any]) -> None:
    index = FactIndex.rebuild([_fact_env(1, payload)])
    fact = FactRecorded.model_validate(payload)
    assert index.bindings == {fact.key: fact.payload_id}
    ((key, pid),) = index.bindings.items()
    assert type(key) is FactKey and type(pid) is ArtifactId


@pytest.mark.parametrize(
    "payload",
    [
        {"key": "k", "payload_id": "A" * 64},  # not an artifact id
        {"key": "k", "payload_id": "a" * 64, "other": 1},  # an extra field
        {"key": 3, "payload_id": "a" * 64},
        {"key": "k"},
        {"key": "k", "payload_id": "a" * 64, "meta": {}, "x": 1},
        ["k", "a" * 64],
    ],
)
def test_fact_index_refuses_what_the_model_refuses(payload: Any) -> None:
    with pytest.raises(StorageError) as ei:
        FactIndex.rebuild([_fact_env(7, payload)])
    assert ei.value.code == "fact_recorded_malformed" and "seq 7" in ei.value.message


def test_fact_index_rebinding_to_another_payload_is_a_conflict() -> None:
    envs = [_fact_env(1, {"key": "k", "payload_id": "a" * 64}), _fact_env(2, {"key": "k", "payload_id": "b" * 64})]
    with pytest.raises(StorageError) as ei:
        FactIndex.rebuild(envs)
    assert ei.value.code == "fact_recorded_conflict"
    assert FactIndex.rebuild([envs[0], envs[0]]).bindings == {"k": "a" * 64}


@settings(max_examples=300, deadline=None)
@given(
    key=st.text(max_size=8),
    value=st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.integers(2**53, 2**60),
)
def test_a_scalar_member_is_its_canonical_encoding(key: str, value: Any) -> None:
    """The scalar shortcut of encode_member (the key's prefix, checked once, and the scalar's text) gives the bytes of
    the full encoding, and refuses what it refuses (unsafe integers; secret-looking keys)."""
    try:
        expected: bytes | str = canonical_json_bytes({key: value})[1:-1]
    except CanonicalJsonError as exc:
        expected = "secret" if exc.is_secret else "other"
    try:
        got: bytes | str = encode_member(key, value)
        got = encode_member(key, value)  # the second time from the cached prefix
    except ContextError as exc:
        got = "secret" if exc.code == "secrets_detected" else "other"
    assert got == expected


def test_a_secret_looking_key_is_refused_with_a_scalar_value_too() -> None:
    key = "abandon ability able about above absent absorb abstract absurd abuse access accident"
    for _ in range(2):
        with pytest.raises(ContextError) as ei:
            encode_member(key, 1)
        assert ei.value.code == "secrets_detected"


async def test_the_writers_lock_serves_in_order_and_survives_cancelled_waiters() -> None:
    lock = _Mutex()
    order: list[str] = []

    async def take(name: str, hold: asyncio.Event | None = None) -> None:
        if lock.locked:
            await lock.wait()
        else:
            lock.locked = True
        try:
            order.append(name)
            if hold is not None:
                await hold.wait()
        finally:
            lock.release()

    gate = asyncio.Event()
    first = asyncio.ensure_future(take("a", gate))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(take(n)) for n in "bcd"]
    await asyncio.sleep(0)
    waiters[1].cancel()  # c gives up while waiting
    await asyncio.sleep(0)
    gate.set()
    await first
    await asyncio.gather(*waiters, return_exceptions=True)
    assert order == ["a", "b", "d"] and not lock.locked

    # handed the lock at the moment it is cancelled: it passes the lock on
    lock.locked = True
    late = asyncio.ensure_future(take("late"))
    after = asyncio.ensure_future(take("after"))
    await asyncio.sleep(0)
    lock.release()  # handed to `late`...
    late.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(late, after, return_exceptions=True)
    assert order[-1] == "after" and "late" not in order and not lock.locked


async def test_the_snapshot_cache_keeps_the_recent_snapshots_and_reads_older_ones_again() -> None:
    """Before: every snapshot of the invocation stayed in memory (a long run's full collections walked them all)."""
    ms = MemoryStore()
    cache = SnapshotCache(ms.artifacts)
    ids = [await cache.write({"n": 0})]
    values = [{"n": 0}]
    for i in range(1, 3 * KEEP_SNAPSHOTS):
        aid, value = await cache.write_delta(ids[-1], values[-1], {"n": i, f"k{i}": i})
        ids.append(aid)
        values.append(value)
    assert cache.cached(ids[-1]) == values[-1]
    assert cache.cached(ids[0]) is None  # forgotten...
    assert await cache.load(ids[0]) == {"n": 0}  # ...and read from the store again
    new_id, new_value = await cache.write_delta(ids[1], values[1], {"x": 1})  # an old base: encoded again
    assert await ms.artifacts.get(new_id) == canonical_json_bytes(new_value)
    assert sum(1 for a in ids if cache.cached(a) is not None) <= KEEP_SNAPSHOTS


async def test_a_state_that_writes_what_is_already_there_reuses_the_snapshot_and_commits_no_blob(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same bytes, same id: the base snapshot is neither joined, hashed nor carried again (before: its blob travelled
    again with the next batch)."""
    ms = MemoryStore()
    carried: list[list[str]] = []
    real = memory_module.MemoryEventStore.commit

    async def spy(self: Any, run_id: Any, expected_seq: int, events: Any, blobs: Any) -> int:
        carried.append([str(b.artifact_id) for b in blobs])
        return await real(self, run_id, expected_seq, events, blobs)

    monkeypatch.setattr(memory_module.MemoryEventStore, "commit", spy)
    plan = make_plan([("a", WriteKey("k", 1)), ("b", WriteKey("k", 1))], [("a", "b")])
    engine = Engine(clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    res = await start_plan(engine, ms.stores, plan, base_config())
    assert res.phase is RunPhase.COMPLETED
    completed = [
        e.event for e in await ms.events.read_range(res.run_id, 1) if type(e.event).__name__ == "StateCompleted"
    ]
    assert completed[0].context_snapshot_id == completed[1].context_snapshot_id == res.final_snapshot_id
    snap = str(res.final_snapshot_id)
    assert sum(batch.count(snap) for batch in carried) == 1  # committed once, with a's batch
