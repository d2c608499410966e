"""Every SQL statement of the PostgreSQL store (see :mod:`engine.stores.postgres` for the tables)."""

from __future__ import annotations

from typing import LiteralString

from psycopg import sql

__all__ = ["Queries"]


class Queries:
    """Every SQL statement, composed once with the schema-qualified table names."""

    def __init__(self, schema: str) -> None:
        names = {
            t: sql.Identifier(schema, t)
            for t in ("mfm_schema", "mfm_events", "mfm_runs", "mfm_artifacts", "mfm_cancels", "mfm_retry_nows")
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
        # Added after schema version 1 shipped: created by the first retry-now request in an older schema too.
        self.create_retry_nows = q(
            "CREATE TABLE IF NOT EXISTS {mfm_retry_nows} (run_id uuid NOT NULL, state_id text NOT NULL,"
            " attempt integer NOT NULL, requested_at_millis bigint NOT NULL, PRIMARY KEY (run_id, state_id, attempt))"
        )
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
            self.create_retry_nows,
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
        # The unit of work (issue 12): the same statement with the blobs in it, so blobs and events are ONE
        # statement, one transaction, one commit flush. The blobs are written only when the head matches (the
        # events are written then too), and a unique violation on an event row rolls the whole statement back.
        # As ``put``: insert, or repair an existing row whose bytes no longer match its id.
        blobs = (
            " blob_ins AS (INSERT INTO {mfm_artifacts} (id, kind, data)"
            "  SELECT b.id, b.kind, b.data FROM unnest(%(bid)s::text[], %(bkind)s::text[], %(bdata)s::bytea[])"
            "   AS b(id, kind, data), head WHERE head.h = %(expected)s ON CONFLICT (id) DO NOTHING RETURNING 1),"
            " blob_fix AS (UPDATE {mfm_artifacts} AS a SET data = b.data"
            "  FROM unnest(%(bid)s::text[], %(bdata)s::bytea[]) AS b(id, data), head"
            "  WHERE head.h = %(expected)s AND a.id = b.id AND sha256(a.data) <> decode(a.id, 'hex') RETURNING 1),"
        )
        self.commit = {
            (many_, first_, in_txn): q(
                head
                + blobs
                + (many if many_ else one)
                + (first if first_ else later)
                + (notify_tail if in_txn else quiet_tail)
            )
            for many_ in (False, True)
            for first_ in (False, True)
            for in_txn in (False, True)
        }
        self._tables = names
        self._units: dict[tuple[int, int, bool, bool], bytes] = {}
        # NOTIFY after the appends committed, as its own transaction: nothing in it needs to be durable.
        self.notify_after: LiteralString = (
            "SELECT set_config('synchronous_commit', 'off', true), count(pg_notify(%s, p)) FROM unnest(%s::text[]) p"
        )
        # The same for one run (the usual case: one sequential run per process): no array to encode.
        self.notify_after_one: LiteralString = "SELECT set_config('synchronous_commit', 'off', true), pg_notify(%s, %s)"
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
        self.retry_now = q(
            "INSERT INTO {mfm_retry_nows} (run_id, state_id, attempt, requested_at_millis) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (run_id, state_id, attempt) DO UPDATE SET run_id = EXCLUDED.run_id"
            " RETURNING requested_at_millis"
        )
        self.retry_now_get = q(
            "SELECT requested_at_millis FROM {mfm_retry_nows} WHERE run_id = %s AND state_id = %s AND attempt = %s"
        )
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
        self.ids_with_prefix = q("SELECT id FROM {mfm_artifacts} WHERE id LIKE %s ORDER BY id LIMIT %s")
        self.exists = q("SELECT 1 FROM {mfm_artifacts} WHERE id = %s")
        self.kind = q("SELECT kind FROM {mfm_artifacts} WHERE id = %s")

    def unit(self, events: int, blobs: int, first: bool, in_txn: bool) -> bytes:
        """The append / unit-of-work statement for ``events`` events and ``blobs`` blobs, with one scalar parameter
        per value (``VALUES`` rows, not arrays): the arrays' text encoding cost the client more CPU than the rest of
        the append (issue 12), and a fixed shape is prepared once per connection and planned generically. Rendered
        once per shape (bytes: psycopg sends it as is). Parameters: ``run``, ``expected``, ``channel``; per event
        ``s<i>`` (seq), ``t<i>`` (ts), ``k<i>`` (kind), ``p<i>`` (payload); per blob ``i<j>`` (id), ``n<j>``
        (kind), ``d<j>`` (data, sent binary). Same semantics as :attr:`commit`: everything is written only when
        the head equals ``expected``; the result row is ``(head found, rows written to mfm_runs)``."""
        key = (events, blobs, first, in_txn)
        text = self._units.get(key)
        if text is None:
            text = self._units[key] = self._compose_unit(*key).as_bytes()
        return text

    def _compose_unit(self, events: int, blobs: int, first: bool, in_txn: bool) -> sql.Composed:
        def values(rows: list[str]) -> str:
            return "(VALUES " + ", ".join(rows) + ")"

        ev = values([f"(%(s{i})s::bigint, %(t{i})s::bigint, %(k{i})s::text, %(p{i})s::text)" for i in range(events)])
        parts = ["WITH head AS (SELECT coalesce(max(seq), 0) AS h FROM {mfm_events} WHERE run_id = %(run)s),"]
        if blobs:
            bl = values([f"(%(i{j})s::text, %(n{j})s::text, %(d{j})b::bytea)" for j in range(blobs)])
            parts += [
                " blob_ins AS (INSERT INTO {mfm_artifacts} (id, kind, data) SELECT b.id, b.kind, b.data"
                f"  FROM {bl} AS b(id, kind, data), head WHERE head.h = %(expected)s"
                "  ON CONFLICT (id) DO NOTHING RETURNING 1),",
                " blob_fix AS (UPDATE {mfm_artifacts} AS a SET data = b.data"
                f"  FROM {bl} AS b(id, kind, data), head"
                "  WHERE head.h = %(expected)s AND a.id = b.id AND sha256(a.data) <> decode(a.id, 'hex') RETURNING 1),",
            ]
        parts.append(
            " ins AS (INSERT INTO {mfm_events} (run_id, seq, ts_millis, kind, payload)"
            f"  SELECT %(run)s, b.seq, b.ts, b.kind, b.payload FROM {ev} AS b(seq, ts, kind, payload), head"
            "  WHERE head.h = %(expected)s RETURNING seq),"
        )
        if first:
            parts.append(
                " run AS (INSERT INTO {mfm_runs} (run_id, head, changed_xid)"
                "  SELECT %(run)s, max(seq), pg_current_xact_id() FROM ins HAVING count(*) > 0"
                "  ON CONFLICT (run_id) DO UPDATE SET head = EXCLUDED.head, changed_xid = EXCLUDED.changed_xid"
                "  RETURNING head)"
            )
        else:
            parts.append(
                " run AS (UPDATE {mfm_runs} SET head = top.seq, changed_xid = pg_current_xact_id()"
                "  FROM (SELECT max(seq) AS seq FROM ins HAVING count(*) > 0) AS top"
                "  WHERE run_id = %(run)s RETURNING head)"
            )
        if in_txn:
            parts.append(
                ", note AS (SELECT pg_notify(%(channel)s, %(run)s::text || ':' || head::text) FROM run)"
                " SELECT (SELECT h FROM head), (SELECT count(*) FROM note)"
            )
        else:
            parts.append(" SELECT (SELECT h FROM head), (SELECT count(*) FROM run)")
        # Built only from the fixed fragments above and integer-numbered parameter names.
        return sql.SQL("".join(parts)).format(**self._tables)
