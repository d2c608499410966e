"""Shared state of one ``PostgresStore``: DSN redaction, the connection pool, schema bootstrap/versioning, error
translation and the ``"after"``-mode notifier.

See :mod:`engine.stores.postgres` for the tables and the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, NoReturn

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from engine.errors import StorageError
from engine.ids import RunId
from engine.stores.postgres._sql import Queries

__all__ = ["SCHEMA_VERSION", "Conn", "Core", "Cursor", "NotifyMode", "redact_dsn"]

SCHEMA_VERSION: Final = 1
_NOTIFY_WINDOW: Final = 0.02
"""Seconds the ``"after"`` notifier waits to coalesce appends into one NOTIFY: watchers see ≤ 50 updates/s per store."""
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_SECRET_KEYS: Final = ("password", "sslpassword")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Cursor = psycopg.AsyncCursor[tuple[Any, ...]]
NotifyMode = Literal["commit", "after", "off"]
_IDLE: Final = psycopg.pq.TransactionStatus.IDLE


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


class _Notifier:
    """Sends the ``NOTIFY`` of appends made in ``"after"`` mode from a background task on its own connection.

    An append only records ``run → head`` here (coalescing: a watcher needs only the latest head of each run) and
    returns; within :data:`_NOTIFY_WINDOW` the task sends everything pending as one short, non-durable transaction.
    So the append's commit never holds PostgreSQL's cluster-wide notify lock during its WAL flush (``"commit"`` mode
    does: notifying commits serialise), and a busy writer pays for one NOTIFY per window, not one per append.
    """

    def __init__(self, core: Core) -> None:
        self._core = core
        self._pending: dict[RunId, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: Conn | None = None

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
            if len(payloads) == 1:
                await self._conn.execute(self._core.q.notify_after_one, [self._core.channel, payloads[0]])
            else:
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


class Core:
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
        self._idle: list[Conn] = []
        self._cursors: dict[Conn, Cursor] = {}
        """One cursor per pooled connection for the append's hot path: ``conn.execute`` makes a new cursor (and
        copies its adapters map) at every call."""
        self._slots = asyncio.Semaphore(max_connections)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._init_lock = asyncio.Lock()
        self._ready = False
        self._closed = False
        self.q = Queries(schema)
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

    async def connect(self) -> Conn:
        if self._closed:
            raise StorageError.other("store_closed", f"PostgreSQL store {self.dsn_redacted} is closed")
        try:
            conn: Conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
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
            self._cursors.clear()
            self._slots = asyncio.Semaphore(self._max)
            self._init_lock = asyncio.Lock()
            self.notifier.reset()
            self._loop = loop

    @asynccontextmanager
    async def conn(self, code: str) -> AsyncIterator[Conn]:
        """A pooled autocommit connection; schema verified on first use; errors → ``StorageError(code)``."""
        conn = await self.acquire()
        try:
            yield conn
        except psycopg.Error as exc:
            self.fail(code, "query", exc)
        finally:
            await self.release(conn)

    async def acquire(self) -> Conn:
        """:meth:`conn` without the context manager (the append's hot path): pair with :meth:`release`."""
        if not self._ready or self._loop is not asyncio.get_running_loop():
            await self.ready()
        await self._slots.acquire()
        try:
            return self._idle.pop() if self._idle else await self.connect()
        except BaseException:
            self._slots.release()
            raise

    def cursor(self, conn: Conn) -> Cursor:
        """The cursor kept for ``conn`` (a pooled connection, acquired): reused by every append made on it."""
        cur = self._cursors.get(conn)
        if cur is None or cur.closed:
            cur = self._cursors[conn] = conn.cursor()
        return cur

    async def release(self, conn: Conn) -> None:
        """Back to the pool, or closed if it is unusable or left inside a transaction."""
        try:
            if self._closed or conn.closed or conn.broken or conn.pgconn.transaction_status != _IDLE:
                self._cursors.pop(conn, None)
                await conn.close()
            else:
                self._idle.append(conn)
        finally:
            self._slots.release()

    async def close(self) -> None:
        same_loop = self._loop is asyncio.get_running_loop()
        if same_loop:
            await self.notifier.close()
        else:
            self.notifier.reset()
        self._closed = True
        self._cursors.clear()
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

    async def _create_schema(self, conn: Conn) -> list[tuple[Any, ...]]:
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
