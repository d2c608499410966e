"""The PostgreSQL event store: append, read, runs and changes, cancel requests, ``LISTEN`` watch and follow.

See :mod:`engine.stores.postgres` for the tables and the protocol.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from engine._wire import parse_json
from engine.errors import StorageError
from engine.events import EventEnvelope, RunCompleted
from engine.ids import RunId
from engine.stores._base import (
    CODE_CONCURRENCY,
    Blob,
    CancelRequest,
    ChangeBatch,
    RetryNowRequest,
    check_run_id,
    encode_batch,
)
from engine.stores.postgres._artifacts import PostgresArtifactStore, checked_blob_row
from engine.stores.postgres._core import Conn, Core

__all__ = ["ChangeNotice", "PostgresEventStore"]

_MAX_SEQ: Final = 2**63 - 1
_MAX_SCALAR_EVENTS: Final = 8
_MAX_SCALAR_BLOBS: Final = 4
"""Units up to this size use :meth:`Queries.unit` (one statement shape per size, so at most 8 × 5 × 4 shapes)."""
_EVENT_PARAMS: Final = tuple((f"s{i}", f"t{i}", f"k{i}", f"p{i}") for i in range(_MAX_SCALAR_EVENTS))
_BLOB_PARAMS: Final = tuple((f"i{j}", f"n{j}", f"d{j}") for j in range(_MAX_SCALAR_BLOBS))
"""The parameter names of :meth:`Queries.unit`, per event and per blob."""


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    """One ``NOTIFY`` from an append: run ``run_id`` now has head ``head``."""

    run_id: RunId
    head: int


class PostgresEventStore:
    """Event streams in ``mfm_events``; also the monitor's ``RunLister`` and the ``ControlStore``."""

    def __init__(self, core: Core, artifact_store: PostgresArtifactStore | None = None) -> None:
        self._core = core
        self.artifact_store = artifact_store  # where commit puts blobs (same database and schema)
        self._run_uuid: tuple[str, uuid.UUID] = ("", uuid.UUID(int=0))  # the last run appended to, parsed

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
        return await self.commit(run_id, expected_seq, events, ())

    async def commit(
        self, run_id: RunId, expected_seq: int, events: Sequence[EventEnvelope], blobs: Sequence[Blob]
    ) -> int:
        """The unit of work: ``blobs`` into ``mfm_artifacts`` and ``events`` into ``mfm_events`` in ONE transaction
        (one commit flush); a failure anywhere rolls back both."""
        run_id = check_run_id(run_id)
        events = list(events)
        lines = encode_batch(run_id, expected_seq, events)  # validation (ENGINE-SPEC §3.3) before anything is sent
        puts = [checked_blob_row(b) for b in blobs]
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
            if puts:
                async with self._core.conn("artifact_store_io") as conn, conn.transaction():
                    await self._put_blobs(conn, puts)
            return expected_seq
        payloads = [_event_json(line) for line in lines]
        mode = self._core.notify
        if self._run_uuid[0] != run_id:
            self._run_uuid = (run_id, uuid.UUID(run_id))
        params: dict[str, Any] = {"run": self._run_uuid[1], "expected": expected_seq, "channel": self._core.channel}
        query: Any
        if len(events) <= _MAX_SCALAR_EVENTS and len(puts) <= _MAX_SCALAR_BLOBS:
            # The common case (a state's one or two events and its snapshot): scalar parameters, one fixed shape.
            for (s, t, k, pn), e, payload in zip(_EVENT_PARAMS, events, payloads, strict=False):
                params[s], params[t], params[k], params[pn] = e.seq, e.ts_millis, e.kind, payload
            for (i, n, d), p in zip(_BLOB_PARAMS, puts, strict=False):
                params[i], params[n], params[d] = p["id"], p["kind"], p["data"]
            query = self._core.q.unit(len(events), len(puts), expected_seq == 0, mode == "commit")
        else:  # a large batch: arrays keep the statement's size (and the prepared-statement cache) bounded
            if len(events) == 1:
                params.update(seq=events[0].seq, ts=events[0].ts_millis, kind=events[0].kind, payload=payloads[0])
            else:
                params.update(
                    seq=[e.seq for e in events],
                    ts=[e.ts_millis for e in events],
                    kind=[e.kind for e in events],
                    payload=payloads,
                )
            shape = (len(events) > 1, expected_seq == 0, mode == "commit")
            if puts:  # blobs and events in one statement: one transaction, one round trip
                query = self._core.q.commit[shape]
                params.update(
                    bid=[p["id"] for p in puts], bkind=[p["kind"] for p in puts], bdata=[p["data"] for p in puts]
                )
            else:
                query = self._core.q.append[shape]
        conn = await self._core.acquire()
        try:
            await self._insert_events(conn, run_id, expected_seq, query, params)
        except psycopg.Error as exc:
            self._core.fail("event_store_io", "query", exc)
        finally:
            await self._core.release(conn)
        new_head = expected_seq + len(events)
        if mode == "after":
            self._core.notifier.push(run_id, new_head)
        return new_head

    async def _put_blobs(self, conn: Conn, puts: list[dict[str, Any]]) -> None:
        """Insert (or repair) each blob: the artifact store's ``put`` statement, inside the caller's transaction."""
        async with conn.cursor() as cur:
            await cur.executemany(self._core.q.put, puts)

    async def _insert_events(
        self, conn: Conn, run_id: RunId, expected_seq: int, query: Any, params: dict[str, Any]
    ) -> None:
        try:
            cur = self._core.cursor(conn)
            await cur.execute(query, params)
            row = await cur.fetchone()
        except (pgerrors.UniqueViolation, pgerrors.SerializationFailure, pgerrors.DeadlockDetected):
            raise StorageError.concurrency(
                CODE_CONCURRENCY, f"run {run_id}: another writer appended at seq {expected_seq + 1} first"
            ) from None
        head = int(row[0]) if row else -1
        if head != expected_seq:
            raise StorageError.concurrency(
                CODE_CONCURRENCY, f"run {run_id}: expected head {expected_seq}, found {head}"
            )

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

    async def request_retry_now(self, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest:
        run_id = check_run_id(run_id)
        args = [uuid.UUID(run_id), str(state_id), int(attempt)]
        async with self._core.conn("event_store_io") as conn:
            await conn.execute(self._core.q.create_retry_nows)  # a schema made before the table existed
            row = await (await conn.execute(self._core.q.retry_now, [*args, self._core.now_millis()])).fetchone()
        assert row is not None  # INSERT … ON CONFLICT DO UPDATE … RETURNING always yields the row
        return RetryNowRequest(run_id, str(state_id), int(attempt), int(row[0]))

    async def retry_now_request(self, run_id: RunId, state_id: str, attempt: int) -> RetryNowRequest | None:
        run_id = check_run_id(run_id)
        args = [uuid.UUID(run_id), str(state_id), int(attempt)]
        async with self._core.conn("event_store_io") as conn:
            try:
                row = await (await conn.execute(self._core.q.retry_now_get, args)).fetchone()
            except pgerrors.UndefinedTable:
                return None  # no request was ever made in this (older) schema
        return None if row is None else RetryNowRequest(run_id, str(state_id), int(attempt), int(row[0]))

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

    async def _notices(self, conn: Conn) -> AsyncIterator[ChangeNotice]:
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
        event = parse_json(payload)
        return EventEnvelope.model_validate({"run_id": run_id, "seq": seq, "ts_millis": ts, "event": event})
    except ValueError as exc:
        raise StorageError.corruption(
            "machine_event_decode_failed", f"run {run_id} seq {seq}: event record could not be decoded: {exc}"[:400]
        ) from exc
