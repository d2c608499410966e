"""``RunQueue``: async and sync access to the ``mfm_run_queue`` table (see :mod:`engine.pool`)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from engine.errors import StorageError
from engine.ids import ArtifactId, RunId
from engine.pool._sql import ACTIONS, MAX_CLAIMS, Claim, Conn, Queries, QueueRow, SyncConn, queue_row
from engine.stores.postgres import PostgresStore

__all__ = ["RunQueue"]


class RunQueue:
    """``mfm_run_queue`` access: async for actions and workers (one connection per event loop), sync for the
    monitor's lease probe (one connection, thread-safe)."""

    def __init__(self, store: PostgresStore, dsn: str) -> None:
        self._store = store
        self._dsn = dsn
        self.schema = store.schema
        self._q = Queries(store.schema)
        self._conn: Conn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._ready = False
        self._sync: SyncConn | None = None
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

    async def _connection(self) -> Conn:
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
                ready = bool(row and row[0])
                if ready:  # made by an older version? then a column is missing: the statements below add it
                    row = await (await conn.execute(self._q.columns_missing, [self.schema])).fetchone()
                    ready = not (row and row[0])
                if not ready:
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
                taken_over=bool(r[7]),
                exec_groups=_json_object(r[8]),
            )
            for r in rows
        ]

    async def record_groups(self, run_id: RunId, token: uuid.UUID, record: dict[str, Any] | None) -> bool:
        """Record the exec process groups of this holder's attempt (``None``: none); False if the claim was lost."""
        payload = None if record is None else json.dumps(record, sort_keys=True)
        rows = await self._exec(
            self._q.record_groups, [payload, uuid.UUID(run_id), token], what="recording exec process groups"
        )
        return bool(rows)

    async def recovery_of(self, source_run_id: RunId) -> tuple[RunId, bool] | None:
        """The latest recovery run queued for failed run ``source_run_id``: ``(run id, done)``, or None."""
        rows = await self._exec(self._q.recovery_of, [uuid.UUID(source_run_id)], what="reading the run queue")
        return (RunId(str(rows[0][0])), bool(rows[0][1])) if rows else None

    async def enqueue_recovery(self, run_id: RunId, source_run_id: RunId, args: dict[str, Any]) -> RunId:
        """Queue ``run_id`` as THE recovery run of ``source_run_id`` unless one is queued already (under a
        transaction-scoped advisory lock on the source, so two resumes agree); returns the recovery run's id."""
        await self.ensure()
        async with self._bind():
            conn = await self._connection()
            try:
                async with conn.transaction():
                    await conn.execute(self._q.lock, [f"mfm_recover:{self.schema}:{source_run_id}"])
                    cur = await conn.execute(self._q.recovery_of, [uuid.UUID(source_run_id)])
                    found = await cur.fetchone()
                    if found is not None:
                        return RunId(str(found[0]))
                    params = [uuid.UUID(run_id), "recover", None, uuid.UUID(source_run_id), json.dumps(args)]
                    await conn.execute(self._q.enqueue, params)
            except psycopg.Error as exc:
                raise self._fail("run_queue_io", "queueing a recovery run", exc) from None
        return run_id

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

    async def park(self, run_id: RunId, token: uuid.UUID, outcome: str, reason: str) -> bool:
        """Stop executing a claimed run (done, ``outcome``, ``last_error = reason``) until it is queued again."""
        rows = await self._exec(self._q.park, [outcome, reason[:2000], uuid.UUID(run_id), token], what="parking a run")
        return bool(rows)

    async def unstarted(self) -> list[tuple[RunId, ArtifactId | None, int | None]]:
        """``(run_id, manifest_id, enqueued_millis)`` of unfinished (or given up) rows whose run has no events."""
        rows = await self._exec(self._q.unstarted, what="listing runs not started")
        return [
            (RunId(str(r[0])), None if r[1] is None else ArtifactId(r[1]), None if r[2] is None else int(r[2]))
            for r in rows
        ]

    async def discard(self, run_id: RunId) -> bool:
        """Mark a run that never started done (``outcome = 'discarded'``); ``False`` if a worker holds it or it has
        events."""
        rows = await self._exec(self._q.discard, [uuid.UUID(run_id), uuid.UUID(run_id)], what="discarding a run")
        return bool(rows)

    async def get(self, run_id: RunId) -> QueueRow | None:
        rows = await self._exec(self._q.row, [uuid.UUID(run_id)], what="reading the run queue")
        return queue_row(rows[0]) if rows else None

    async def pending(self) -> int:
        rows = await self._exec(self._q.pending, what="counting queued runs")
        return int(rows[0][0]) if rows else 0

    async def leases(self) -> list[tuple[RunId, str, bool, str | None, int | None, int | None, bool, int | None]]:
        """``(run_id, action, owned, host, pid, claimed_millis, lease_live, heartbeat_age_millis)`` of every
        unfinished row, oldest first."""
        rows = await self._exec(self._q.leases, what="listing worker leases")
        return [
            (
                RunId(str(r[0])),
                str(r[1]),
                bool(r[2]),
                r[3],
                None if r[4] is None else int(r[4]),
                None if r[5] is None else int(r[5]),
                bool(r[6]),
                None if r[7] is None else max(0, int(r[7])),
            )
            for r in rows
        ]

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
                    return None if found is None else queue_row(found)
                except psycopg.OperationalError as exc:
                    self._sync = None
                    if attempt == 2:
                        raise self._fail("store_unavailable", "probing a lease", exc) from None
                except psycopg.Error as exc:
                    raise self._fail("run_queue_io", "probing a lease", exc) from None
        return None


def _json_object(text: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _secrets_of(dsn: str) -> list[str]:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return []
    return [str(params[k]) for k in ("password", "sslpassword") if params.get(k)]
