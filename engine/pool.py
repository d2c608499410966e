"""The database worker pool: runs on a PostgreSQL store are queued and executed by ``mfm worker serve`` processes
on any number of hosts.

**Queue and lease.** One table next to the store's, ``mfm_run_queue`` (created on first use)::

    run_id uuid PRIMARY KEY        the run to execute (for replay/recover: the NEW run)
    action text                    start | resume | replay | recover
    manifest_id text               start: the stored manifest
    source_run_id uuid             replay/recover: the run replayed/recovered
    args text                      JSON object (free-form extras, e.g. the operation modules of the requester)
    enqueued_at timestamptz
    owner_token uuid               the current claim (NULL: queued, or done)
    owner_host text, owner_pid int the holder (kept after the run is done: ``mfm runs`` shows HOST)
    claimed_at, heartbeat_at, lease_expires_at timestamptz
    claims int                     how many times it was claimed (> 1: a worker was lost and another took over)
    done_at timestamptz, outcome text, result text, last_error text

Starting a run on a database store (``engine.workers.start_run``) stores its manifest and inserts a row; it does
not spawn anything. A worker claims rows with ``SELECT … FOR UPDATE SKIP LOCKED`` (never blocking on a row another
worker is claiming), ordered by ``enqueued_at``, whose ``owner_token`` is NULL or whose lease expired. The claim
sets a fresh ``owner_token`` and ``lease_expires_at = clock_timestamp() + ttl``; the worker's heartbeat renews all
its leases in one statement every ``heartbeat`` seconds (``WHERE owner_token = ANY(…)``). All times are the
database server's clock, so hosts with skewed clocks agree. A run whose worker died (SIGKILL, host down) is claimed
again once its lease has expired and is resumed from its stream (``Engine.resume``: §13).

**One writer at a time.** Two guards:

1. *The lease, checked before each append.* The worker remembers, on its own monotonic clock, when it SENT the
   claim/heartbeat that last succeeded; the database's expiry is at least ``ttl`` after that. An append is made only
   while ``now < sent + ttl - margin`` (``margin`` = ``ttl / 5``), and a heartbeat that finds its token replaced
   marks the lease lost. Once a check fails the lease stays lost for that execution: every later append (including
   the engine's attempt to record a failure) is refused with ``StorageError`` ``lease_lost``, the run's task ends
   without writing, and the claim is released. So a worker stops writing BEFORE another can claim the run.
2. *The event store's optimistic concurrency.* An append already in flight when the lease runs out could still land
   after another worker has read the head; then one of the two appends of the same ``seq`` fails with
   ``event_store_concurrency`` (the ``(run_id, seq)`` primary key) and that worker's execution stops (its claim is
   released and the run is picked up again). A stream is therefore never forked, whatever the timing.

**Cancel** goes through the store's control table (``mfm_cancels``): the owning worker's engine polls it every
``cancel_poll`` seconds. ``SIGTERM``/``SIGINT`` to ``mfm worker serve`` stops claiming, abandons its runs without
writing and releases their claims, so other workers resume them at once (no lease wait).

:func:`lease_info` is the database implementation behind ``engine.workers.lease_state`` (same ``LeaseInfo``):
``HELD`` while a worker holds an unexpired lease or the run waits in the queue (``action`` is ``queued``),
``STALE`` when the lease expired (worker lost; another worker will take the run over), else ``NONE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, LiteralString

import psycopg
from psycopg import sql

from engine.errors import MfmError, StorageError
from engine.events import EventEnvelope, RunCompleted
from engine.ids import ArtifactId, RunId
from engine.stores._base import ChangeBatch
from engine.stores.postgres import NotifyMode, PostgresEventStore, PostgresStore

if TYPE_CHECKING:
    from engine.operations import OperationRegistry
    from engine.workers import LeaseInfo

__all__ = [
    "ACTIONS",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_LEASE_TTL",
    "Claim",
    "LeasedEventStore",
    "PostgresPoolStore",
    "QueueRow",
    "RunLease",
    "RunQueue",
    "WorkerPool",
    "lease_info",
    "serve",
]

ACTIONS: Final = ("start", "resume", "replay", "recover")
DEFAULT_LEASE_TTL: Final = 5.0
DEFAULT_HEARTBEAT: Final = 1.0
MAX_CLAIMS: Final = 20
"""A run claimed this many times without finishing is given up (``outcome = 'gave_up'``), not retried for ever."""

_Conn = psycopg.AsyncConnection[tuple[Any, ...]]
_SyncConn = psycopg.Connection[tuple[Any, ...]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------


class _Q:
    def __init__(self, schema: str) -> None:
        names = {"q": sql.Identifier(schema, "mfm_run_queue"), "s": sql.Identifier(schema)}

        def q(text: LiteralString) -> sql.Composed:
            return sql.SQL(text).format(**names)

        self.schema_exists: LiteralString = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
        self.lock: LiteralString = "SELECT pg_advisory_xact_lock(hashtext(%s))"
        self.create_schema = q("CREATE SCHEMA IF NOT EXISTS {s}")
        self.table_exists: LiteralString = "SELECT to_regclass(%s) IS NOT NULL"
        self.create = [
            q(
                "CREATE TABLE IF NOT EXISTS {q} (run_id uuid PRIMARY KEY,"
                " action text NOT NULL CHECK (action IN ('start', 'resume', 'replay', 'recover')),"
                " manifest_id text, source_run_id uuid, args text NOT NULL DEFAULT '{{}}',"
                " enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
                " owner_token uuid, owner_host text, owner_pid integer,"
                " claimed_at timestamptz, heartbeat_at timestamptz, lease_expires_at timestamptz,"
                " claims integer NOT NULL DEFAULT 0,"
                " done_at timestamptz, outcome text, result text, last_error text)"
            ),
            q("CREATE INDEX IF NOT EXISTS mfm_run_queue_pending ON {q} (enqueued_at) WHERE done_at IS NULL"),
        ]
        self.enqueue = q(
            "INSERT INTO {q} (run_id, action, manifest_id, source_run_id, args) VALUES (%s, %s, %s, %s, %s)"
        )
        # A finished row (done, or given up) may be queued again (resume); a pending one may not.
        self.requeue = q(
            "INSERT INTO {q} (run_id, action, manifest_id, source_run_id, args) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (run_id) DO UPDATE SET action = EXCLUDED.action, args = EXCLUDED.args,"
            "  enqueued_at = clock_timestamp(), owner_token = NULL, lease_expires_at = NULL, claims = 0,"
            "  done_at = NULL, outcome = NULL, result = NULL, last_error = NULL"
            " WHERE {q}.done_at IS NOT NULL RETURNING run_id"
        )
        self.claim = q(
            "WITH c AS (SELECT run_id FROM {q} WHERE done_at IS NULL"
            "  AND (owner_token IS NULL OR lease_expires_at < clock_timestamp())"
            "  ORDER BY enqueued_at LIMIT %(n)s FOR UPDATE SKIP LOCKED)"
            " UPDATE {q} t SET owner_token = gen_random_uuid(), owner_host = %(host)s, owner_pid = %(pid)s,"
            "  claimed_at = clock_timestamp(), heartbeat_at = clock_timestamp(),"
            "  lease_expires_at = clock_timestamp() + make_interval(secs => %(ttl)s), claims = t.claims + 1"
            " FROM c WHERE t.run_id = c.run_id"
            " RETURNING t.run_id, t.action, t.manifest_id, t.source_run_id, t.args, t.owner_token, t.claims"
        )
        self.heartbeat = q(
            "UPDATE {q} SET heartbeat_at = clock_timestamp(),"
            " lease_expires_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE owner_token = ANY(%s::uuid[]) AND done_at IS NULL RETURNING owner_token"
        )
        self.finish = q(
            "UPDATE {q} SET done_at = clock_timestamp(), outcome = %s, result = %s, owner_token = NULL,"
            " lease_expires_at = NULL WHERE run_id = %s AND owner_token = %s RETURNING 1"
        )
        self.release = q(
            "UPDATE {q} SET owner_token = NULL, lease_expires_at = NULL, last_error = %s,"
            " done_at = CASE WHEN claims >= %s THEN clock_timestamp() END,"
            " outcome = CASE WHEN claims >= %s THEN 'gave_up' END"
            " WHERE run_id = %s AND owner_token = %s RETURNING 1"
        )
        self.row = q(
            "SELECT run_id, action, manifest_id, source_run_id, args, owner_token IS NOT NULL, owner_host, owner_pid,"
            " (extract(epoch FROM claimed_at) * 1000)::bigint, lease_expires_at >= clock_timestamp(),"
            " done_at IS NOT NULL, outcome, result, last_error, claims FROM {q} WHERE run_id = %s"
        )
        self.hosts = q("SELECT run_id, owner_host FROM {q} WHERE run_id = ANY(%s::uuid[])")
        self.pending = q("SELECT count(*) FROM {q} WHERE done_at IS NULL")
        self.waiting = q("SELECT run_id FROM {q} WHERE done_at IS NULL AND owner_token IS NULL ORDER BY enqueued_at")


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One ``mfm_run_queue`` row, as read by the monitor."""

    run_id: RunId
    action: str
    manifest_id: str | None
    source_run_id: RunId | None
    args: dict[str, Any]
    owned: bool
    host: str | None
    pid: int | None
    claimed_at_millis: int | None
    lease_live: bool
    done: bool
    outcome: str | None
    result: dict[str, Any] | None
    last_error: str | None
    claims: int


def _row(r: Sequence[Any]) -> QueueRow:
    def _obj(text: Any) -> dict[str, Any] | None:
        try:
            value = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    return QueueRow(
        run_id=RunId(str(r[0])),
        action=str(r[1]),
        manifest_id=None if r[2] is None else str(r[2]),
        source_run_id=None if r[3] is None else RunId(str(r[3])),
        args=_obj(r[4]) or {},
        owned=bool(r[5]),
        host=r[6],
        pid=r[7],
        claimed_at_millis=None if r[8] is None else int(r[8]),
        lease_live=bool(r[9]),
        done=bool(r[10]),
        outcome=r[11],
        result=_obj(r[12]),
        last_error=r[13],
        claims=int(r[14]),
    )


@dataclass(frozen=True, slots=True)
class Claim:
    run_id: RunId
    action: str
    manifest_id: ArtifactId | None
    source_run_id: RunId | None
    args: dict[str, Any]
    token: uuid.UUID
    claims: int


# ---------------------------------------------------------------------------------------------
# The queue
# ---------------------------------------------------------------------------------------------


class RunQueue:
    """``mfm_run_queue`` access: async for actions and workers (one connection per event loop), sync for the
    monitor's lease probe (one connection, thread-safe)."""

    def __init__(self, store: PostgresStore, dsn: str) -> None:
        self._store = store
        self._dsn = dsn
        self.schema = store.schema
        self._q = _Q(store.schema)
        self._conn: _Conn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._ready = False
        self._sync: _SyncConn | None = None
        self._sync_lock = threading.Lock()

    # -- errors ---------------------------------------------------------------------------------

    def _fail(self, code: str, what: str, exc: BaseException) -> StorageError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for secret in _secrets_of(self._dsn):
            detail = detail.replace(secret, "***")
        return StorageError.other(
            code,
            f"{what} failed on PostgreSQL ({self._store.dsn}): {detail}"[:500],
            retryable=isinstance(exc, psycopg.OperationalError),
        )

    # -- async ----------------------------------------------------------------------------------

    def _bind(self) -> asyncio.Lock:
        """Connections and locks belong to the event loop that made them: a new loop starts afresh."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            if self._conn is not None:
                self._conn.pgconn.finish()
            self._conn, self._loop, self._lock = None, loop, asyncio.Lock()
        return self._lock

    async def _connection(self) -> _Conn:
        self._bind()
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            except psycopg.Error as exc:
                raise self._fail("store_unavailable", "connecting", exc) from None
        return self._conn

    async def _exec(self, query: Any, params: Any = None, *, what: str = "run queue") -> list[tuple[Any, ...]]:
        await self.ensure()
        async with self._bind():
            conn = await self._connection()
            try:
                cur = await conn.execute(query, params)
                return await cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                raise self._fail("run_queue_io", what, exc) from None

    async def ensure(self) -> None:
        """Create the store's tables (through the store) and the queue table, once."""
        if self._ready:
            return
        await self._store.open()
        async with self._bind():
            conn = await self._connection()
            try:
                row = await (await conn.execute(self._q.table_exists, [f'"{self.schema}".mfm_run_queue'])).fetchone()
                if not (row and row[0]):
                    async with conn.transaction():
                        await conn.execute(self._q.lock, [f"mfm_run_queue:{self.schema}"])
                        for stmt in self._q.create:
                            await conn.execute(stmt)
            except psycopg.Error as exc:
                raise self._fail("store_init_failed", "run queue setup", exc) from None
        self._ready = True

    async def enqueue(
        self,
        run_id: RunId,
        action: str,
        *,
        manifest_id: ArtifactId | None = None,
        source_run_id: RunId | None = None,
        args: dict[str, Any] | None = None,
        again: bool = False,
    ) -> bool:
        """Queue ``run_id``. ``again``: a finished row is queued anew (a pending one is left alone → ``False``)."""
        if action not in ACTIONS:
            raise StorageError.other("run_queue_action_invalid", f"unknown queue action {action!r}")
        params = [
            uuid.UUID(run_id),
            action,
            None if manifest_id is None else str(manifest_id),
            None if source_run_id is None else uuid.UUID(source_run_id),
            json.dumps(args or {}, sort_keys=True),
        ]
        if again:
            return bool(await self._exec(self._q.requeue, params, what="queueing a run"))
        try:
            await self._exec(self._q.enqueue, params, what="queueing a run")
        except StorageError as err:
            if "duplicate key" in err.message:
                raise StorageError.concurrency("run_already_queued", f"run {run_id} is already queued") from None
            raise
        return True

    async def claim(self, n: int, host: str, pid: int, ttl: float) -> list[Claim]:
        rows = await self._exec(self._q.claim, {"n": n, "host": host, "pid": pid, "ttl": ttl}, what="claiming runs")
        return [
            Claim(
                run_id=RunId(str(r[0])),
                action=str(r[1]),
                manifest_id=None if r[2] is None else ArtifactId(r[2]),
                source_run_id=None if r[3] is None else RunId(str(r[3])),
                args=json.loads(r[4]) if r[4] else {},
                token=r[5],
                claims=int(r[6]),
            )
            for r in rows
        ]

    async def heartbeat(self, tokens: Sequence[uuid.UUID], ttl: float) -> set[uuid.UUID]:
        """Renew these leases; return the tokens still ours."""
        if not tokens:
            return set()
        rows = await self._exec(self._q.heartbeat, [ttl, list(tokens)], what="lease heartbeat")
        return {r[0] for r in rows}

    async def finish(self, run_id: RunId, token: uuid.UUID, outcome: str, result: dict[str, Any] | None) -> bool:
        payload = None if result is None else json.dumps(result, sort_keys=True)
        rows = await self._exec(
            self._q.finish, [outcome, payload, uuid.UUID(run_id), token], what="finishing a queued run"
        )
        return bool(rows)

    async def release(self, run_id: RunId, token: uuid.UUID, error: str) -> bool:
        rows = await self._exec(
            self._q.release, [error[:2000], MAX_CLAIMS, MAX_CLAIMS, uuid.UUID(run_id), token], what="releasing a run"
        )
        return bool(rows)

    async def get(self, run_id: RunId) -> QueueRow | None:
        rows = await self._exec(self._q.row, [uuid.UUID(run_id)], what="reading the run queue")
        return _row(rows[0]) if rows else None

    async def pending(self) -> int:
        rows = await self._exec(self._q.pending, what="counting queued runs")
        return int(rows[0][0]) if rows else 0

    async def waiting(self) -> list[RunId]:
        """Runs queued and not claimed yet (they have no events: ``list_runs`` does not know them)."""
        rows = await self._exec(self._q.waiting, what="listing queued runs")
        return [RunId(str(r[0])) for r in rows]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._loop is asyncio.get_running_loop():
                await conn.close()
            else:
                conn.pgconn.finish()
        with self._sync_lock:
            sync_conn, self._sync = self._sync, None
            if sync_conn is not None:
                sync_conn.close()

    # -- sync (monitor probes) ------------------------------------------------------------------

    def row_sync(self, run_id: RunId) -> QueueRow | None:
        """The run's queue row, read without an event loop (``None`` also when the queue table does not exist)."""
        with self._sync_lock:
            for attempt in (1, 2):
                try:
                    if self._sync is None or self._sync.closed or self._sync.broken:
                        self._sync = psycopg.connect(self._dsn, autocommit=True)
                    row = self._sync.execute(self._q.table_exists, [f'"{self.schema}".mfm_run_queue']).fetchone()
                    if not (row and row[0]):
                        return None
                    found = self._sync.execute(self._q.row, [uuid.UUID(run_id)]).fetchone()
                    return None if found is None else _row(found)
                except psycopg.OperationalError as exc:
                    self._sync = None
                    if attempt == 2:
                        raise self._fail("store_unavailable", "probing a lease", exc) from None
                except psycopg.Error as exc:
                    raise self._fail("run_queue_io", "probing a lease", exc) from None
        return None


def _secrets_of(dsn: str) -> list[str]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return []
    return [str(params[k]) for k in ("password", "sslpassword") if params.get(k)]


class PostgresPoolStore(PostgresStore):
    """The PostgreSQL store plus its run queue (``.queue``): what ``open_store("postgresql://…")`` returns."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        max_connections: int = 4,
        clock: Callable[[], int] | None = None,
        notify: NotifyMode = "after",
    ) -> None:
        super().__init__(dsn, schema=schema, max_connections=max_connections, clock=clock, notify=notify)
        self.queue = RunQueue(self, dsn)

    def __repr__(self) -> str:
        return f"PostgresPoolStore({self.dsn!r}, schema={self.schema!r})"

    async def close(self) -> None:
        await self.queue.close()
        await super().close()


# ---------------------------------------------------------------------------------------------
# Lease probe (the database implementation behind engine.workers.lease_state)
# ---------------------------------------------------------------------------------------------


def lease_info(store: PostgresPoolStore, run_id: RunId) -> LeaseInfo:
    """The run's lease as ``engine.workers.LeaseInfo``, read from its queue row (never waits on a lock)."""
    from engine.workers import LeaseInfo, LeaseState

    row = store.queue.row_sync(run_id)
    if row is None:
        return LeaseInfo(LeaseState.NONE)
    if row.done:
        return LeaseInfo(LeaseState.NONE, row.pid, row.host, row.claimed_at_millis, row.action)
    if not row.owned:
        return LeaseInfo(LeaseState.HELD, None, None, None, "queued")
    state = LeaseState.HELD if row.lease_live else LeaseState.STALE
    return LeaseInfo(state, row.pid, row.host, row.claimed_at_millis, row.action)


# ---------------------------------------------------------------------------------------------
# The worker side
# ---------------------------------------------------------------------------------------------


class RunLease:
    """This worker's claim on one run: valid while ``monotonic() < sent + ttl - margin`` of the last successful
    claim/heartbeat; once invalid, invalid for good (see the module docstring)."""

    def __init__(self, claim: Claim, sent_at: float, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.claim = claim
        self.ttl = ttl
        self.margin = ttl / 5
        self._clock = clock
        self._valid_until = sent_at + ttl - self.margin
        self.lost_reason: str | None = None

    def renewed(self, sent_at: float) -> None:
        if self.lost_reason is None:
            self._valid_until = max(self._valid_until, sent_at + self.ttl - self.margin)

    def lose(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason

    def check(self) -> None:
        if self.lost_reason is None and self._clock() >= self._valid_until:
            self.lose("lease not renewed in time")
        if self.lost_reason is not None:
            raise StorageError.other(
                "lease_lost", f"run {self.claim.run_id}: this worker lost its lease ({self.lost_reason}); not writing"
            )


class LeasedEventStore:
    """The event store as seen by a pool worker's engine: every append first checks the run's lease."""

    def __init__(self, inner: PostgresEventStore, lease: RunLease) -> None:
        self._inner = inner
        self._lease = lease

    async def append(self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope]) -> int:
        self._lease.check()
        return await self._inner.append(run_id, expected_seq, events)

    async def head_seq(self, run_id: RunId) -> int:
        return await self._inner.head_seq(run_id)

    async def read_range(self, run_id: RunId, from_seq: int, to_seq: int | None = None) -> list[EventEnvelope]:
        return await self._inner.read_range(run_id, from_seq, to_seq)

    async def list_runs(self) -> list[RunId]:
        return await self._inner.list_runs()

    async def changes_since(self, cursor: int | None) -> ChangeBatch:
        return await self._inner.changes_since(cursor)


def _say(host: str, message: str) -> None:
    print(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] worker {host}/{os.getpid()}: {message}", flush=True)


@dataclass
class WorkerPool:
    """One ``mfm worker serve`` process: claims up to ``concurrency`` runs and executes them in this event loop."""

    store: PostgresPoolStore
    registry: OperationRegistry
    concurrency: int = 4
    host: str = field(default_factory=socket.gethostname)
    ttl: float = DEFAULT_LEASE_TTL
    heartbeat: float = DEFAULT_HEARTBEAT
    poll: float = 0.25
    cancel_poll: float = 0.1
    quiet: bool = False
    leases: dict[uuid.UUID, RunLease] = field(default_factory=dict)
    tasks: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)
    completed: int = 0

    def _log(self, message: str) -> None:
        if not self.quiet:
            _say(self.host, message)

    async def run(self, stop: asyncio.Event, *, exit_when_idle: bool = False) -> None:
        """Claim and execute until ``stop`` is set (then abandon the runs in hand and release their claims)."""
        if self.concurrency < 1:
            raise StorageError.other("usage", "concurrency must be at least 1")
        await self.store.queue.ensure()
        self._log(f"serving {self.store.dsn} schema {self.store.schema} ({self.concurrency} slots)")
        beat = asyncio.get_running_loop().create_task(self._heartbeats(stop), name="mfm-pool-heartbeat")
        try:
            while not stop.is_set():
                free = self.concurrency - len(self.tasks)
                got = 0
                if free > 0:
                    sent = time.monotonic()
                    try:
                        claims = await self.store.queue.claim(free, self.host, os.getpid(), self.ttl)
                    except StorageError as err:
                        self._log(f"claim failed: {err.message}")
                        claims = []
                    got = len(claims)
                    for c in claims:
                        self._begin(c, sent)
                if exit_when_idle and not self.tasks and got == 0:
                    return
                if got and len(self.tasks) < self.concurrency:
                    continue  # there may be more
                waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
                waiters |= set(self.tasks.values())
                await asyncio.wait(waiters, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    if w not in self.tasks.values() and not w.done():
                        w.cancel()
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await self._abandon()

    def _begin(self, claim: Claim, sent: float) -> None:
        lease = RunLease(claim, sent, self.ttl)
        self.leases[claim.token] = lease
        again = f" (claim {claim.claims}: previous worker lost)" if claim.claims > 1 else ""
        self._log(f"claimed {claim.action} {claim.run_id}{again}")
        task = asyncio.get_running_loop().create_task(self._execute(lease), name=f"mfm-run-{claim.run_id}")
        self.tasks[claim.token] = task

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.heartbeat)
            tokens = [t for t, lease in self.leases.items() if lease.lost_reason is None]
            if not tokens:
                continue
            sent = time.monotonic()
            try:
                alive = await self.store.queue.heartbeat(tokens, self.ttl)
            except StorageError as err:
                self._log(f"heartbeat failed: {err.message}")
                continue  # the leases run out locally unless a later heartbeat succeeds in time
            for token in tokens:
                lease = self.leases.get(token)
                if lease is None:
                    continue
                if token in alive:
                    lease.renewed(sent)
                else:
                    lease.lose("another worker took the run over")
                    task = self.tasks.get(token)
                    if task is not None:
                        task.cancel()

    async def _execute(self, lease: RunLease) -> None:
        claim = lease.claim
        try:
            outcome, result = await _execute_claim(self.store, self.registry, lease, self.cancel_poll)
        except asyncio.CancelledError:
            self.tasks.pop(claim.token, None)
            self.leases.pop(claim.token, None)
            if lease.lost_reason is None:  # abandoned (worker stopping): hand the run over at once
                with contextlib.suppress(StorageError):
                    await self.store.queue.release(claim.run_id, claim.token, "worker stopped")
            raise
        except MfmError as err:
            self._log(f"run {claim.run_id}: {err.one_line()}; releasing it")
            with contextlib.suppress(StorageError):
                await self.store.queue.release(claim.run_id, claim.token, err.one_line())
        except Exception as exc:  # a bug in an operation must not take the whole worker down
            self._log(f"run {claim.run_id}: unexpected {type(exc).__name__}: {exc}; releasing it")
            with contextlib.suppress(StorageError):
                await self.store.queue.release(claim.run_id, claim.token, f"{type(exc).__name__}: {exc}")
        else:
            ok = False
            with contextlib.suppress(StorageError):
                ok = await self.store.queue.finish(claim.run_id, claim.token, outcome, result)
            self.completed += 1
            self._log(f"run {claim.run_id} {outcome}" + ("" if ok else " (lease was lost meanwhile)"))
        self.tasks.pop(claim.token, None)
        self.leases.pop(claim.token, None)

    async def _abandon(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _execute_claim(
    store: PostgresPoolStore, registry: OperationRegistry, lease: RunLease, cancel_poll: float
) -> tuple[str, dict[str, Any] | None]:
    """Run one claimed row to its end; return ``(outcome, result)`` for the queue row."""
    from engine.engine import Stores
    from engine.exec_transport import ExecTransportFactory
    from engine.operations import OperationEnv, load_start_run
    from engine.runtime import CancelToken, Engine

    claim = lease.claim
    events = LeasedEventStore(store.events, lease)
    stores = Stores(events=events, artifacts=store.artifacts, control=store.events)
    target = claim.run_id
    engine = Engine(
        plan_resolver=registry.plan_resolver(OperationEnv(artifacts=store.artifacts)),
        transports=[ExecTransportFactory()],
        run_ids=lambda: target,
        cancel_poll_interval=cancel_poll,
    )
    token = CancelToken()
    head = await store.events.head_seq(target)
    if claim.action in ("start", "resume") and head == 0:
        if claim.manifest_id is None:
            from engine.workers import WorkerError

            raise WorkerError.new("run_not_found", f"run {target} has no events and no manifest")
        start = await load_start_run(stores, registry, claim.manifest_id)
        return (await engine.start(stores, start, cancel=token)).phase.value, None
    if claim.action == "replay" and head == 0:
        assert claim.source_run_id is not None
        verdict = await engine.replay(stores, claim.source_run_id, cancel=token)
        from engine.workers import _verdict_json

        return verdict.result.phase.value, _verdict_json(verdict)
    if claim.action == "recover" and head == 0:
        assert claim.source_run_id is not None
        return (await engine.recover(stores, claim.source_run_id, cancel=token, new_run_id=target)).phase.value, None
    # The run has events: its previous worker was lost (or this is a resume): continue it from its stream.
    result = await engine.resume(stores, target, cancel=token)
    if claim.action == "replay" and claim.source_run_id is not None:
        return result.phase.value, await _resumed_verdict(store, claim.source_run_id, target, result)
    return result.phase.value, None


async def _resumed_verdict(store: PostgresPoolStore, source: RunId, replay: RunId, result: Any) -> dict[str, Any]:
    """The verdict of a replay whose first worker was lost: final snapshot and status compared (no per-state
    divergence is located in this case)."""

    async def last(run: RunId) -> RunCompleted | None:
        head = await store.events.head_seq(run)
        envs = await store.events.read_range(run, head, head)
        return envs[0].event if envs and isinstance(envs[0].event, RunCompleted) else None

    src, rep = await last(source), await last(replay)
    same = src is not None and rep is not None and src.final_snapshot_id == rep.final_snapshot_id
    same = same and src is not None and rep is not None and src.status == rep.status
    return {
        "source_run_id": str(source),
        "replay_run_id": str(replay),
        "verdict": "deterministic" if same else "diverged",
        "diverged_state": None,
        "phase": str(getattr(result.phase, "value", result.phase)),
        "source_final": None if src is None or src.final_snapshot_id is None else str(src.final_snapshot_id),
        "replay_final": None if rep is None or rep.final_snapshot_id is None else str(rep.final_snapshot_id),
    }


async def serve(
    store: PostgresPoolStore,
    registry: OperationRegistry,
    *,
    concurrency: int = 4,
    host: str | None = None,
    ttl: float = DEFAULT_LEASE_TTL,
    heartbeat: float = DEFAULT_HEARTBEAT,
    poll: float = 0.25,
    cancel_poll: float = 0.1,
    exit_when_idle: bool = False,
    quiet: bool = False,
) -> int:
    """``mfm worker serve``: run a :class:`WorkerPool` until SIGTERM/SIGINT (or, with ``exit_when_idle``, until the
    queue is empty). Returns 0."""
    if not 0 < heartbeat < ttl:
        raise StorageError.other(
            "usage", f"heartbeat ({heartbeat} s) must be positive and below the lease ttl ({ttl} s)"
        )
    pool = WorkerPool(
        store,
        registry,
        concurrency=concurrency,
        host=host or socket.gethostname(),
        ttl=ttl,
        heartbeat=heartbeat,
        poll=poll,
        cancel_poll=cancel_poll,
        quiet=quiet,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        await pool.run(stop, exit_when_idle=exit_when_idle)
    finally:
        pool._log(f"stopping after {pool.completed} run(s)")
        await store.close()
    return 0
