"""PostgreSQL store backend: the same contract as the memory and filesystem stores, shared by many hosts.

``PostgresStore(dsn)`` gives ``.events`` (EventStore + RunLister + ControlStore), ``.artifacts`` (ArtifactStore)
and ``.stores`` (an ``engine.Stores``). It uses psycopg 3 (async) and a small built-in connection pool; close it
with ``await store.close()`` (or ``async with PostgresStore(dsn) as store``). Needs PostgreSQL 13 or newer (``xid8``,
``pg_current_snapshot``); tested against 15. Reading needs only ``SELECT`` on the tables; the first user of an empty
schema creates them (``CREATE`` on the schema, and on the database if the schema does not exist yet).

Tables (in ``schema``, default ``public``; created and versioned on first use under an advisory lock):

``mfm_schema(version, created_at)``
    one row; ``version`` is :data:`SCHEMA_VERSION`. Any other value → ``StorageError`` ``store_version_unknown``.
``mfm_events(run_id uuid, seq bigint, ts_millis bigint NULL, kind text, payload text)``, ``PRIMARY KEY (run_id, seq)``
    the reference store's row shape keyed by run id. ``kind`` is the envelope's kind (``StateEntered``, or a domain
    event name); ``payload`` is the event's exact wire JSON (ENGINE-SPEC §4.4) as text, so a read re-encodes
    byte-identically. The primary key is the optimistic-concurrency check: two appenders of one ``seq`` cannot
    both commit. No table lock is ever taken; appends to different runs never wait on each other.
``mfm_runs(run_id uuid PRIMARY KEY, head bigint, changed_xid xid8)``
    one row per run, inserted by its first append and updated in place by later ones: ``list_runs`` and
    ``changes_since``.
``mfm_artifacts(id text PRIMARY KEY, kind text, data bytea)``
    content-addressed blobs; ``kind`` is the wire JSON of the ``ArtifactKind`` given at the first put. Every read
    is re-hashed (mismatch → Corruption ``artifact_corruption``); a put of a corrupted id repairs it.
``mfm_cancels(run_id uuid PRIMARY KEY, requested_at_millis bigint, reason text)``
    cancel requests (first request wins).

An append is ONE statement in autocommit mode (one round trip, one commit): it reads the head, inserts the batch
only if the head equals ``expected_seq`` and writes the ``mfm_runs`` row — all or nothing. A stale ``expected_seq``
or a lost race (unique violation) → Concurrency ``event_store_concurrency``.

``changes_since`` cursors are transaction ids, not a serial: a serial is assigned before commit, so a reader could
see change 11 commit before change 10 and skip 10 for ever. The cursor is instead the snapshot's ``xmin`` (every
transaction below it has finished), and a call returns the runs whose last change lies in ``[cursor, xmin)`` —
complete and never repeated. (A long-open transaction elsewhere in the cluster delays reports until it ends.)

Live tailing: appends notify channel :attr:`PostgresEventStore.channel` (``mfm_events``, or
``mfm_events__<schema>``) with payload ``<run_id>:<head>``. When (``notify=``):

``"after"`` (default)
    a background task sends the pending ``run:head`` pairs (coalesced per run) within 20 ms after the commits, as
    one short transaction with ``synchronous_commit = off``. Best effort: a crash before the send loses the hint.
``"commit"``
    ``pg_notify`` inside the append's own statement: atomic with it, but PostgreSQL serialises every notifying
    commit in the cluster on one lock held through the commit's WAL flush, so concurrent appenders (other runs,
    other hosts) queue behind each other's fsync — about 3-6× fewer appends/s with 8 writers in bench/postgres.py.
``"off"``
    no notifications; monitors poll ``changes_since``.

``async with store.events.watch() as notices:`` listens
(the subscription is active when the block is entered) and ``async for n in notices`` yields :class:`ChangeNotice`.
``store.events.follow(run_id, from_seq)`` builds ``mfm events --follow`` on it: the run's envelopes, then each new
one as it lands, until ``RunCompleted``.

The DSN's password never appears in a repr or an error message (:func:`redact_dsn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, LiteralString, NoReturn

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from engine._kinds import ArtifactKind
from engine._wire import compact_json
from engine.errors import StorageError
from engine.events import EventEnvelope, RunCompleted
from engine.hashing import artifact_id_for_bytes
from engine.ids import ArtifactId, RunId
from engine.stores._base import (
    CODE_CONCURRENCY,
    CancelRequest,
    ChangeBatch,
    check_artifact_id,
    check_run_id,
    encode_batch,
)

if TYPE_CHECKING:
    from engine.engine import Stores

__all__ = [
    "SCHEMA_VERSION",
    "ChangeNotice",
    "NotifyMode",
    "PostgresArtifactStore",
    "PostgresEventStore",
    "PostgresStore",
    "redact_dsn",
]

SCHEMA_VERSION: Final = 1
_NOTIFY_WINDOW: Final = 0.02
"""Seconds the ``"after"`` notifier waits to coalesce appends into one NOTIFY: watchers see ≤ 50 updates/s per store."""
_MAX_SEQ: Final = 2**63 - 1
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_SECRET_KEYS: Final = ("password", "sslpassword")
_Conn = psycopg.AsyncConnection[tuple[Any, ...]]
NotifyMode = Literal["commit", "after", "off"]


def redact_dsn(dsn: str) -> str:
    """The DSN with every password replaced by ``***`` (an unparsable DSN is not shown at all)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable dsn>"
    return make_conninfo("", **{k: ("***" if k in _SECRET_KEYS else v) for k, v in params.items()})


def _dsn_secrets(dsn: str) -> list[str]:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return []
    return [str(params[k]) for k in _SECRET_KEYS if params.get(k)]


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    """One ``NOTIFY`` from an append: run ``run_id`` now has head ``head``."""

    run_id: RunId
    head: int


class _Notifier:
    """Sends the ``NOTIFY`` of appends made in ``"after"`` mode from a background task on its own connection.

    An append only records ``run → head`` here (coalescing: a watcher needs only the latest head of each run) and
    returns; within :data:`_NOTIFY_WINDOW` the task sends everything pending as one short, non-durable transaction.
    So the append's commit never holds PostgreSQL's cluster-wide notify lock during its WAL flush (``"commit"`` mode
    does: notifying commits serialise), and a busy writer pays for one NOTIFY per window, not one per append.
    """

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._pending: dict[RunId, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: _Conn | None = None

    def push(self, run_id: RunId, head: int) -> None:
        if head > self._pending.get(run_id, 0):
            self._pending[run_id] = head
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mfm-postgres-notifier")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(_NOTIFY_WINDOW)  # gather the appends of the next few ms into one NOTIFY transaction
            self._wake.clear()
            await self._send()

    async def _send(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await self._core.connect()
            payloads = [f"{run}:{head}" for run, head in batch.items()]
            await self._conn.execute(self._core.q.notify_after, [self._core.channel, payloads])
        except asyncio.CancelledError:  # closing mid-send: keep the batch for the final send, drop the connection
            for run, head in batch.items():
                if head > self._pending.get(run, 0):
                    self._pending[run] = head
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.pgconn.finish()
            raise
        except (psycopg.Error, StorageError):
            # Best effort: the appends are committed; a lost hint delays a watcher until the next append
            # (monitors also call ``changes_since``). The connection is replaced on the next send.
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    def reset(self) -> None:
        """The event loop changed: the task and connection belonged to the old one."""
        if self._conn is not None:
            self._conn.pgconn.finish()
        self._conn, self._task, self._wake = None, None, asyncio.Event()

    async def close(self) -> None:
        """Send what is pending, stop the task, close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._send()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


class _Core:
    """Connection pool, schema bootstrap, SQL text and error translation shared by both stores."""

    def __init__(
        self, dsn: str, schema: str, max_connections: int, clock: Callable[[], int] | None, notify: NotifyMode
    ) -> None:
        if not isinstance(schema, str) or _SCHEMA_NAME.fullmatch(schema) is None:
            raise StorageError.other("store_schema_invalid", f"invalid schema name: {schema!r}"[:200])
        if notify not in ("commit", "after", "off"):
            raise StorageError.other(
                "store_notify_invalid", f"notify must be 'commit', 'after' or 'off', not {notify!r}"
            )
        self.notify: NotifyMode = notify
        if max_connections < 1:
            raise StorageError.other("store_pool_invalid", "max_connections must be at least 1")
        self.dsn_redacted = redact_dsn(dsn)
        self._dsn = dsn
        self._secrets = _dsn_secrets(dsn)
        self.schema = schema
        self.channel = "mfm_events" if schema == "public" else f"mfm_events__{schema}"
        self._max = max_connections
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._init_lock = asyncio.Lock()
        self._ready = False
        self._closed = False
        self.q = _Queries(schema)
        self.now_millis: Callable[[], int] = clock or (lambda: time.time_ns() // 1_000_000)
        self.notifier = _Notifier(self)

    # -- errors -------------------------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def fail(self, code: str, what: str, exc: BaseException) -> NoReturn:
        """Translate a driver error (the one place this happens)."""
        if isinstance(exc, StorageError):
            raise exc
        detail = self.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        state = getattr(exc, "sqlstate", None)
        retryable = isinstance(exc, psycopg.OperationalError)
        msg = f"{what} failed on PostgreSQL ({self.dsn_redacted}): {detail}"[:500]
        raise StorageError.other(code, msg, {"sqlstate": state} if state else None, retryable=retryable) from None

    # -- connections --------------------------------------------------------------------------------------------

    async def connect(self) -> _Conn:
        if self._closed:
            raise StorageError.other("store_closed", f"PostgreSQL store {self.dsn_redacted} is closed")
        try:
            conn: _Conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        except psycopg.Error as exc:
            detail = self.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            raise StorageError.other(
                "store_unavailable",
                f"cannot connect to PostgreSQL ({self.dsn_redacted}): {detail}"[:500],
                retryable=True,
            ) from None
        return conn

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Connections belong to the loop that opened them: a new loop starts a fresh pool.
            for conn in self._idle:
                conn.pgconn.finish()
            self._idle.clear()
            self._slots = asyncio.Semaphore(self._max)
            self._init_lock = asyncio.Lock()
            self.notifier.reset()
            self._loop = loop

    @asynccontextmanager
    async def conn(self, code: str) -> AsyncIterator[_Conn]:
        """A pooled autocommit connection; schema verified on first use; errors → ``StorageError(code)``."""
        await self.ready()
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self.connect()
            try:
                yield conn
            except psycopg.Error as exc:
                self.fail(code, "query", exc)
            finally:
                idle = psycopg.pq.TransactionStatus.IDLE
                if self._closed or conn.closed or conn.broken or conn.info.transaction_status != idle:
                    await conn.close()
                else:
                    self._idle.append(conn)

    async def close(self) -> None:
        same_loop = self._loop is asyncio.get_running_loop()
        if same_loop:
            await self.notifier.close()
        else:
            self.notifier.reset()
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            if same_loop:
                await conn.close()
            else:  # opened by another (finished) loop: close the socket without awaiting on it
                conn.pgconn.finish()

    # -- schema -------------------------------------------------------------------------------------------------

    async def ready(self) -> None:
        """Bind to the running loop and make sure the schema exists and has our version (once per store)."""
        self._check_loop()
        if not self._ready:
            await self._bootstrap()

    async def _bootstrap(self) -> None:
        async with self._init_lock:
            if self._ready:
                return
            conn = await self.connect()
            try:
                try:  # fast path, and the only one a read-only role (a monitor) needs
                    rows = await (await conn.execute(self.q.select_version)).fetchall()
                except (pgerrors.UndefinedTable, pgerrors.InvalidSchemaName):
                    rows = await self._create_schema(conn)
                if len(rows) != 1 or rows[0][0] != SCHEMA_VERSION:
                    found = ", ".join(str(r[0]) for r in rows) or "none"
                    raise StorageError.other(
                        "store_version_unknown",
                        f"PostgreSQL store {self.dsn_redacted} schema {self.schema!r} has version {found}; "
                        f"this engine reads version {SCHEMA_VERSION} only",
                    )
            except psycopg.Error as exc:
                self.fail("store_init_failed", "schema setup", exc)
            finally:
                await conn.close()
            self._ready = True

    async def _create_schema(self, conn: _Conn) -> list[tuple[Any, ...]]:
        """Create every table under an advisory lock (concurrent first users create it once); return the version."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"mfm_schema:{self.schema}"])
            exists = await (
                await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema])
            ).fetchone()
            if exists is None:  # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when it exists
                await conn.execute(self.q.create_schema)
            await conn.execute(self.q.create_version_table)
            rows = await (await conn.execute(self.q.select_version)).fetchall()
            if not rows:
                for stmt in self.q.create_tables:
                    await conn.execute(stmt)
                await conn.execute(self.q.insert_version, [SCHEMA_VERSION])
                rows = [(SCHEMA_VERSION,)]
        return rows


class _Queries:
    """Every SQL statement, composed once with the schema-qualified table names."""

    def __init__(self, schema: str) -> None:
        names = {
            t: sql.Identifier(schema, t)
            for t in ("mfm_schema", "mfm_events", "mfm_runs", "mfm_artifacts", "mfm_cancels")
        }

        def q(text: LiteralString) -> sql.Composed:
            return sql.SQL(text).format(**names)

        self.create_schema = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
        self.create_version_table = q(
            "CREATE TABLE IF NOT EXISTS {mfm_schema} (version integer NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
        self.select_version = q("SELECT version FROM {mfm_schema}")
        self.insert_version = q("INSERT INTO {mfm_schema} (version) VALUES (%s)")
        self.create_tables = [
            q(
                "CREATE TABLE {mfm_events} (run_id uuid NOT NULL, seq bigint NOT NULL CHECK (seq >= 1),"
                " ts_millis bigint, kind text NOT NULL, payload text NOT NULL, PRIMARY KEY (run_id, seq))"
            ),
            q("CREATE TABLE {mfm_runs} (run_id uuid PRIMARY KEY, head bigint NOT NULL, changed_xid xid8 NOT NULL)"),
            q("CREATE INDEX ON {mfm_runs} (changed_xid)"),
            q(
                "CREATE TABLE {mfm_artifacts} (id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{{64}}$'),"
                " kind text NOT NULL, data bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            ),
            q(
                "CREATE TABLE {mfm_cancels} (run_id uuid PRIMARY KEY, requested_at_millis bigint NOT NULL,"
                " reason text NOT NULL)"
            ),
        ]
        # One statement per append (see the module docstring); four shapes: one event (scalar parameters) or
        # several (arrays), and the run's first append (INSERT its mfm_runs row) or a later one (UPDATE it in place).
        head = "WITH head AS (SELECT coalesce(max(seq), 0) AS h FROM {mfm_events} WHERE run_id = %(run)s),"
        one = (
            " ins AS (INSERT INTO {mfm_events} (run_id, seq, ts_millis, kind, payload)"
            "  SELECT %(run)s, %(seq)s, %(ts)s, %(kind)s, %(payload)s FROM head WHERE head.h = %(expected)s"
            "  RETURNING seq),"
        )
        many = (
            " ins AS (INSERT INTO {mfm_events} (run_id, seq, ts_millis, kind, payload)"
            "  SELECT %(run)s, b.seq, b.ts, b.kind, b.payload"
            "  FROM unnest(%(seq)s::bigint[], %(ts)s::bigint[], %(kind)s::text[], %(payload)s::text[])"
            "   AS b(seq, ts, kind, payload), head WHERE head.h = %(expected)s RETURNING seq),"
        )
        first = (
            " run AS (INSERT INTO {mfm_runs} (run_id, head, changed_xid)"
            "  SELECT %(run)s, max(seq), pg_current_xact_id() FROM ins HAVING count(*) > 0"
            "  ON CONFLICT (run_id) DO UPDATE SET head = EXCLUDED.head, changed_xid = EXCLUDED.changed_xid"
            "  RETURNING head)"
        )
        later = (
            " run AS (UPDATE {mfm_runs} SET head = top.seq, changed_xid = pg_current_xact_id()"
            "  FROM (SELECT max(seq) AS seq FROM ins HAVING count(*) > 0) AS top"
            "  WHERE run_id = %(run)s RETURNING head)"
        )
        notify_tail = (
            ", note AS (SELECT pg_notify(%(channel)s, %(run)s::text || ':' || head::text) FROM run)"
            " SELECT (SELECT h FROM head), (SELECT count(*) FROM note)"
        )
        quiet_tail = " SELECT (SELECT h FROM head), (SELECT count(*) FROM run)"
        # Keyed by (several events?, first append of the run?, NOTIFY inside the append's transaction?).
        self.append = {
            (many_, first_, in_txn): q(
                head + (many if many_ else one) + (first if first_ else later) + (notify_tail if in_txn else quiet_tail)
            )
            for many_ in (False, True)
            for first_ in (False, True)
            for in_txn in (False, True)
        }
        # NOTIFY after the appends committed, as its own transaction: nothing in it needs to be durable.
        self.notify_after: LiteralString = (
            "SELECT set_config('synchronous_commit', 'off', true), count(pg_notify(%s, p)) FROM unnest(%s::text[]) p"
        )
        self.head = q("SELECT coalesce(max(seq), 0) FROM {mfm_events} WHERE run_id = %s")
        self.read = q(
            "SELECT seq, ts_millis, payload FROM {mfm_events}"
            " WHERE run_id = %s AND seq >= %s AND seq <= %s ORDER BY seq"
        )
        self.list_runs = q("SELECT run_id FROM {mfm_runs}")
        self.changes = q(
            "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)"
            " SELECT s.x::text, r.run_id FROM s LEFT JOIN {mfm_runs} r"
            " ON r.changed_xid >= %s::text::xid8 AND r.changed_xid < s.x"
        )
        self.xmin = q("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        self.cancel = q(
            "INSERT INTO {mfm_cancels} (run_id, requested_at_millis, reason) VALUES (%s, %s, %s)"
            " ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id RETURNING requested_at_millis, reason"
        )
        self.cancel_get = q("SELECT requested_at_millis, reason FROM {mfm_cancels} WHERE run_id = %s")
        # Insert, or (already there) repair the row only if its bytes no longer match its id. Neither DO NOTHING
        # nor an UPDATE that matches no row locks or writes anything: re-putting a stored artifact costs no commit
        # flush (ON CONFLICT DO UPDATE would lock the row, and so write WAL, even when its WHERE is false).
        self.put = q(
            "WITH ins AS (INSERT INTO {mfm_artifacts} (id, kind, data) VALUES (%(id)s, %(kind)s, %(data)s)"
            "  ON CONFLICT (id) DO NOTHING RETURNING 1),"
            " fix AS (UPDATE {mfm_artifacts} SET data = %(data)s WHERE id = %(id)s AND NOT EXISTS (SELECT FROM ins)"
            "  AND sha256(data) <> decode(id, 'hex') RETURNING 1)"
            " SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM fix)"
        )
        self.get = q("SELECT data FROM {mfm_artifacts} WHERE id = %s")
        self.exists = q("SELECT 1 FROM {mfm_artifacts} WHERE id = %s")
        self.kind = q("SELECT kind FROM {mfm_artifacts} WHERE id = %s")


class PostgresEventStore:
    """Event streams in ``mfm_events``; also the monitor's ``RunLister`` and the ``ControlStore``."""

    def __init__(self, core: _Core) -> None:
        self._core = core

    @property
    def channel(self) -> str:
        """The ``LISTEN`` channel every append notifies."""
        return self._core.channel

    def __repr__(self) -> str:
        return f"PostgresEventStore({self._core.dsn_redacted!r}, schema={self._core.schema!r})"

    async def head_seq(self, run_id: RunId) -> int:
        run_id = check_run_id(run_id)
        async with self._core.conn("event_store_io") as conn:
            row = await (await conn.execute(self._core.q.head, [uuid.UUID(run_id)])).fetchone()
        return int(row[0]) if row else 0

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        run_id = check_run_id(run_id)
        events = list(events)
        lines = encode_batch(run_id, expected_seq, events)  # validation (ENGINE-SPEC §3.3) before anything is sent
        if not 0 <= expected_seq <= _MAX_SEQ - len(events):
            head = await self.head_seq(run_id)
            raise StorageError.concurrency(
                CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {head}"
            )
        if not events:
            head = await self.head_seq(run_id)
            if head != expected_seq:
                raise StorageError.concurrency(
                    CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {head}"
                )
            return expected_seq
        payloads = [_event_json(line) for line in lines]
        params: dict[str, Any] = {"run": uuid.UUID(run_id), "expected": expected_seq, "channel": self._core.channel}
        if len(events) == 1:
            params.update(seq=events[0].seq, ts=events[0].ts_millis, kind=events[0].kind, payload=payloads[0])
        else:
            params.update(
                seq=[e.seq for e in events],
                ts=[e.ts_millis for e in events],
                kind=[e.kind for e in events],
                payload=payloads,
            )
        mode = self._core.notify
        query = self._core.q.append[len(events) > 1, expected_seq == 0, mode == "commit"]
        async with self._core.conn("event_store_io") as conn:
            try:
                row = await (await conn.execute(query, params)).fetchone()
            except (pgerrors.UniqueViolation, pgerrors.SerializationFailure, pgerrors.DeadlockDetected):
                raise StorageError.concurrency(
                    CODE_CONCURRENCY, f"run {run_id}: another writer appended at seq {expected_seq + 1} first"
                ) from None
            head = int(row[0]) if row else -1
            if head != expected_seq:
                raise StorageError.concurrency(
                    CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {head}"
                )
        new_head = expected_seq + len(events)
        if mode == "after":
            self._core.notifier.push(run_id, new_head)
        return new_head

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        run_id = check_run_id(run_id)
        lo = max(from_seq, 1)
        hi = _MAX_SEQ if to_seq is None else min(to_seq, _MAX_SEQ)
        if lo > hi:
            return []
        async with self._core.conn("event_store_io") as conn:
            rows = await (await conn.execute(self._core.q.read, [uuid.UUID(run_id), lo, hi])).fetchall()
        return [_decode_row(run_id, seq, ts, payload) for seq, ts, payload in rows]

    async def list_runs(self) -> list[RunId]:
        async with self._core.conn("event_store_io") as conn:
            rows = await (await conn.execute(self._core.q.list_runs)).fetchall()
        return [RunId(str(r[0])) for r in rows]

    async def changes_since(self, cursor: int | None) -> ChangeBatch:
        async with self._core.conn("event_store_io") as conn:
            if cursor is None:
                row = await (await conn.execute(self._core.q.xmin)).fetchone()
                return ChangeBatch(cursor=int(row[0]) if row else 0, runs=frozenset())
            rows = await (await conn.execute(self._core.q.changes, [str(max(int(cursor), 0))])).fetchall()
        runs = frozenset(RunId(str(r[1])) for r in rows if r[1] is not None)
        # Nothing changed → keep the cursor (always safe: the next window simply starts at the same place).
        new_cursor = int(rows[0][0]) if rows and runs else max(int(cursor), 0)
        return ChangeBatch(cursor=new_cursor, runs=runs)

    async def request_cancel(self, run_id: RunId, reason: str = "") -> CancelRequest:
        run_id = check_run_id(run_id)
        now = self._core.now_millis()
        async with self._core.conn("event_store_io") as conn:
            row = await (await conn.execute(self._core.q.cancel, [uuid.UUID(run_id), now, reason])).fetchone()
        assert row is not None  # INSERT … ON CONFLICT DO UPDATE … RETURNING always yields the row
        return CancelRequest(run_id=run_id, requested_at_millis=int(row[0]), reason=str(row[1]))

    async def cancel_request(self, run_id: RunId) -> CancelRequest | None:
        run_id = check_run_id(run_id)
        async with self._core.conn("event_store_io") as conn:
            row = await (await conn.execute(self._core.q.cancel_get, [uuid.UUID(run_id)])).fetchone()
        if row is None:
            return None
        return CancelRequest(run_id=run_id, requested_at_millis=int(row[0]), reason=str(row[1]))

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[ChangeNotice]]:
        """Listen for appends: ``async with events.watch() as notices: async for n in notices: ...``.

        The subscription is active once the block is entered, so an append made after that is never missed.
        Uses one dedicated connection, closed when the block exits.
        """
        core = self._core
        await core.ready()
        conn = await core.connect()
        try:
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(core.channel)))
            except psycopg.Error as exc:
                core.fail("event_store_io", "LISTEN", exc)
            yield self._notices(conn)
        finally:
            await conn.close()

    async def follow(
        self, run_id: RunId, from_seq: int = 1, *, stop_at_completion: bool = True
    ) -> AsyncIterator[EventEnvelope]:
        """Every envelope of ``run_id`` from ``from_seq`` on, then each new one as it is appended (no polling).

        Stops after a ``RunCompleted`` event when ``stop_at_completion``; otherwise runs until the consumer stops.
        Wrap it in ``contextlib.aclosing`` to release its connection promptly when stopping early.
        """
        run_id = check_run_id(run_id)
        next_seq = max(from_seq, 1)
        async with self.watch() as notices:
            while True:
                for envelope in await self.read_range(run_id, next_seq):
                    yield envelope
                    next_seq = envelope.seq + 1
                    if stop_at_completion and isinstance(envelope.event, RunCompleted):
                        return
                async for notice in notices:
                    if notice.run_id == run_id and notice.head >= next_seq:
                        break

    async def _notices(self, conn: _Conn) -> AsyncIterator[ChangeNotice]:
        try:
            async for note in conn.notifies():
                run, _, head = note.payload.rpartition(":")
                try:
                    yield ChangeNotice(run_id=RunId(run), head=int(head))
                except ValueError:
                    continue  # a foreign NOTIFY on our channel: not ours to interpret
        except psycopg.Error as exc:
            self._core.fail("event_store_io", "watching for appends", exc)


_EVENT_KEY: Final = b',"event":'


def _event_json(line: bytes) -> str:
    """The ``event`` member of an envelope's wire line: its last member, after run id, seq and ts (no strings that
    could contain the key), so the first ``,"event":`` is the one."""
    start = line.index(_EVENT_KEY) + len(_EVENT_KEY)
    return line[start:-1].decode("utf-8")


def _decode_row(run_id: RunId, seq: int, ts: int | None, payload: str) -> EventEnvelope:
    try:
        event = json.loads(payload)
        return EventEnvelope.model_validate({"run_id": run_id, "seq": seq, "ts_millis": ts, "event": event})
    except ValueError as exc:
        raise StorageError.corruption(
            "machine_event_decode_failed", f"run {run_id} seq {seq}: event record could not be decoded: {exc}"[:400]
        ) from exc


class PostgresArtifactStore:
    """Content-addressed blobs in ``mfm_artifacts``, re-hashed on every read."""

    def __init__(self, core: _Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"PostgresArtifactStore({self._core.dsn_redacted!r}, schema={self._core.schema!r})"

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        if not isinstance(kind, ArtifactKind):
            raise StorageError.other("artifact_kind_invalid", f"not an ArtifactKind: {type(kind).__name__}")
        data = bytes(data)
        aid = artifact_id_for_bytes(data)
        async with self._core.conn("artifact_store_io") as conn:
            await conn.execute(self._core.q.put, {"id": aid, "kind": compact_json(kind.to_wire()), "data": data})
        return aid

    async def get(self, artifact_id: ArtifactId) -> bytes:
        aid = check_artifact_id(artifact_id)
        async with self._core.conn("artifact_store_io") as conn:
            row = await (await conn.execute(self._core.q.get, [aid])).fetchone()
        if row is None:
            raise StorageError.not_found("artifact_not_found", f"artifact not found: {aid}")
        data = bytes(row[0])
        if hashlib.sha256(data).hexdigest() != aid:
            raise StorageError.corruption("artifact_corruption", f"artifact {aid}: stored bytes do not match its id")
        return data

    async def exists(self, artifact_id: ArtifactId) -> bool:
        try:
            aid = ArtifactId(artifact_id)
        except ValueError:
            return False
        async with self._core.conn("artifact_store_io") as conn:
            row = await (await conn.execute(self._core.q.exists, [aid])).fetchone()
        return row is not None

    async def kind_of(self, artifact_id: ArtifactId) -> ArtifactKind | None:
        """The kind recorded at the first put, ``None`` for an unknown id."""
        aid = check_artifact_id(artifact_id)
        async with self._core.conn("artifact_store_io") as conn:
            row = await (await conn.execute(self._core.q.kind, [aid])).fetchone()
        if row is None:
            return None
        try:
            return ArtifactKind.from_wire(json.loads(row[0]))
        except ValueError as exc:
            raise StorageError.corruption("artifact_kind_corrupt", f"artifact {aid}: unreadable kind") from exc


class PostgresStore:
    """Both PostgreSQL stores over one pool, with ``.stores`` as an ``engine.Stores``."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        max_connections: int = 4,
        clock: Callable[[], int] | None = None,
        notify: NotifyMode = "after",
    ) -> None:
        """``dsn``: a libpq connection string or URL. ``schema``: where the tables live (several stores can share
        a database). ``max_connections``: pool size. ``clock``: wall-clock milliseconds for cancel requests.
        ``notify``: when an append sends its ``NOTIFY`` (module docstring): ``"after"`` its commit (default),
        inside its transaction (``"commit"``), or never (``"off"``)."""
        self._core = _Core(dsn, schema, max_connections, clock, notify)
        self.events = PostgresEventStore(self._core)
        self.artifacts = PostgresArtifactStore(self._core)

    @property
    def dsn(self) -> str:
        """The DSN with its password redacted."""
        return self._core.dsn_redacted

    @property
    def schema(self) -> str:
        return self._core.schema

    @property
    def stores(self) -> Stores:
        from engine.engine import Stores

        return Stores(events=self.events, artifacts=self.artifacts, control=self.events)

    def __repr__(self) -> str:
        return f"PostgresStore({self._core.dsn_redacted!r}, schema={self._core.schema!r})"

    async def open(self) -> PostgresStore:
        """Connect and create/verify the schema now (otherwise done on first use)."""
        async with self._core.conn("store_init_failed"):
            pass
        return self

    async def close(self) -> None:
        """Close every pooled connection; the store is unusable afterwards."""
        await self._core.close()

    async def __aenter__(self) -> PostgresStore:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
