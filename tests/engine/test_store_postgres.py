"""PostgreSQL store: the shared store contract suite, plus what only a database backend must prove.

A real server is started once per test process (each pytest-xdist worker gets its own, see ``pg_server.py``); every
test gets its own schema, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from engine._kinds import ArtifactKind
from engine.config import Duration, Fixed, RetryPolicy
from engine.engine import RunPhase, RunResult, Stores
from engine.errors import StorageError, StorageErrorKind
from engine.events import DomainEvent, EventEnvelope, RunCompleted, RunStarted, RunStatus, StateEntered
from engine.hashing import artifact_id_for_bytes
from engine.ids import ArtifactId, OpId, RunId, StateId
from engine.runtime import Engine
from engine.stores import Blob
from engine.stores.memory import MemoryStore
from engine.stores.postgres import SCHEMA_VERSION, ChangeNotice, NotifyMode, PostgresStore, _artifacts, redact_dsn
from engine.testing import (
    Fail,
    FakeClock,
    FakeSleeper,
    Flaky,
    WriteKey,
    base_config,
    fixed_run_ids,
    make_plan,
    read_events,
    start_plan,
)
from tests.engine.pg_server import PgServer
from tests.engine.store_contract import StoreContract, UnitOfWorkContract

AID = ArtifactId("a" * 64)
HANG_GUARD = 30.0  # seconds; only so that a regression fails instead of hanging the suite


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_schema(pg_server: PgServer) -> str:
    return pg_server.new_schema_name()


@pytest.fixture
async def pg_store(pg_server: PgServer, pg_schema: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_server.dsn(), schema=pg_schema)
    try:
        yield await store.open()
    finally:
        await store.close()


class TestPostgresStoreContract(UnitOfWorkContract, StoreContract):
    """The shared contract, unchanged; each test on a fresh schema, ``second`` is another pool on it."""

    async def fail_between_blobs_and_events(self, store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
        """A trigger makes the server reject every event row: the blobs of the same statement are written first
        (the blob CTE runs whether or not its output is read), then the statement fails."""
        async with await psycopg.AsyncConnection.connect(self._server.dsn(), autocommit=True) as conn:
            await conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {}.mfm_test_fail() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$BEGIN RAISE EXCEPTION 'injected between the blobs and the events'; END$$"
                ).format(sql.Identifier(store.schema))
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TRIGGER mfm_test_fail BEFORE INSERT ON {}.mfm_events FOR EACH ROW"
                    " EXECUTE FUNCTION {}.mfm_test_fail()"
                ).format(sql.Identifier(store.schema), sql.Identifier(store.schema))
            )

    async def stop_failing(self, store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
        async with await psycopg.AsyncConnection.connect(self._server.dsn(), autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP TRIGGER mfm_test_fail ON {}.mfm_events").format(sql.Identifier(store.schema))
            )

    async def make_store(self, request: pytest.FixtureRequest) -> PostgresStore:
        server: PgServer = request.getfixturevalue("pg_server")
        self._server = server
        return PostgresStore(server.dsn(), schema=server.new_schema_name())

    async def reopen_store(self, store: PostgresStore, request: pytest.FixtureRequest) -> PostgresStore:
        server: PgServer = request.getfixturevalue("pg_server")
        return PostgresStore(server.dsn(), schema=store.schema)


def new_run() -> RunId:
    return RunId(str(uuid.uuid4()))


def env(run_id: RunId, seq: int, *, ts: int | None = 1_700_000_000_000) -> EventEnvelope:
    if seq == 1:
        event: object = RunStarted(op_id=OpId("demo"), manifest_id=AID, initial_snapshot_id=AID)
    elif seq % 2 == 0:
        event = StateEntered(state_id=StateId("demo.main.step"), attempt=seq, base_snapshot_id=AID)
    else:
        event = DomainEvent(name="note", payload={"seq": seq, "text": "héllo ☃ 𝄞"})
    return EventEnvelope(run_id=run_id, seq=seq, ts_millis=ts, event=event)


async def raw_connect(server: PgServer) -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(server.dsn())


async def wait_until_blocked(server: PgServer, text: str) -> None:
    """Poll the server until a backend running a statement containing ``text`` waits on a lock."""
    async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as conn:
        for _ in range(3000):
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                [f"%{text}%"],
            )
            row = await cur.fetchone()
            if row and row[0]:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the append never blocked on the uncommitted row")


# -- concurrency -----------------------------------------------------------------------------------------------


async def test_four_appenders_on_four_connections_exactly_one_winner_per_seq(
    pg_server: PgServer, pg_schema: str
) -> None:
    handles = [await PostgresStore(pg_server.dsn(), schema=pg_schema, max_connections=1).open() for _ in range(4)]
    run = new_run()
    try:
        for seq in range(1, 16):
            results = await asyncio.gather(
                *(h.events.append(run, seq - 1, [env(run, seq)]) for h in handles), return_exceptions=True
            )
            assert results.count(seq) == 1, results
            lost = [r for r in results if r != seq]
            assert all(isinstance(r, StorageError) and r.kind is StorageErrorKind.CONCURRENCY for r in lost), results
            assert {r.code for r in lost if isinstance(r, StorageError)} == {"event_store_concurrency"}
        assert [e.seq for e in await handles[3].events.read_range(run, 1)] == list(range(1, 16))
    finally:
        for h in handles:
            await h.close()


async def test_append_racing_an_uncommitted_row_waits_then_loses_on_the_primary_key(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    run = new_run()
    await pg_store.events.append(run, 0, [env(run, 1)])
    other = await raw_connect(pg_server)
    try:
        # Another writer has inserted seq 2 but not committed: our append reads head 1, so it must hit the key.
        await other.execute(
            f'INSERT INTO "{pg_store.schema}".mfm_events (run_id, seq, kind, payload) VALUES (%s, 2, %s, %s)',
            [uuid.UUID(run), "x", "{}"],
        )
        task = asyncio.create_task(pg_store.events.append(run, 1, [env(run, 2)]))
        await wait_until_blocked(pg_server, "mfm_events")
        assert not task.done()
        await other.commit()
        with pytest.raises(StorageError) as info:
            await asyncio.wait_for(task, HANG_GUARD)
        assert info.value.kind is StorageErrorKind.CONCURRENCY
        assert info.value.code == "event_store_concurrency"
    finally:
        await other.close()
    assert await pg_store.events.head_seq(run) == 2


async def test_append_racing_an_uncommitted_row_wins_when_the_other_rolls_back(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    run = new_run()
    other = await raw_connect(pg_server)
    try:
        await other.execute(
            f'INSERT INTO "{pg_store.schema}".mfm_events (run_id, seq, kind, payload) VALUES (%s, 1, %s, %s)',
            [uuid.UUID(run), "x", "{}"],
        )
        task = asyncio.create_task(pg_store.events.append(run, 0, [env(run, 1), env(run, 2)]))
        await wait_until_blocked(pg_server, "mfm_events")
        await other.rollback()
        assert await asyncio.wait_for(task, HANG_GUARD) == 2
    finally:
        await other.close()
    assert [e.seq for e in await pg_store.events.read_range(run, 1)] == [1, 2]


async def test_appends_to_different_runs_do_not_wait_on_each_other(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    blocked_run, free_run = new_run(), new_run()
    other = await raw_connect(pg_server)
    try:
        # An open transaction holding a fresh row of one run (as a slow appender would) ...
        await other.execute(
            f'INSERT INTO "{pg_store.schema}".mfm_events (run_id, seq, kind, payload) VALUES (%s, 1, %s, %s)',
            [uuid.UUID(blocked_run), "x", "{}"],
        )
        # ... does not delay another run's append, its head read or the run listing.
        assert await asyncio.wait_for(pg_store.events.append(free_run, 0, [env(free_run, 1)]), HANG_GUARD) == 1
        assert await asyncio.wait_for(pg_store.events.head_seq(free_run), HANG_GUARD) == 1
        assert await asyncio.wait_for(pg_store.events.list_runs(), HANG_GUARD) == [free_run]
        assert other.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    finally:
        await other.rollback()
        await other.close()


async def test_changes_since_never_skips_a_change_that_commits_late(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    """A serial cursor would skip the slow writer's run; the xmin cursor holds back until it commits."""
    events = pg_store.events
    cursor = (await events.changes_since(None)).cursor
    slow_run, fast_run = new_run(), new_run()
    slow = await raw_connect(pg_server)
    try:
        await slow.execute(
            f'INSERT INTO "{pg_store.schema}".mfm_runs (run_id, head, changed_xid)'
            " VALUES (%s, 1, pg_current_xact_id())",
            [uuid.UUID(slow_run)],
        )
        await events.append(fast_run, 0, [env(fast_run, 1)])  # starts later, commits first
        early = await events.changes_since(cursor)
        assert slow_run not in early.runs
        await slow.commit()
    finally:
        await slow.close()
    seen = set(early.runs)
    late = await events.changes_since(early.cursor)
    seen |= late.runs
    assert seen == {slow_run, fast_run}
    assert (await events.changes_since(late.cursor)).runs == frozenset()


# -- the unit of work's statement (issue 12) ------------------------------------------------------------------


async def test_a_state_sized_unit_is_one_prepared_statement_with_scalar_parameters(
    pg_server: PgServer, pg_schema: str
) -> None:
    """A state's unit (its events and snapshot) is sent with one scalar parameter per value and prepared once per
    connection: the text encoding of array parameters cost the client more CPU than the rest of the append, and
    the server planned their ``unnest`` on every commit (bench/postgres.py prints both)."""
    store = await PostgresStore(pg_server.dsn(), schema=pg_schema, max_connections=1, notify="off").open()
    run = new_run()
    try:
        head = 0
        for i in range(8):
            blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"i":%d}' % i)
            head = await store.events.commit(run, head, [env(run, head + 1), env(run, head + 2)], [blob])
        # the pool's only connection (private: what it has prepared is visible from that session only)
        async with store._core.conn("test") as conn:
            rows = await (
                await conn.execute(
                    "SELECT parameter_types::text[], generic_plans + custom_plans FROM pg_prepared_statements"
                    " WHERE statement LIKE %s",
                    [f"%{pg_schema}%mfm_events%"],
                )
            ).fetchall()
    finally:
        await store.close()
    assert head == 16
    assert len(rows) == 1, rows  # one shape for every later commit of the state
    types, executions = rows[0]
    assert executions >= 2
    assert not [t for t in types if t.endswith("[]")], types
    assert "bytea" in types


async def test_commits_on_a_pooled_connection_reuse_one_cursor(
    pg_server: PgServer, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append's hot path keeps one cursor per pooled connection: ``conn.execute`` made a cursor (and copied the
    connection's adapters map) at every commit, about a tenth of a state's client instructions with the rest of
    the store's per-commit bookkeeping (bench/postgres.py)."""
    made: list[object] = []
    real_cursor = psycopg.AsyncConnection.cursor

    def counting_cursor(self: psycopg.AsyncConnection[tuple[object, ...]], *args: object, **kwargs: object) -> object:
        cur = real_cursor(self, *args, **kwargs)  # type: ignore[call-overload]
        made.append(cur)
        return cur

    store = await PostgresStore(pg_server.dsn(), schema=pg_schema, max_connections=1, notify="off").open()
    run = new_run()
    try:
        head = await store.events.commit(run, 0, [env(run, 1)], [])
        monkeypatch.setattr(psycopg.AsyncConnection, "cursor", counting_cursor)
        for i in range(6):
            blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"c":%d}' % i)
            head = await store.events.commit(run, head, [env(run, head + 1), env(run, head + 2)], [blob])
        monkeypatch.undo()
        assert [e.seq for e in await store.events.read_range(run, 1)] == list(range(1, 14))
    finally:
        await store.close()
    assert made == []


async def test_a_blob_made_by_blob_of_is_not_hashed_again_and_a_hand_made_one_is_checked(
    pg_server: PgServer, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Blob.of`` hashed the bytes it holds: the commit takes its id as is (as the fs and memory stores do), a
    second SHA-256 of every snapshot per state was client CPU for nothing. A blob built field by field is hashed
    and refused when its id is not its content's."""
    hashed: list[bytes] = []
    real = _artifacts.artifact_id_for_bytes

    def counting(data: bytes) -> ArtifactId:
        hashed.append(data)
        return real(data)

    monkeypatch.setattr(_artifacts, "artifact_id_for_bytes", counting)
    run = new_run()
    async with PostgresStore(pg_server.dsn(), schema=pg_schema, max_connections=1, notify="off") as store:
        made = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"made":1}')
        assert await store.events.commit(run, 0, [env(run, 1)], [made]) == 1
        assert hashed == []
        assert await store.artifacts.get(made.artifact_id) == b'{"made":1}'
        by_hand = Blob(artifact_id_for_bytes(b'{"other":1}'), ArtifactKind.CONTEXT_SNAPSHOT, b'{"hand":1}')
        with pytest.raises(StorageError) as info:
            await store.events.commit(run, 1, [env(run, 2)], [by_hand])
        assert info.value.code == "artifact_put_id_mismatch"
        assert hashed == [b'{"hand":1}']
        assert await store.events.head_seq(run) == 1


async def test_units_of_every_size_read_back_exactly(pg_server: PgServer, pg_store: PostgresStore) -> None:
    """Both statement forms: scalar parameters (up to 8 events and 4 blobs) and arrays (larger units), with a
    missing timestamp, a blob given twice and a stored blob whose bytes were damaged (the commit repairs it)."""
    run = new_run()
    damaged = Blob.of(ArtifactKind.OUTPUT, b"will be damaged")
    await pg_store.artifacts.put(damaged.kind, damaged.data)
    table = sql.Identifier(pg_store.schema, "mfm_artifacts")
    async with await psycopg.AsyncConnection.connect(pg_server.dsn(), autocommit=True) as conn:
        await conn.execute(
            sql.SQL("UPDATE {} SET data = 'tampered'::bytea WHERE id = %s").format(table), [damaged.artifact_id]
        )
    small = [env(run, 1), env(run, 2, ts=None), env(run, 3)]
    small_blobs = [damaged, Blob.of(ArtifactKind.FACT_PAYLOAD, b"[1]"), Blob.of(ArtifactKind.FACT_PAYLOAD, b"[1]")]
    assert await pg_store.events.commit(run, 0, small, small_blobs) == 3
    large = [env(run, seq) for seq in range(4, 14)]
    large_blobs = [Blob.of(ArtifactKind.other("x"), b"blob %d" % i) for i in range(5)]
    assert await pg_store.events.commit(run, 3, large, large_blobs) == 13
    assert await pg_store.events.read_range(run, 1) == [*small, *large]
    for blob in [*small_blobs, *large_blobs]:
        assert await pg_store.artifacts.get(blob.artifact_id) == blob.data
        assert await pg_store.artifacts.kind_of(blob.artifact_id) == blob.kind
    with pytest.raises(StorageError) as info:  # a stale head in the scalar form writes nothing either
        await pg_store.events.commit(run, 12, [env(run, 13)], [Blob.of(ArtifactKind.OUTPUT, b"never")])
    assert info.value.kind is StorageErrorKind.CONCURRENCY and "found 13" in info.value.message
    assert not await pg_store.artifacts.exists(Blob.of(ArtifactKind.OUTPUT, b"never").artifact_id)


# -- schema ----------------------------------------------------------------------------------------------------


async def test_schema_is_created_and_versioned_on_first_use(pg_server: PgServer, pg_store: PostgresStore) -> None:
    rows = pg_server.psql(f'SELECT version FROM "{pg_store.schema}".mfm_schema').split()
    assert rows == [str(SCHEMA_VERSION)]
    # A second store on the same schema accepts it and sees the same data.
    run = new_run()
    await pg_store.events.append(run, 0, [env(run, 1)])
    async with PostgresStore(pg_server.dsn(), schema=pg_store.schema) as again:
        assert await again.events.head_seq(run) == 1
    assert pg_server.psql(f'SELECT count(*) FROM "{pg_store.schema}".mfm_schema').split() == ["1"]


async def test_unknown_schema_version_is_refused_with_a_clear_error(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    pg_server.psql(f'UPDATE "{pg_store.schema}".mfm_schema SET version = 99')
    newer = PostgresStore(pg_server.dsn(), schema=pg_store.schema)
    try:
        with pytest.raises(StorageError) as info:
            await newer.events.head_seq(new_run())
    finally:
        await newer.close()
    assert info.value.code == "store_version_unknown"
    assert "99" in info.value.message and str(SCHEMA_VERSION) in info.value.message


async def test_concurrent_first_use_creates_the_schema_once(pg_server: PgServer, pg_schema: str) -> None:
    stores = [PostgresStore(pg_server.dsn(), schema=pg_schema) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
    finally:
        for s in stores:
            await s.close()
    assert pg_server.psql(f'SELECT count(*) FROM "{pg_schema}".mfm_schema').split() == ["1"]


def test_invalid_schema_name_is_refused_before_any_sql() -> None:
    with pytest.raises(StorageError) as info:
        PostgresStore("host=/nonexistent", schema='x"; DROP TABLE y; --')
    assert info.value.code == "store_schema_invalid"


# -- rows ------------------------------------------------------------------------------------------------------


async def test_rows_mirror_the_reference_shape_and_keep_the_exact_wire_bytes(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    run = new_run()
    batch = [env(run, 1), env(run, 2, ts=None), env(run, 3)]
    await pg_store.events.append(run, 0, batch)
    out = pg_server.psql(
        f"SELECT seq, coalesce(ts_millis::text, 'null'), kind, payload FROM \"{pg_store.schema}\".mfm_events"
        f" WHERE run_id = '{run}' ORDER BY seq"
    )
    rows = [line.split("|", 3) for line in out.splitlines()]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert [r[1] for r in rows] == ["1700000000000", "null", "1700000000000"]
    assert [r[2] for r in rows] == ["RunStarted", "StateEntered", "note"]
    for row, sent in zip(rows, batch, strict=True):
        wire = sent.to_json()
        assert wire.endswith("," + '"event":' + row[3] + "}")
    read = await pg_store.events.read_range(run, 1)
    assert [e.to_json() for e in read] == [e.to_json() for e in batch]


async def test_a_corrupted_event_row_reads_as_corruption(pg_server: PgServer, pg_store: PostgresStore) -> None:
    run = new_run()
    await pg_store.events.append(run, 0, [env(run, 1)])
    pg_server.psql(f"UPDATE \"{pg_store.schema}\".mfm_events SET payload = '{{\"Kernel\":' WHERE run_id = '{run}'")
    with pytest.raises(StorageError) as info:
        await pg_store.events.read_range(run, 1)
    assert info.value.kind is StorageErrorKind.CORRUPTION
    assert info.value.code == "machine_event_decode_failed"


async def test_artifact_corrupted_in_the_table_is_detected_on_read_and_repaired_by_put(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    data = b'{"k":"v"}'
    aid = await pg_store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, data)
    assert aid == artifact_id_for_bytes(data)
    pg_server.psql(f"UPDATE \"{pg_store.schema}\".mfm_artifacts SET data = 'tampered'::bytea WHERE id = '{aid}'")
    with pytest.raises(StorageError) as info:
        await pg_store.artifacts.get(aid)
    assert info.value.kind is StorageErrorKind.CORRUPTION
    assert info.value.code == "artifact_corruption" and aid in info.value.message
    assert await pg_store.artifacts.put(ArtifactKind.OUTPUT, data) == aid
    assert await pg_store.artifacts.get(aid) == data
    assert await pg_store.artifacts.kind_of(aid) == ArtifactKind.CONTEXT_SNAPSHOT  # first kind is kept


# -- NOTIFY ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["commit", "after"])
async def test_notify_is_delivered_on_append_to_a_watcher_on_another_connection(
    pg_server: PgServer, pg_schema: str, mode: NotifyMode
) -> None:
    run = new_run()
    async with (
        PostgresStore(pg_server.dsn(), schema=pg_schema, notify=mode) as writer,
        PostgresStore(pg_server.dsn(), schema=pg_schema) as monitor,
        monitor.events.watch() as notices,
    ):
        await writer.events.append(run, 0, [env(run, 1), env(run, 2)])
        with pytest.raises(StorageError):
            await writer.events.append(run, 0, [env(run, 1)])  # a lost append notifies nothing
        await writer.events.append(run, 2, [])  # nor does an empty batch
        await writer.events.append(run, 2, [env(run, 3)])
        heads: list[int] = []
        while not heads or heads[-1] < 3:
            notice = await asyncio.wait_for(anext(notices), HANG_GUARD)
            assert notice.run_id == run
            heads.append(notice.head)
    # "commit" sends one notice per append; "after" may coalesce a run's heads into the latest.
    assert heads == [2, 3] if mode == "commit" else heads in ([2, 3], [3])


async def test_notify_after_sends_one_run_or_several_in_a_window(pg_server: PgServer, pg_schema: str) -> None:
    """The ``"after"`` notifier's two statements: one pending run (no array parameter) and several runs."""
    runs = [new_run() for _ in range(3)]
    async with (
        PostgresStore(pg_server.dsn(), schema=pg_schema, notify="after") as writer,
        writer.events.watch() as notices,
    ):
        await writer.events.append(runs[0], 0, [env(runs[0], 1)])
        first = await asyncio.wait_for(anext(notices), HANG_GUARD)
        for run in runs[1:]:  # both within one 20 ms window (or, on a slow machine, in two)
            await writer.events.append(run, 0, [env(run, 1), env(run, 2)])
        rest = {await asyncio.wait_for(anext(notices), HANG_GUARD) for _ in runs[1:]}
    assert first == ChangeNotice(run_id=runs[0], head=1)
    assert rest == {ChangeNotice(run_id=run, head=2) for run in runs[1:]}


async def test_notify_off_sends_nothing(pg_server: PgServer, pg_schema: str) -> None:
    quiet_run, loud_run = new_run(), new_run()
    async with (
        PostgresStore(pg_server.dsn(), schema=pg_schema, notify="off") as quiet,
        PostgresStore(pg_server.dsn(), schema=pg_schema, notify="commit") as loud,
        quiet.events.watch() as notices,
    ):
        await quiet.events.append(quiet_run, 0, [env(quiet_run, 1)])
        await loud.events.append(loud_run, 0, [env(loud_run, 1)])
        first = await asyncio.wait_for(anext(notices), HANG_GUARD)
    assert first == ChangeNotice(run_id=loud_run, head=1)  # notifications are ordered: the quiet one never came


def test_an_unknown_notify_mode_is_refused() -> None:
    with pytest.raises(StorageError) as info:
        PostgresStore("host=/nonexistent", notify="sometimes")  # type: ignore[arg-type]
    assert info.value.code == "store_notify_invalid"


async def test_notify_channels_are_per_schema(pg_server: PgServer, pg_store: PostgresStore) -> None:
    other_schema = pg_server.new_schema_name()
    assert pg_store.events.channel == f"mfm_events__{pg_store.schema}"
    run_a, run_b = new_run(), new_run()
    async with PostgresStore(pg_server.dsn(), schema=other_schema) as other, pg_store.events.watch() as notices:
        await other.events.append(run_b, 0, [env(run_b, 1)])
        await pg_store.events.append(run_a, 0, [env(run_a, 1)])
        first = await asyncio.wait_for(anext(notices), HANG_GUARD)
    assert first == ChangeNotice(run_id=run_a, head=1)


# -- secrets in DSNs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        "host=/nonexistent/socket/dir user=mfm password=s3cr3t-Pa55 dbname=mfm",
        "postgresql://mfm:s3cr3t-Pa55@/mfm?host=/nonexistent/socket/dir",
        "host=/nonexistent/socket/dir sslpassword=s3cr3t-Pa55 password='s3cr3t-Pa55' dbname=mfm",
    ],
)
async def test_dsn_password_never_appears_in_repr_or_errors(dsn: str) -> None:
    store = PostgresStore(dsn)
    shown = [repr(store), repr(store.events), repr(store.artifacts), store.dsn, redact_dsn(dsn)]
    with pytest.raises(StorageError) as info:
        await store.events.head_seq(new_run())
    err = info.value
    shown += [str(err), repr(err), err.message, err.one_line(), str(err.info.model_dump())]
    shown += [str(e) for e in (err.__cause__, err.__context__) if e is not None]
    assert err.code == "store_unavailable" and err.retryable
    assert "/nonexistent/socket/dir" in err.message
    for text in shown:
        assert "s3cr3t-Pa55" not in text, text
    assert "***" in store.dsn
    await store.close()


async def test_a_rejected_password_is_not_echoed_and_a_right_one_works(pg_server: PgServer, pg_schema: str) -> None:
    role = f"pw_{pg_schema}"
    pg_server.add_password_role(role, "r1ght-Pa55")
    base = pg_server.dsn().replace("user=postgres", f"user={role}")
    wrong = PostgresStore(f"{base} password=wr0ng-Pa55", schema=pg_schema)
    with pytest.raises(StorageError) as info:
        await wrong.events.list_runs()
    await wrong.close()
    err = info.value
    assert err.code == "store_unavailable" and "authentication failed" in err.message
    for text in (str(err), repr(err), err.message, repr(wrong), wrong.dsn):
        assert "wr0ng-Pa55" not in text and "r1ght-Pa55" not in text
    pg_server.psql(f'CREATE SCHEMA "{pg_schema}" AUTHORIZATION "{role}"')
    async with PostgresStore(f"{base} password=r1ght-Pa55", schema=pg_schema) as right:
        assert await right.events.list_runs() == []
        assert "r1ght-Pa55" not in repr(right)


def test_an_unparsable_dsn_is_not_echoed() -> None:
    assert redact_dsn("host=x password=hunter2 broken") == "<unparsable dsn>"


async def test_follow_streams_a_run_from_an_offset_until_it_completes(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    run, noise = new_run(), new_run()
    await pg_store.events.append(run, 0, [env(run, 1), env(run, 2)])
    seen: list[int] = []
    caught_up = asyncio.Event()

    async def consume(monitor: PostgresStore) -> None:
        async for envelope in monitor.events.follow(run, 2):
            seen.append(envelope.seq)
            if envelope.seq == 2:
                caught_up.set()

    async with PostgresStore(pg_server.dsn(), schema=pg_store.schema) as monitor:
        task = asyncio.create_task(consume(monitor))
        await asyncio.wait_for(caught_up.wait(), HANG_GUARD)
        await pg_store.events.append(noise, 0, [env(noise, 1)])
        await pg_store.events.append(run, 2, [env(run, 3)])
        done = EventEnvelope(run_id=run, seq=4, event=RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=AID))
        await pg_store.events.append(run, 3, [done])
        await asyncio.wait_for(task, HANG_GUARD)  # returns by itself after RunCompleted
    assert seen == [2, 3, 4]


# -- failures --------------------------------------------------------------------------------------------------


async def test_a_dropped_connection_is_a_retryable_error_and_the_pool_recovers(
    pg_server: PgServer, pg_schema: str
) -> None:
    run = new_run()
    async with PostgresStore(pg_server.dsn(), schema=pg_schema, max_connections=1) as store:
        await store.events.append(run, 0, [env(run, 1)])
        pg_server.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        with pytest.raises(StorageError) as info:
            await store.events.head_seq(run)
        assert info.value.code == "event_store_io" and info.value.retryable
        assert await store.events.head_seq(run) == 1  # a fresh connection replaced the dead one


async def test_a_connection_dropped_between_commits_fails_one_commit_retryably_and_the_next_one_lands(
    pg_server: PgServer, pg_schema: str
) -> None:
    """The commit path's kept cursor goes with its connection: after the server drops the connection, one commit
    fails (retryable, nothing written) and the next one runs on a fresh connection and cursor."""
    run = new_run()
    async with PostgresStore(pg_server.dsn(), schema=pg_schema, max_connections=1, notify="off") as store:
        blob = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"d":1}')
        assert await store.events.commit(run, 0, [env(run, 1)], [blob]) == 1
        pg_server.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        with pytest.raises(StorageError) as info:
            await store.events.commit(run, 1, [env(run, 2)], [blob])
        assert info.value.code == "event_store_io" and info.value.retryable
        assert await store.events.commit(run, 1, [env(run, 2)], [blob]) == 2
        assert [e.seq for e in await store.events.read_range(run, 1)] == [1, 2]


async def test_a_closed_store_refuses_further_calls(pg_server: PgServer, pg_schema: str) -> None:
    store = await PostgresStore(pg_server.dsn(), schema=pg_schema).open()
    await store.close()
    with pytest.raises(StorageError) as info:
        await store.events.head_seq(new_run())
    assert info.value.code == "store_closed"


async def test_a_read_only_role_can_monitor_an_existing_store_but_not_write(
    pg_server: PgServer, pg_store: PostgresStore
) -> None:
    run = new_run()
    await pg_store.events.append(run, 0, [env(run, 1)])
    role = f"ro_{pg_store.schema}"
    pg_server.psql(
        f'CREATE ROLE "{role}" LOGIN; GRANT USAGE ON SCHEMA "{pg_store.schema}" TO "{role}";'
        f' GRANT SELECT ON ALL TABLES IN SCHEMA "{pg_store.schema}" TO "{role}";'
    )
    dsn = pg_server.dsn().replace("user=postgres", f"user={role}")
    async with PostgresStore(dsn, schema=pg_store.schema) as monitor:
        assert await monitor.events.list_runs() == [run]
        assert [e.seq for e in await monitor.events.read_range(run, 1)] == [1]
        with pytest.raises(StorageError) as info:
            await monitor.events.append(run, 1, [env(run, 2)])
        assert info.value.code == "event_store_io" and not info.value.retryable
        assert "permission denied" in info.value.message
    assert await pg_store.events.head_seq(run) == 1


async def test_cancel_requests_use_the_injected_clock(pg_server: PgServer, pg_schema: str) -> None:
    run = new_run()
    async with PostgresStore(pg_server.dsn(), schema=pg_schema, clock=lambda: 1_234_567) as store:
        req = await store.events.request_cancel(run, "stop")
    assert req.requested_at_millis == 1_234_567


# -- the engine on PostgreSQL ----------------------------------------------------------------------------------


async def test_engine_run_on_postgres_writes_the_same_bytes_as_on_the_memory_store(pg_store: PostgresStore) -> None:
    """A run with a retry and a failure, then a resume: identical envelopes (byte for byte) on both backends."""

    async def run_on(stores: Stores) -> tuple[RunResult, RunResult, list[str]]:
        plan = make_plan(
            [("s1", WriteKey("a", 1)), ("s2", Flaky(failures=1, key="b")), ("s3", Fail("boom"))],
            [("s1", "s2"), ("s2", "s3")],
        )
        engine = Engine(
            clock=FakeClock(step=1), sleeper=FakeSleeper(), run_ids=fixed_run_ids(), plan_resolver=lambda _: plan
        )
        cfg = base_config(retry_policy=RetryPolicy(max_attempts=2, backoff=Fixed(delay=Duration(secs=0, nanos=0))))
        first = await start_plan(engine, stores, plan, cfg)
        again = await engine.resume(stores, first.run_id)
        return first, again, [e.to_json() for e in await read_events(stores, first.run_id)]

    on_memory = await run_on(MemoryStore().stores)
    on_pg = await run_on(pg_store.stores)
    assert on_pg == on_memory
    first, again, lines = on_pg
    assert first.phase is RunPhase.FAILED and again.phase is RunPhase.FAILED
    assert len(lines) == 10  # RS, E/C s1, E/F/E/C s2, E/F s3, RC
    assert await pg_store.events.list_runs() == [first.run_id]


def test_one_store_used_from_two_event_loops_reconnects(pg_server: PgServer, pg_schema: str) -> None:
    """A CLI may call ``asyncio.run`` twice with one store: connections of a finished loop are not reused."""
    store = PostgresStore(pg_server.dsn(), schema=pg_schema)
    run = new_run()
    assert asyncio.run(store.events.append(run, 0, [env(run, 1)])) == 1
    assert asyncio.run(store.events.append(run, 1, [env(run, 2)])) == 2

    async def read_and_close() -> list[int]:
        try:
            return [e.seq for e in await store.events.read_range(run, 1)]
        finally:
            await store.close()

    assert asyncio.run(read_and_close()) == [1, 2]

    other = PostgresStore(pg_server.dsn(), schema=pg_schema)
    assert asyncio.run(other.events.head_seq(run)) == 2
    asyncio.run(other.close())  # its pooled connection belongs to the first, finished loop
    with pytest.raises(StorageError):
        asyncio.run(other.events.head_seq(run))
