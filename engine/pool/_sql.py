"""The ``mfm_run_queue`` table: its SQL, its row types and the pool's constants (see :mod:`engine.pool`).

Private to ``engine.pool``: ``Conn``, ``SyncConn``, ``Queries`` and ``queue_row`` are for its modules only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql

from engine.ids import ArtifactId, RunId

__all__ = [
    "ACTIONS",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_LEASE_TTL",
    "MAX_CLAIMS",
    "Claim",
    "Conn",
    "Queries",
    "QueueRow",
    "SyncConn",
    "queue_row",
]

ACTIONS: Final = ("start", "resume", "replay", "recover")
DEFAULT_LEASE_TTL: Final = 5.0
DEFAULT_HEARTBEAT: Final = 1.0
MAX_CLAIMS: Final = 20
"""A run claimed this many times without finishing is given up (``outcome = 'gave_up'``), not retried for ever."""

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
SyncConn = psycopg.Connection[tuple[Any, ...]]


# ---------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------


class Queries:
    def __init__(self, schema: str) -> None:
        names = {
            "q": sql.Identifier(schema, "mfm_run_queue"),
            "s": sql.Identifier(schema),
            "r": sql.Identifier(schema, "mfm_runs"),
        }

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
                " done_at timestamptz, outcome text, result text, last_error text, exec_groups text)"
            ),
            q("CREATE INDEX IF NOT EXISTS mfm_run_queue_pending ON {q} (enqueued_at) WHERE done_at IS NULL"),
            # Tables made before a column existed get it here (ensure() runs these when one is missing).
            q("ALTER TABLE {q} ADD COLUMN IF NOT EXISTS exec_groups text"),
        ]
        self.columns_missing: LiteralString = (
            "SELECT NOT EXISTS (SELECT 1 FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'mfm_run_queue' AND column_name = 'exec_groups')"
        )
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
        # c.taken_over: the row still had an owner (its lease expired: that worker died or hung), as opposed to a
        # row queued or released (handed over) by its worker.
        self.claim = q(
            "WITH c AS (SELECT run_id, owner_token IS NOT NULL AS taken_over FROM {q} WHERE done_at IS NULL"
            "  AND (owner_token IS NULL OR lease_expires_at < clock_timestamp())"
            "  ORDER BY enqueued_at LIMIT %(n)s FOR UPDATE SKIP LOCKED)"
            " UPDATE {q} t SET owner_token = gen_random_uuid(), owner_host = %(host)s, owner_pid = %(pid)s,"
            "  claimed_at = clock_timestamp(), heartbeat_at = clock_timestamp(),"
            "  lease_expires_at = clock_timestamp() + make_interval(secs => %(ttl)s), claims = t.claims + 1"
            " FROM c WHERE t.run_id = c.run_id"
            " RETURNING t.run_id, t.action, t.manifest_id, t.source_run_id, t.args, t.owner_token, t.claims,"
            "  c.taken_over, t.exec_groups"
        )
        # The exec process groups of the current holder's attempt (engine.process_groups), while it holds the run.
        self.record_groups = q("UPDATE {q} SET exec_groups = %s WHERE run_id = %s AND owner_token = %s RETURNING 1")
        # The latest recovery run queued for a failed run (one recovery per failed run: see QueueLauncher.resume).
        self.recovery_of = q(
            "SELECT run_id, done_at IS NOT NULL FROM {q} WHERE action = 'recover' AND source_run_id = %s"
            " ORDER BY enqueued_at DESC LIMIT 1"
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
        # A crash-looping run is parked: done (never claimed again) until an explicit resume queues it anew.
        self.park = q(
            "UPDATE {q} SET done_at = clock_timestamp(), outcome = %s, last_error = %s, owner_token = NULL,"
            " lease_expires_at = NULL WHERE run_id = %s AND owner_token = %s RETURNING 1"
        )
        # Rows of runs that have no events yet: queued, claimed by a worker still starting them (or that died
        # first), or given up.
        self.unstarted = q(
            "SELECT run_id, manifest_id, (extract(epoch FROM enqueued_at) * 1000)::bigint FROM {q} q"
            " WHERE (done_at IS NULL OR outcome = 'gave_up')"
            " AND NOT EXISTS (SELECT 1 FROM {r} r WHERE r.run_id = q.run_id) ORDER BY enqueued_at"
        )
        # Discard a run that never started: refused (no row updated) while a worker holds a live lease on it.
        self.discard = q(
            "UPDATE {q} SET done_at = clock_timestamp(), outcome = 'discarded', owner_token = NULL,"
            " lease_expires_at = NULL WHERE run_id = %s"
            " AND (owner_token IS NULL OR lease_expires_at < clock_timestamp() OR done_at IS NOT NULL)"
            " AND NOT EXISTS (SELECT 1 FROM {r} r WHERE r.run_id = %s) RETURNING 1"
        )
        self.row = q(
            "SELECT run_id, action, manifest_id, source_run_id, args, owner_token IS NOT NULL, owner_host, owner_pid,"
            " (extract(epoch FROM claimed_at) * 1000)::bigint, lease_expires_at >= clock_timestamp(),"
            " done_at IS NOT NULL, outcome, result, last_error, claims FROM {q} WHERE run_id = %s"
        )
        self.hosts = q("SELECT run_id, owner_host FROM {q} WHERE run_id = ANY(%s::uuid[])")
        self.pending = q("SELECT count(*) FROM {q} WHERE done_at IS NULL")
        # The workers view: unfinished rows, claimed (live or expired lease) or queued; ages on the server's clock.
        self.leases = q(
            "SELECT run_id, action, owner_token IS NOT NULL, owner_host, owner_pid,"
            " (extract(epoch FROM claimed_at) * 1000)::bigint, lease_expires_at >= clock_timestamp(),"
            " (extract(epoch FROM clock_timestamp() - heartbeat_at) * 1000)::bigint"
            " FROM {q} WHERE done_at IS NULL ORDER BY enqueued_at"
        )
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


def queue_row(r: Sequence[Any]) -> QueueRow:
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
    taken_over: bool = False
    """The previous holder's lease had expired (it died or hung) rather than the row being queued or released."""
    exec_groups: dict[str, Any] | None = None
    """The previous holder's exec process groups as it recorded them (``{"machine": …, "groups": […]}``), if any."""
