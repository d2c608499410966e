"""The store contract suite (CONFORMANCE section C), shared by every backend.

The ``eventsourcing`` library's pattern: this base class holds the tests, a backend's test module subclasses it
(its name must start with ``Test``) and implements :meth:`StoreContract.make_store`. A store is any object with
``.events`` (``EventStore`` + ``RunLister`` + ``ControlStore``), ``.artifacts`` (``ArtifactStore``) and ``.stores``
(an ``engine.Stores``). Hooks a backend may override:

- :meth:`make_store` (required): a fresh, empty store. ``request`` gives access to other fixtures
  (``request.getfixturevalue("tmp_path")``, a database server, ...);
- :meth:`reopen_store`: a second, independent handle on the same data (another "process"); default: the same object;
- :meth:`close_store`: release a handle; default: ``close()`` if the store has one (awaited if it is a coroutine).

Nothing here is specific to a backend: no paths, no SQL, no sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.errors import ErrorCategory, StateError, StorageError, StorageErrorKind
from engine.events import DomainEvent, EventEnvelope, RunCompleted, RunStarted, RunStatus, StateEntered, StateFailed
from engine.ids import ArtifactId, OpId, RunId, StateId
from engine.stores._base import (
    ArtifactStore,
    Blob,
    ControlStore,
    EventStore,
    RunLister,
    UnitOfWork,
    paired_unit_of_work,
)

__all__ = ["AID", "StoreContract", "UnitOfWorkContract", "domain", "env", "envs", "new_run"]

AID = ArtifactId("a" * 64)


def new_run() -> RunId:
    return RunId(str(uuid.uuid4()))


def domain(run_id: RunId, seq: int, payload: Any = None, *, name: str = "domain_event") -> EventEnvelope:
    """A domain-event envelope (C14's records: kind ``domain_event``, payload ``{"ok": true}``)."""
    body = {"ok": True} if payload is None else payload
    return EventEnvelope(
        run_id=run_id, seq=seq, ts_millis=1_700_000_000_000 + seq, event=DomainEvent(name=name, payload=body)
    )


def env(run_id: RunId, seq: int) -> EventEnvelope:
    """A varied, valid envelope for ``seq`` (kernel and domain events, unicode, null timestamps)."""
    sid = StateId("machine.main.s1")
    event: Any
    match seq % 5:
        case 1:
            event = RunStarted(op_id=OpId("op"), manifest_id=AID, initial_snapshot_id=AID)
        case 2:
            event = StateEntered(state_id=sid, attempt=seq, base_snapshot_id=AID)
        case 3:
            event = DomainEvent(name="note", payload={"seq": seq, "text": "héllo ☃ 𝄞 \u2028 \x00", "n": [1, None]})
        case 4:
            err = StateError.new("flaky", "try again", category=ErrorCategory.RPC, retryable=True, state_id=sid)
            event = StateFailed(state_id=sid, error=err)
        case _:
            event = RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=AID)
    return EventEnvelope(
        run_id=run_id, seq=seq, ts_millis=None if seq % 3 == 0 else 1_700_000_000_000 + seq, event=event
    )


def envs(run_id: RunId, first: int, last: int) -> list[EventEnvelope]:
    return [env(run_id, s) for s in range(first, last + 1)]


class StoreContract:
    """Subclass as ``TestXxxStore`` and implement :meth:`make_store`."""

    async def make_store(self, request: pytest.FixtureRequest) -> Any:
        raise NotImplementedError

    async def reopen_store(self, store: Any, request: pytest.FixtureRequest) -> Any:
        return store

    async def close_store(self, store: Any) -> None:
        close = getattr(store, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result

    async def recorded_kind(self, store: Any, artifact_id: ArtifactId) -> ArtifactKind | None:
        """The kind recorded at first put, through ``artifacts.kind_of`` or a ``kinds`` mapping."""
        kind_of = getattr(store.artifacts, "kind_of", None)
        if kind_of is not None:
            result = kind_of(artifact_id)
            return await result if inspect.isawaitable(result) else result
        kinds: dict[ArtifactId, ArtifactKind] = store.artifacts.kinds
        return kinds.get(artifact_id)

    @pytest.fixture
    async def store(self, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
        s = await self.make_store(request)
        try:
            yield s
        finally:
            await self.close_store(s)

    @pytest.fixture
    async def second(self, store: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
        """Another handle on ``store``'s data."""
        s = await self.reopen_store(store, request)
        try:
            yield s
        finally:
            if s is not store:
                await self.close_store(s)

    # -- shape ------------------------------------------------------------------------------------------------

    async def test_store_implements_every_protocol(self, store: Any) -> None:
        assert isinstance(store.events, EventStore)
        assert isinstance(store.events, RunLister)
        assert isinstance(store.events, ControlStore)
        assert isinstance(store.artifacts, ArtifactStore)
        stores = store.stores
        assert stores.events is store.events and stores.control is store.events
        assert stores.artifacts is store.artifacts

    # -- C14 head and first append ----------------------------------------------------------------------------

    async def test_c14_unknown_run_has_head_zero_and_first_append_returns_new_head(self, store: Any) -> None:
        run = new_run()
        assert await store.events.head_seq(run) == 0
        assert await store.events.append(run, 0, [domain(run, 1), domain(run, 2), domain(run, 3)]) == 3
        got = await store.events.read_range(run, 1)
        assert [e.seq for e in got] == [1, 2, 3]
        assert all(e.kind == "domain_event" and e.event.payload == {"ok": True} for e in got)  # type: ignore[union-attr]
        assert await store.events.head_seq(run) == 3

    async def test_c14_envelopes_round_trip_exactly(self, store: Any) -> None:
        run = new_run()
        batch = envs(run, 1, 10)
        assert await store.events.append(run, 0, batch[:4]) == 4
        assert await store.events.append(run, 4, batch[4:]) == 10
        assert await store.events.read_range(run, 1) == batch

    async def test_c14_empty_batch_returns_expected_seq_and_writes_nothing(self, store: Any) -> None:
        run = new_run()
        assert await store.events.append(run, 0, []) == 0
        assert await store.events.head_seq(run) == 0
        assert run not in await store.events.list_runs()
        await store.events.append(run, 0, [env(run, 1)])
        assert await store.events.append(run, 1, []) == 1
        with pytest.raises(StorageError) as info:
            await store.events.append(run, 0, [])
        assert info.value.kind is StorageErrorKind.CONCURRENCY

    # -- C15 optimistic concurrency ---------------------------------------------------------------------------

    async def test_c15_stale_expected_seq_is_a_concurrency_error_and_writes_nothing(self, store: Any) -> None:
        run = new_run()
        await store.events.append(run, 0, envs(run, 1, 3))
        for stale in (0, 1, 2, 4, 7):
            batch = [env(run, stale + 1)]
            with pytest.raises(StorageError) as info:
                await store.events.append(run, stale, batch)
            assert info.value.kind is StorageErrorKind.CONCURRENCY
            assert info.value.code == "event_store_concurrency"
            assert await store.events.head_seq(run) == 3
        assert await store.events.append(run, 3, envs(run, 4, 5)) == 5
        assert [e.seq for e in await store.events.read_range(run, 0)] == [1, 2, 3, 4, 5]

    @pytest.mark.parametrize("seqs", [[2], [1, 3], [1, 2, 2], [0]])
    async def test_c15_batch_not_continuing_expected_seq_is_rejected_whole(self, store: Any, seqs: list[int]) -> None:
        run = new_run()
        batch = [domain(run, s) if s >= 1 else domain(run, 1).model_copy(update={"seq": 0}) for s in seqs]
        with pytest.raises(StorageError) as info:
            await store.events.append(run, 0, batch)
        assert info.value.kind is StorageErrorKind.CONCURRENCY
        assert await store.events.head_seq(run) == 0
        assert await store.events.read_range(run, 0) == []

    async def test_c15_concurrent_appenders_exactly_one_winner_per_seq(self, store: Any, second: Any) -> None:
        run = new_run()
        for seq in range(1, 21):
            results = await asyncio.gather(
                store.events.append(run, seq - 1, [domain(run, seq, {"by": "a"})]),
                second.events.append(run, seq - 1, [domain(run, seq, {"by": "b"})]),
                return_exceptions=True,
            )
            winners = [r for r in results if r == seq]
            losers = [r for r in results if isinstance(r, StorageError)]
            assert len(winners) == 1, results
            assert len(losers) == 1 and losers[0].kind is StorageErrorKind.CONCURRENCY, results
        got = await second.events.read_range(run, 1)
        assert [e.seq for e in got] == list(range(1, 21))
        assert await store.events.read_range(run, 1) == got

    async def test_c15_second_handle_sees_appends_and_continues_the_stream(self, store: Any, second: Any) -> None:
        run = new_run()
        await store.events.append(run, 0, envs(run, 1, 3))
        assert await second.events.head_seq(run) == 3
        assert await second.events.append(run, 3, envs(run, 4, 6)) == 6
        assert await store.events.head_seq(run) == 6
        with pytest.raises(StorageError):
            await store.events.append(run, 3, [env(run, 4)])
        assert await store.events.read_range(run, 1) == envs(run, 1, 6)

    # -- C16 append-boundary validation -----------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            ({"value": 1.5}, "stream_payload_not_canonical"),
            ({"value": 2**60}, "stream_payload_not_canonical"),
            ({"private_key": "do-not-persist"}, "secrets_detected"),
            ({"note": "abandon " * 11 + "about"}, "secrets_detected"),
        ],
    )
    async def test_c16_invalid_payload_is_rejected_and_head_stays(self, store: Any, payload: Any, code: str) -> None:
        run = new_run()
        bad = domain(run, 1, payload)
        with pytest.raises(StorageError) as info:
            await store.events.append(run, 0, [bad])
        assert info.value.kind is StorageErrorKind.OTHER
        assert info.value.code == code
        assert "do-not-persist" not in info.value.message
        assert await store.events.head_seq(run) == 0
        assert run not in await store.events.list_runs()

    @pytest.mark.parametrize(("name", "code"), [("secret_key", "secrets_detected"), ("", "stream_record_invalid")])
    async def test_c16_invalid_record_kind_is_rejected(self, store: Any, name: str, code: str) -> None:
        run = new_run()
        with pytest.raises(StorageError) as info:
            await store.events.append(run, 0, [domain(run, 1, name=name)])
        assert (info.value.kind, info.value.code) == (StorageErrorKind.OTHER, code)
        assert await store.events.head_seq(run) == 0

    async def test_c16_one_invalid_record_rejects_the_whole_batch(self, store: Any) -> None:
        run = new_run()
        await store.events.append(run, 0, [env(run, 1)])
        batch = [domain(run, 2), domain(run, 3, {"x": 0.5}), domain(run, 4)]
        with pytest.raises(StorageError):
            await store.events.append(run, 1, batch)
        assert await store.events.head_seq(run) == 1
        assert [e.seq for e in await store.events.read_range(run, 1)] == [1]

    async def test_c16_envelope_of_another_run_is_rejected(self, store: Any) -> None:
        run, other = new_run(), new_run()
        with pytest.raises(StorageError) as info:
            await store.events.append(run, 0, [env(other, 1)])
        assert info.value.code == "event_run_id_mismatch"
        assert await store.events.head_seq(run) == 0
        assert await store.events.head_seq(other) == 0

    @pytest.mark.parametrize("bad", ["", "not-a-uuid", "../../etc", "A" * 36])
    async def test_invalid_run_id_is_rejected(self, store: Any, bad: str) -> None:
        calls = (
            lambda: store.events.head_seq(bad),
            lambda: store.events.read_range(bad, 1),
            lambda: store.events.append(bad, 0, []),
            lambda: store.events.request_cancel(bad),
            lambda: store.events.cancel_request(bad),
        )
        for call in calls:
            with pytest.raises(StorageError) as info:
                await call()
            assert info.value.code == "invalid_run_id"

    # -- C18 read_range -----------------------------------------------------------------------------------------

    async def test_c18_read_range_clamps_and_is_inclusive(self, store: Any) -> None:
        run = new_run()
        await store.events.append(run, 0, envs(run, 1, 5))

        async def seqs(lo: int, hi: int | None = None) -> list[int]:
            return [e.seq for e in await store.events.read_range(run, lo, hi)]

        assert await seqs(0) == [1, 2, 3, 4, 5]
        assert await seqs(-7) == [1, 2, 3, 4, 5]
        assert await seqs(2, 4) == [2, 3, 4]
        assert await seqs(4, 4) == [4]
        assert await seqs(5) == [5]
        assert await seqs(6) == []
        assert await seqs(3, 99) == [3, 4, 5]
        assert await seqs(4, 2) == []
        assert await seqs(1, 0) == []
        assert await store.events.read_range(new_run(), 0) == []
        assert await store.events.read_range(new_run(), 1, 10) == []

    async def test_c18_read_from_an_offset_after_more_appends(self, store: Any, second: Any) -> None:
        run = new_run()
        await store.events.append(run, 0, envs(run, 1, 3))
        assert [e.seq for e in await second.events.read_range(run, 2)] == [2, 3]
        await store.events.append(run, 3, envs(run, 4, 8))
        assert await second.events.read_range(run, 4) == envs(run, 4, 8)
        assert await second.events.read_range(run, 7, 7) == [env(run, 7)]

    async def test_large_batch_is_appended_atomically(self, store: Any) -> None:
        run = new_run()
        big = [domain(run, s, {"i": s, "blob": "x" * 300}) for s in range(1, 201)]
        assert await store.events.append(run, 0, big) == 200
        assert await store.events.read_range(run, 0) == big

    # -- C19 artifacts ------------------------------------------------------------------------------------------

    async def test_c19_put_is_content_addressed_idempotent_and_kind_is_not_hashed(self, store: Any) -> None:
        data = b'{"a":1,"b":2}'
        first = await store.artifacts.put(ArtifactKind.MANIFEST, data)
        again = await store.artifacts.put(ArtifactKind.MANIFEST, data)
        as_fact = await store.artifacts.put(ArtifactKind.FACT_PAYLOAD, data)
        assert first == again == as_fact == hashlib.sha256(data).hexdigest()
        assert isinstance(first, str) and len(first) == 64
        assert await store.artifacts.exists(first)
        assert await store.artifacts.get(first) == data

    async def test_c19_missing_artifact_is_not_found(self, store: Any) -> None:
        missing = ArtifactId(hashlib.sha256(b"never stored").hexdigest())
        assert not await store.artifacts.exists(missing)
        with pytest.raises(StorageError) as info:
            await store.artifacts.get(missing)
        assert (info.value.kind, info.value.code) == (StorageErrorKind.NOT_FOUND, "artifact_not_found")

    @pytest.mark.parametrize("bad", ["", "F" * 64, "g" * 64, "a" * 63, "../" + "a" * 61, "a" * 65])
    async def test_c19_invalid_artifact_id_is_not_found_and_does_not_exist(self, store: Any, bad: str) -> None:
        assert not await store.artifacts.exists(bad)
        with pytest.raises(StorageError) as info:
            await store.artifacts.get(bad)
        assert info.value.kind is StorageErrorKind.NOT_FOUND

    async def test_c19_second_handle_reads_artifacts(self, store: Any, second: Any) -> None:
        aid = await store.artifacts.put(ArtifactKind.OUTPUT, b"\x00\xffbinary")
        assert await second.artifacts.get(aid) == b"\x00\xffbinary"
        assert await second.artifacts.exists(aid)

    @pytest.mark.parametrize(
        "kind",
        [
            ArtifactKind.MANIFEST,
            ArtifactKind.CONTEXT_SNAPSHOT,
            ArtifactKind.FACT_PAYLOAD,
            ArtifactKind.SECRET_PAYLOAD,
            ArtifactKind.OUTPUT,
            ArtifactKind.other("report_v2"),
        ],
    )
    async def test_artifact_kinds_are_recorded_at_first_put(self, store: Any, kind: ArtifactKind) -> None:
        data = f"payload for {kind}".encode()
        aid = await store.artifacts.put(kind, data)
        await store.artifacts.put(ArtifactKind.other("later"), data)
        assert await self.recorded_kind(store, aid) == kind
        assert await store.artifacts.get(aid) == data

    async def test_empty_and_large_artifacts(self, store: Any) -> None:
        empty = await store.artifacts.put(ArtifactKind.OUTPUT, b"")
        assert empty == hashlib.sha256(b"").hexdigest()
        assert await store.artifacts.get(empty) == b""
        big = bytes(range(256)) * 4096  # 1 MiB
        aid = await store.artifacts.put(ArtifactKind.OUTPUT, big)
        assert await store.artifacts.get(aid) == big

    # -- RunLister ------------------------------------------------------------------------------------------------

    async def test_list_runs_lists_runs_with_events(self, store: Any) -> None:
        assert await store.events.list_runs() == []
        a, b, rejected = new_run(), new_run(), new_run()
        await store.events.append(a, 0, [env(a, 1)])
        await store.events.append(b, 0, envs(b, 1, 2))
        with pytest.raises(StorageError):
            await store.events.append(rejected, 0, [domain(rejected, 1, {"x": 1.5})])
        with pytest.raises(StorageError):
            await store.events.append(rejected, 3, [env(rejected, 4)])
        assert sorted(await store.events.list_runs()) == sorted([a, b])

    async def test_changes_since_reports_runs_that_grew(self, store: Any, second: Any) -> None:
        a, b = new_run(), new_run()
        await store.events.append(a, 0, [env(a, 1)])
        start = await store.events.changes_since(None)
        assert start.runs == frozenset()
        nothing = await store.events.changes_since(start.cursor)
        assert nothing.runs == frozenset() and nothing.cursor == start.cursor
        await store.events.append(a, 1, [env(a, 2)])
        one = await store.events.changes_since(start.cursor)
        assert one.runs == {a}
        await second.events.append(b, 0, [env(b, 1)])
        await store.events.append(a, 2, envs(a, 3, 4))
        two = await store.events.changes_since(one.cursor)
        assert two.runs == {a, b}
        assert (await store.events.changes_since(two.cursor)).runs == frozenset()
        assert (await store.events.changes_since(start.cursor)).runs == {a, b}
        with pytest.raises(StorageError):
            await store.events.append(a, 0, [env(a, 1)])
        assert (await store.events.changes_since(two.cursor)).runs == frozenset()

    # -- ControlStore ---------------------------------------------------------------------------------------------

    async def test_cancel_requests_first_one_wins(self, store: Any, second: Any) -> None:
        run = new_run()
        assert await store.events.cancel_request(run) is None
        req = await store.events.request_cancel(run, "operator asked")
        assert (req.run_id, req.reason) == (run, "operator asked")
        assert req.requested_at_millis > 0
        again = await second.events.request_cancel(run, "second thoughts")
        assert again == req
        assert await second.events.cancel_request(run) == req
        assert await store.events.cancel_request(new_run()) is None

    async def test_artifact_ids_by_prefix(self, store: Any) -> None:
        ids = sorted([await store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, b"%d" % n) for n in range(40)])
        assert await store.artifacts.ids_with_prefix(ids[0], 5) == [ids[0]]
        fan = ids[0][0]
        same = [a for a in ids if a.startswith(fan)]
        assert await store.artifacts.ids_with_prefix(fan, 99) == same
        assert await store.artifacts.ids_with_prefix("", 99) == ids
        assert await store.artifacts.ids_with_prefix("", 3) == ids[:3]
        assert await store.artifacts.ids_with_prefix("%", 9) == []  # never a wildcard or a path
        assert await store.artifacts.ids_with_prefix("../", 9) == []

    async def test_retry_now_requests_are_per_state_and_attempt(self, store: Any, second: Any) -> None:
        run = new_run()
        state = "machine.main.s/1 ../weird"  # a state id never becomes a path
        assert await store.events.retry_now_request(run, state, 1) is None
        req = await store.events.request_retry_now(run, state, 1)
        assert (req.run_id, req.state_id, req.attempt) == (run, state, 1)
        assert req.requested_at_millis > 0
        assert await second.events.request_retry_now(run, state, 1) == req  # the first one wins
        assert await second.events.retry_now_request(run, state, 1) == req
        assert await store.events.retry_now_request(run, state, 2) is None
        assert await store.events.retry_now_request(run, "machine.main.other", 1) is None
        assert await store.events.retry_now_request(new_run(), state, 1) is None
        with pytest.raises(StorageError) as info:
            await store.events.request_retry_now("../../etc", state, 1)
        assert info.value.code == "invalid_run_id"


class UnitOfWorkContract:
    """The unit of work (issue 12) on top of :class:`StoreContract`: mix in before it, as
    ``class TestXxx(UnitOfWorkContract, StoreContract)``, and implement :meth:`fail_between_blobs_and_events`."""

    async def fail_between_blobs_and_events(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make every ``commit`` fail after its blobs were written and before its events are."""
        raise NotImplementedError

    async def stop_failing(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """Undo :meth:`fail_between_blobs_and_events`."""
        monkeypatch.undo()

    async def test_uow_store_is_a_unit_of_work_paired_with_its_artifacts(self, store: Any) -> None:
        assert isinstance(store.events, UnitOfWork)
        assert paired_unit_of_work(store.events, store.artifacts) is store.events
        assert paired_unit_of_work(store.events, object()) is None  # type: ignore[arg-type]

    async def test_uow_commit_lands_blobs_and_events_together(self, store: Any, second: Any) -> None:
        run = new_run()
        blobs = [Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"a":1}'), Blob.of(ArtifactKind.FACT_PAYLOAD, b"[1,2]")]
        assert await store.events.commit(run, 0, [env(run, 1), env(run, 2)], blobs) == 2
        for b in blobs:
            assert await second.artifacts.get(b.artifact_id) == b.data
            assert await self.recorded_kind(second, b.artifact_id) == b.kind
        assert [e.seq for e in await second.events.read_range(run, 1)] == [1, 2]
        # a blob already stored, and a commit without blobs, behave like put and append
        assert await store.events.commit(run, 2, [env(run, 3)], blobs[:1]) == 3
        assert await store.events.commit(run, 3, [env(run, 4)], []) == 4
        assert await second.events.head_seq(run) == 4

    async def test_uow_stale_head_commits_nothing(self, store: Any) -> None:
        run = new_run()
        await store.events.append(run, 0, [env(run, 1)])
        blob = Blob.of(ArtifactKind.OUTPUT, b"stale")
        with pytest.raises(StorageError) as info:
            await store.events.commit(run, 0, [env(run, 1)], [blob])
        assert info.value.kind is StorageErrorKind.CONCURRENCY
        assert not await store.artifacts.exists(blob.artifact_id)
        assert await store.events.head_seq(run) == 1

    async def test_uow_bad_blob_or_bad_event_commits_nothing(self, store: Any) -> None:
        run = new_run()
        good = Blob.of(ArtifactKind.OUTPUT, b"good")
        lying = Blob(ArtifactId("b" * 64), ArtifactKind.OUTPUT, b"not b*64")
        with pytest.raises(StorageError) as info:
            await store.events.commit(run, 0, [env(run, 1)], [good, lying])
        assert info.value.code == "artifact_put_id_mismatch"
        secret = domain(run, 1, {"private_key": "do-not-persist"})
        with pytest.raises(StorageError):
            await store.events.commit(run, 0, [secret], [good])
        assert not await store.artifacts.exists(good.artifact_id)
        assert not await store.artifacts.exists(lying.artifact_id)
        assert await store.events.head_seq(run) == 0 and await store.events.list_runs() == []

    async def test_uow_failure_between_blob_and_event_writes_leaves_nothing(
        self, store: Any, second: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run = new_run()
        await store.events.append(run, 0, [env(run, 1)])
        blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"between":true}')
        await self.fail_between_blobs_and_events(store, monkeypatch)
        with pytest.raises(StorageError):
            await store.events.commit(run, 1, [env(run, 2)], [blob])
        await self.stop_failing(store, monkeypatch)
        assert not await second.artifacts.exists(blob.artifact_id)
        assert await second.events.head_seq(run) == 1
        assert await store.events.commit(run, 1, [env(run, 2)], [blob]) == 2  # nothing half-done in the way
        assert await second.artifacts.get(blob.artifact_id) == blob.data
