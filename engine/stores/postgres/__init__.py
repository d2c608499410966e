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
or a lost race (unique violation) → Concurrency ``event_store_concurrency``. A unit of up to 8 events and 4 blobs
(a state's) is sent with one scalar parameter per value, bytea in binary, as one fixed statement shape per size that
psycopg prepares on each connection and PostgreSQL plans once (generic plan); larger units pass arrays.

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

Modules: this one holds :class:`PostgresStore`; ``_core`` (DSN redaction, the pool, schema bootstrap and versioning,
error translation, the ``"after"`` notifier), ``_sql`` (every statement), ``_events`` (:class:`PostgresEventStore`)
and ``_artifacts`` (:class:`PostgresArtifactStore`) are private.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from engine.engine import Stores
from engine.stores.postgres._artifacts import PostgresArtifactStore
from engine.stores.postgres._core import SCHEMA_VERSION, Core, NotifyMode, redact_dsn
from engine.stores.postgres._events import ChangeNotice, PostgresEventStore

__all__ = [
    "SCHEMA_VERSION",
    "ChangeNotice",
    "NotifyMode",
    "PostgresArtifactStore",
    "PostgresEventStore",
    "PostgresStore",
    "redact_dsn",
]


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
        self._core = Core(dsn, schema, max_connections, clock, notify)
        self.artifacts = PostgresArtifactStore(self._core)
        self.events = PostgresEventStore(self._core, self.artifacts)

    @property
    def dsn(self) -> str:
        """The DSN with its password redacted."""
        return self._core.dsn_redacted

    @property
    def schema(self) -> str:
        return self._core.schema

    @property
    def stores(self) -> Stores:
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
