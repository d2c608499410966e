"""PostgreSQL store: cost of one durable append vs the single-row INSERT+COMMIT floor, from one run.

Starts its own throw-away server (fsync on, ``synchronous_commit = on``) in /tmp, then alternates, in rounds:
- the floor: one ``INSERT`` of a row of the same size as an event row, autocommit (= one commit), psycopg async;
- ``PostgresStore.events.append`` of a 1-event batch (what a no-op state costs per append: a no-op state makes two),
  with the default ``notify="after"`` and with ``notify="commit"``; and of a 10-event batch;
- artifact puts (a new 2.5 KB snapshot; one already stored), to price a whole no-op state.
Then the engine itself (issue 12): a sequential run of N no-op states (each writes one key: a new 2.4 KB snapshot)
on ``PostgresStore``, whose unit of work commits each state's snapshot and events in ONE transaction; wall time per
durable state ÷ the single-row INSERT+COMMIT floor, rounds interleaved (goal ≤ 1.5×), and where a state's time goes
beside the floor's: client CPU (the engine's, measured on the memory store, and the store's with the driver), psycopg's
async vs sync CPU per execute, server CPU, the rest (waiting: the WAL flush, and run-queue delays on a busy machine),
round trips on the state's path and the notifier's, WAL bytes, and EXPLAIN ANALYZE of one state's statement by part.
The load average is printed at the start and the end: the ratio swings with the disk's flush latency (a slow flush
hides CPU), the CPU ratio much less.
Prints p50 / p90 / mean in µs and the ratio append ÷ floor (goal ≤ 1.5× for a 1-event batch), and the CPU each
costs (this process + its server backends, from /proc): wall time on a shared, busy machine swings with the disk's
fsync latency, CPU much less. Then N concurrent writers (one run each, own connections): appends/s per notify mode
next to N concurrent floor inserters. No assertions.

    .venv/bin/python bench/postgres.py [--rounds 10] [--per-round 60] [--writers 8] [--states 100]
        [--sections single,engine,writers] [--no-fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from bench.runtime_per_state import chain, context
from engine._kinds import ArtifactKind
from engine.events import EventEnvelope, StateCompleted, StateEntered
from engine.ids import ArtifactId, RunId, StateId
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.stores.postgres import NotifyMode, PostgresStore
from engine.testing import base_config, fixed_run_ids, start_plan
from tests.engine.pg_server import PgServer

SNAP = ArtifactId("5f" * 32)
_Conn = psycopg.AsyncConnection[tuple[object, ...]]


def envelope(run: RunId, seq: int) -> EventEnvelope:
    sid = StateId("bench_machine.main.noop_state")
    ev = (
        StateEntered(state_id=sid, attempt=0, base_snapshot_id=SNAP)
        if seq % 2
        else StateCompleted(state_id=sid, context_snapshot_id=SNAP)
    )
    return EventEnvelope(run_id=run, seq=seq, ts_millis=int(time.time() * 1000), event=ev)


def stats(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[int(len(s) * 0.9)], statistics.fmean(s)


async def timed(fn: Callable[[], Awaitable[object]], n: int, out: list[float]) -> None:
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await fn()
        out.append((time.perf_counter_ns() - t0) / 1000)


def backend_cpu_seconds(pid: int) -> float:
    """utime + stime of a server backend (Linux /proc; the server runs on this machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backend_pids(conn: _Conn, app: str) -> list[int]:
    cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app])
    return [int(str(r[0])) for r in await cur.fetchall()]


class Series:
    """Latencies and CPU (client + the named server backends) of one kind of operation."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.samples: list[float] = []
        self.client = 0.0
        self.server = 0.0

    async def run(self, fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
        out: list[float] = []
        s0, c0 = sum(map(backend_cpu_seconds, self.pids)), time.process_time()
        await timed(fn, n, out)
        self.server += sum(map(backend_cpu_seconds, self.pids)) - s0
        self.client += time.process_time() - c0
        self.samples += out
        return out

    def cpu_us(self) -> tuple[float, float]:
        n = len(self.samples)
        return 1e6 * self.client / n, 1e6 * self.server / n


class Appender:
    """Sequential appends of prebuilt batches to one run (envelopes are built before the clock starts)."""

    def __init__(self, store: PostgresStore, batch: int, count: int) -> None:
        self.store = store
        self.run = RunId(str(uuid.uuid4()))
        self.batches = [[envelope(self.run, k * batch + i) for i in range(1, batch + 1)] for k in range(count)]
        self.head = 0

    async def __call__(self) -> None:
        self.head = await self.store.events.append(self.run, self.head, self.batches.pop(0))


async def single_writer(server: PgServer, conn: _Conn, rounds: int, per_round: int) -> dict[str, Series]:
    await conn.execute(
        "CREATE TABLE floor_rows (run_id uuid, seq bigint, ts_millis bigint, kind text, payload text,"
        " PRIMARY KEY (run_id, seq))"
    )
    payload = envelope(RunId(str(uuid.uuid4())), 2).to_json()  # at least as large as the event row
    floor_run, floor_seq = uuid.uuid4(), [0]

    async def floor_insert() -> None:
        floor_seq[0] += 1
        await conn.execute(
            "INSERT INTO floor_rows (run_id, seq, ts_millis, kind, payload) VALUES (%s, %s, %s, %s, %s)",
            [floor_run, floor_seq[0], 0, "StateEntered", payload],
        )

    stores: dict[str, PostgresStore] = {}
    modes: tuple[NotifyMode, ...] = ("after", "commit")
    for mode in modes:  # one pooled connection each (+ the notifier's), named so that their CPU can be read
        dsn = f"{server.dsn()} application_name=mfm_bench_{mode}"
        stores[mode] = await PostgresStore(dsn, schema=f"bench_{mode}", max_connections=1, notify=mode).open()
    n = 25 + rounds * per_round
    appenders = {mode: Appender(stores[mode], 1, n) for mode in modes}
    ten = Appender(stores["after"], 10, 10 + rounds * max(per_round // 3, 1))
    snapshot = b'{"in":{"params":{"n":1}},"work":{"note":"' + b"x" * 2400 + b'"}}'
    blobs = iter([snapshot.replace(b"params", b"p%06d" % i) for i in range(rounds * per_round)])
    for _ in range(25):  # warm-up: connections, prepared statements, caches
        await floor_insert()
        for mode in modes:
            await appenders[mode]()
    await ten()
    await stores["after"].artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, snapshot)
    await asyncio.sleep(0.05)  # let the notifier open its connection before the pids are read

    floor_pids = await backend_pids(conn, "mfm_bench_floor")
    series = {"floor": Series(floor_pids)}
    for mode in modes:
        series[mode] = Series(await backend_pids(conn, f"mfm_bench_{mode}"))
    series["ten"] = Series(series["after"].pids)
    series["put_new"] = Series(series["after"].pids)
    series["put_same"] = Series(series["after"].pids)
    ratios: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        floor = await series["floor"].run(floor_insert, per_round)
        for mode in modes:
            xs = await series[mode].run(appenders[mode], per_round)
            ratios[mode].append(stats(xs)[0] / stats(floor)[0])
        await series["ten"].run(ten, max(per_round // 3, 1))
        await series["put_new"].run(
            lambda: stores["after"].artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, next(blobs)), per_round // 2
        )
        await series["put_same"].run(
            lambda: stores["after"].artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, snapshot), per_round // 2
        )
    for store in stores.values():
        await store.close()
    print(f"event row payload: {len(payload)} bytes; {rounds} rounds of {per_round} ops each, interleaved")
    print(f"{'single writer':40} {'p50 µs':>8} {'p90 µs':>8} {'mean µs':>8} {'CPU client+server µs':>22}")
    labels = {
        "floor": "floor: 1-row INSERT + COMMIT",
        "after": "append 1 event (notify=after, default)",
        "commit": "append 1 event (notify=commit)",
        "ten": "append 10 events (notify=after)",
        "put_new": "artifact put, new 2.5 KB",
        "put_same": "artifact put, already stored",
    }
    for key, label in labels.items():
        p50, p90, mean = stats(series[key].samples)
        client, server_cpu = series[key].cpu_us()
        print(f"{label:40} {p50:8.0f} {p90:8.0f} {mean:8.0f} {client:11.0f} + {server_cpu:<8.0f}")
    f50, _, fmean = stats(series["floor"].samples)
    for mode in modes:
        p50, _, mean = stats(series[mode].samples)
        print(
            f"ratio 1-event append ({mode}) / floor: p50 {p50 / f50:.2f}x, mean {mean / fmean:.2f}x,"
            f" median of per-round p50 ratios {statistics.median(ratios[mode]):.2f}x (goal <= 1.5x)"
        )
    noop = 2 * stats(series["after"].samples)[0] + stats(series["put_same"].samples)[0]
    print(f"no-op state ~ 2 appends + 1 put of an unchanged snapshot ~ {noop:.0f} µs (p50s)")
    return series


_EXECUTE = psycopg.AsyncCursor.execute
"""The driver's own ``execute``, for statements the bench sends while it counts the store's."""


class RoundTrips:
    """Counts the statements psycopg sends (``execute`` / ``executemany`` on any async connection or cursor): one
    round trip each. Patched in for one counting run only, so that the timed runs carry no wrapper."""

    def __init__(self) -> None:
        self.count = 0
        self.notifies = 0
        """Of which the ``"after"`` notifier's NOTIFY transactions: on their own connection, off the states' path."""
        self._saved: list[tuple[type, str, object]] = []

    def __enter__(self) -> RoundTrips:
        for cls, name in ((psycopg.AsyncCursor, "execute"), (psycopg.AsyncCursor, "executemany")):
            orig = getattr(cls, name)
            self._saved.append((cls, name, orig))

            def wrapped(*args: object, _orig: Any = orig, **kwargs: object) -> Any:
                self.count += 1
                query = args[1] if len(args) > 1 else kwargs.get("query")
                self.notifies += isinstance(query, str) and query.startswith("SELECT set_config('synchronous_commit'")
                return _orig(*args, **kwargs)

            setattr(cls, name, wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, orig in self._saved:
            setattr(cls, name, orig)


class Explainer:
    """Patched in for the counting run: before the ``at``-th statement psycopg sends on a connection named ``app``,
    runs ``EXPLAIN (ANALYZE, WAL, FORMAT JSON)`` of the same statement and parameters in a transaction that is
    rolled back, then the statement itself as usual. ``parts`` gets (part of the plan, ms, WAL bytes)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.seen = 0
        self.parts: list[tuple[str, float, int]] = []
        self._saved: Any = None

    def __enter__(self) -> Explainer:
        orig = self._saved = psycopg.AsyncCursor.execute
        outer = self

        async def wrapped(cur: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            outer.seen += 1
            if outer.seen == outer.at and isinstance(query, bytes) and query.startswith(b"WITH head"):
                conn = cur.connection
                async with conn.transaction(force_rollback=True), conn.cursor() as own:
                    await _EXECUTE(own, b"EXPLAIN (ANALYZE, WAL, FORMAT JSON) " + query, params)
                    plan = await own.fetchone()
                outer.parts = explain_parts(plan[0] if plan else [])
            return await orig(cur, query, params, **kwargs)

        psycopg.AsyncCursor.execute = wrapped  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        psycopg.AsyncCursor.execute = self._saved  # type: ignore[method-assign]


def explain_parts(plan_json: Any) -> list[tuple[str, float, int]]:
    """(CTE name or node, actual total ms, WAL bytes of the node itself) for each CTE of an EXPLAIN ANALYZE plan,
    then planning and execution time. WAL bytes of a node include its children's: subtract them."""
    top = plan_json[0] if isinstance(plan_json, list) and plan_json else {}
    out: list[tuple[str, float, int]] = []

    def own_wal(node: dict[str, Any]) -> int:
        return int(node.get("WAL Bytes", 0)) - sum(int(c.get("WAL Bytes", 0)) for c in node.get("Plans", []))

    def walk(node: dict[str, Any], name: str | None) -> None:
        label = node.get("Subplan Name") or name
        if label and label.startswith("CTE "):
            wal = sum(own_wal(n) for n in _nodes(node) if n.get("Node Type") in ("ModifyTable",))
            out.append((label[4:], float(node.get("Actual Total Time", 0.0)), wal))
        for child in node.get("Plans", []):
            walk(child, None)

    root = top.get("Plan", {})
    walk(root, None)
    if not out:  # a plain statement (the floor): its top node
        out.append(
            (str(root.get("Node Type", "?")), float(root.get("Actual Total Time", 0.0)), int(root.get("WAL Bytes", 0)))
        )
    out.append(("planning (a prepared statement skips it)", float(top.get("Planning Time", 0.0)), 0))
    out.append(("execution", float(top.get("Execution Time", 0.0)), 0))
    return out


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        if not str(child.get("Subplan Name", "")).startswith("CTE "):
            out += _nodes(child)
    return out


async def wal_lsn(conn: _Conn) -> int:
    row = await (await conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).fetchone()
    return int(row[0]) if row else 0


async def driver_cpu(dsn: str, payload: str, n: int) -> tuple[float, float]:
    """Client CPU (µs) of one execute of the floor's INSERT through psycopg's async API, and through its sync API:
    what the driver's asyncio waiting costs per round trip (the floor and every state pay it). Alternated twice."""
    table = "INSERT INTO floor_driver VALUES (%s, %s, %s)"
    aconn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    sconn = psycopg.Connection.connect(dsn, autocommit=True)
    try:
        sconn.execute("CREATE TABLE floor_driver (run_id uuid, seq bigint, payload text, PRIMARY KEY (run_id, seq))")
        acur, scur = aconn.cursor(), sconn.cursor()  # one kept cursor each, as the store's appends and the floor
        best_async = best_sync = float("inf")
        for _ in range(2):
            run, seqs = uuid.uuid4(), iter(range(1, 2 * n + 21))
            for _ in range(10):  # prepared after 5 executes, like every statement here
                await acur.execute(table, [run, next(seqs), payload])
                scur.execute(table, [run, next(seqs), payload])
            c0 = time.process_time()
            for _ in range(n):
                await acur.execute(table, [run, next(seqs), payload])
            best_async = min(best_async, (time.process_time() - c0) / n * 1e6)
            c0 = time.process_time()
            for _ in range(n):
                scur.execute(table, [run, next(seqs), payload])  # blocks the loop: nothing else runs meanwhile
            best_sync = min(best_sync, (time.process_time() - c0) / n * 1e6)
    finally:
        sconn.close()
        await aconn.close()
    return best_async, best_sync


async def memory_engine_cpu(n: int, rounds: int) -> float:
    """The engine's own CPU per state (µs) for the same plan on the memory store: best of ``rounds``."""
    plan, ctx = chain(n), context()
    best = float("inf")
    for _ in range(rounds):
        c0 = time.process_time()
        await start_plan(Engine(run_ids=fixed_run_ids()), MemoryStore().stores, plan, base_config(), ctx)
        best = min(best, time.process_time() - c0)
    return best / n * 1e6


async def engine_states(server: PgServer, conn: _Conn, rounds: int, n: int) -> None:
    """Durable no-op states through the engine vs the single-row INSERT+COMMIT floor, interleaved by round, with
    where the time goes: round trips per state, client CPU (engine + store), server CPU (the store's backends), WAL
    bytes, the driver's async cost per execute, and an EXPLAIN ANALYZE of one state's statement by part.

    The floor is fair to the store: the same driver (psycopg 3, async API, one kept ``AsyncCursor`` as the store's
    appends use), the same connection settings (autocommit, unix socket, the server's defaults:
    ``synchronous_commit = on``), a statement prepared after 5 executes as the store's are, one commit per row, in
    this same process and event loop, timed in rounds alternating with the engine's."""
    await conn.execute("CREATE TABLE floor_states (run_id uuid, seq bigint, payload text, PRIMARY KEY (run_id, seq))")
    floor_pid = (await backend_pids(conn, "mfm_bench_floor"))[0]
    floor_cur = conn.cursor()  # kept, as the store keeps one per pooled connection for its appends
    payload = envelope(RunId(str(uuid.uuid4())), 2).to_json()
    plan, warm, ctx = chain(n), chain(5), context()
    cols = ("wall", "client", "server", "rt", "wal")
    state: dict[str, list[float]] = {c: [] for c in cols}
    floor: dict[str, list[float]] = {c: [] for c in cols}
    ratios: list[float] = []
    parts: list[tuple[str, float, int]] = []
    for r in range(rounds + 2):  # round 0 warms up (not counted); the last one counts round trips (not timed)
        counting = r == rounds + 1
        app = f"mfm_bench_engine_{r}"
        store = await PostgresStore(f"{server.dsn()} application_name={app}", schema=f"bench_engine_{r}").open()
        try:
            engine = Engine(run_ids=fixed_run_ids())
            await start_plan(engine, store.stores, warm, base_config(), ctx)  # connections (+ notifier), prepares
            await asyncio.sleep(0.05)
            pids = await backend_pids(conn, app)
            with contextlib.ExitStack() as patches:
                trips = patches.enter_context(RoundTrips()) if counting else None
                explainer = patches.enter_context(Explainer(n // 2)) if counting else None
                w0 = await wal_lsn(conn)
                s0, c0, t0 = sum(map(backend_cpu_seconds, pids)), time.process_time(), time.perf_counter()
                result = await start_plan(engine, store.stores, plan, base_config(), ctx)
                wall = (time.perf_counter() - t0) / n * 1e6
                client = (time.process_time() - c0) / n * 1e6
                server_cpu = (sum(map(backend_cpu_seconds, pids)) - s0) / n * 1e6
            await asyncio.sleep(0.05)  # the notifier's last NOTIFY is part of the store's WAL
            wal = (await wal_lsn(conn) - w0) / n
        finally:
            await store.close()
        run = uuid.uuid4()
        fw0 = await wal_lsn(conn)
        fs0, fc0, ft0 = backend_cpu_seconds(floor_pid), time.process_time(), time.perf_counter()
        for seq in range(1, n + 1):
            await floor_cur.execute("INSERT INTO floor_states VALUES (%s, %s, %s)", [run, seq, payload])
        f_wall = (time.perf_counter() - ft0) / n * 1e6
        f_client = (time.process_time() - fc0) / n * 1e6
        f_server = (backend_cpu_seconds(floor_pid) - fs0) / n * 1e6
        f_wal = (await wal_lsn(conn) - fw0 - 24) / n  # (less the LSN query's own nothing: it writes no WAL)
        if counting:
            assert trips is not None and explainer is not None
            state["rt"].append((trips.count - trips.notifies) / n)
            state["notify"] = [trips.notifies / n]
            parts = explainer.parts
        elif r:
            for d, vals in ((state, (wall, client, server_cpu)), (floor, (f_wall, f_client, f_server))):
                for c, v in zip(cols, vals, strict=False):
                    d[c].append(v)
            state["wal"].append(wal)
            floor["wal"].append(max(f_wal, 0.0))
            ratios.append(wall / f_wall)
    engine_cpu = await memory_engine_cpu(n, 3)
    async_us, sync_us = await driver_cpu(server.dsn(), payload, 300)
    floor_parts = await explain_floor(conn, payload)
    med = statistics.median
    print(f"\nengine: {rounds} rounds of a sequential run of {n} no-op states ({result.phase}), 2.4 KB context,")
    print("notify=after; medians of the rounds; CPU from /proc (client: this process; server: the store's backends)")
    head = (
        f"{'':32} {'wall µs':>8} {'client CPU':>11} {'server CPU':>11} {'waiting':>8} {'round trips':>12} {'WAL B':>6}"
    )
    print(head)
    for label, d, rt in (("durable no-op state", state, med(state["rt"])), ("floor: 1-row INSERT + COMMIT", floor, 1)):
        w, c, sv = med(d["wall"]), med(d["client"]), med(d["server"])
        print(f"{label:32} {w:8.0f} {c:11.0f} {sv:11.0f} {max(w - c - sv, 0):8.0f} {rt:12.2f} {med(d['wal']):6.0f}")
    s_cpu, f_cpu = med(state["client"]) + med(state["server"]), med(floor["client"]) + med(floor["server"])
    print("breakdown of a state's cost (µs, medians; 'waiting' is the commit's WAL flush, plus run-queue delays on a")
    print("busy machine):")
    print(f"  client CPU: the engine {engine_cpu:.0f} (the same plan on the memory store); the PostgreSQL store and")
    print(
        f"    driver {med(state['client']) - engine_cpu:.0f}; of each execute, psycopg's async API costs {async_us:.0f}"
    )
    print(f"    of client CPU against {sync_us:.0f} for its sync API (the floor pays the same {async_us:.0f})")
    print(f"  CPU, client + server: state {s_cpu:.0f}, floor {f_cpu:.0f} ({s_cpu / f_cpu:.2f}x)")
    print(f"  waiting: state {max(med(state['wall']) - s_cpu, 0):.0f}, floor {max(med(floor['wall']) - f_cpu, 0):.0f}")
    notify = state.get("notify", [0.0])[0]
    print(f"  round trips on the state's path {med(state['rt']):.2f}; the notifier's NOTIFY transactions (own")
    print(f"    connection, not durable) {notify:.2f} per state")
    print(f"  WAL per state {med(state['wal']):.0f} B against the floor's {med(floor['wal']):.0f} B (one commit each)")
    if parts:
        print(
            "  server: EXPLAIN ANALYZE of state n/2's statement (same parameters, rolled back), ms and own WAL bytes:"
        )
        print("    " + "; ".join(f"{name} {ms:.3f} ms" + (f" {wal} B" if wal else "") for name, ms, wal in parts))
    if floor_parts:
        print("  server: the floor's INSERT, the same way:")
        print("    " + "; ".join(f"{name} {ms:.3f} ms" + (f" {wal} B" if wal else "") for name, ms, wal in floor_parts))
    print(
        f"ratio durable no-op state / floor: {med(ratios):.2f}x (median of per-round ratios"
        f" {'/'.join(f'{x:.2f}' for x in ratios)}; goal <= 1.5x)"
    )


async def explain_floor(conn: _Conn, payload: str) -> list[tuple[str, float, int]]:
    async with conn.transaction(force_rollback=True):
        row = await (
            await conn.execute(
                "EXPLAIN (ANALYZE, WAL, FORMAT JSON) INSERT INTO floor_states VALUES (%s, %s, %s)",
                [uuid.uuid4(), 1, payload],
            )
        ).fetchone()
    return explain_parts(row[0] if row else [])


async def many_writers(server: PgServer, writers: int, per_writer: int) -> None:
    print(f"\n{writers} concurrent writers, one run each, {per_writer} sequential 1-event appends per writer")
    conns = [await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) for _ in range(writers)]
    await conns[0].execute("CREATE TABLE floor_many (run_id uuid, seq bigint, payload text, PRIMARY KEY (run_id, seq))")
    payload = envelope(RunId(str(uuid.uuid4())), 2).to_json()

    async def inserter(conn: _Conn) -> None:
        run = uuid.uuid4()
        for seq in range(1, per_writer + 1):
            await conn.execute("INSERT INTO floor_many VALUES (%s, %s, %s)", [run, seq, payload])

    t0 = time.perf_counter()
    await asyncio.gather(*(inserter(c) for c in conns))
    floor_rate = writers * per_writer / (time.perf_counter() - t0)
    print(f"{'floor: 1-row INSERT + COMMIT':40} {floor_rate:8.0f} commits/s")
    for c in conns:
        await c.close()
    modes: tuple[NotifyMode, ...] = ("after", "commit", "off")
    for mode in modes:
        store = await PostgresStore(server.dsn(), schema=f"many_{mode}", max_connections=writers, notify=mode).open()
        appenders = [Appender(store, 1, per_writer) for _ in range(writers)]

        async def drive(a: Appender) -> None:
            for _ in range(per_writer):
                await a()

        t0 = time.perf_counter()
        await asyncio.gather(*(drive(a) for a in appenders))
        rate = writers * per_writer / (time.perf_counter() - t0)
        await store.close()
        print(f"{'append 1 event (notify=' + mode + ')':40} {rate:8.0f} appends/s ({rate / floor_rate:.2f}x floor)")


async def bench(server: PgServer, rounds: int, per_round: int, writers: int, states: int, sections: set[str]) -> None:
    conn = await psycopg.AsyncConnection.connect(f"{server.dsn()} application_name=mfm_bench_floor", autocommit=True)
    settings = {}
    for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method"):
        row = await (await conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))).fetchone()
        settings[name] = row[0] if row else "?"
    print("server: PostgreSQL " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ", unix socket")
    print("load average at the start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if "single" in sections:
        await single_writer(server, conn, rounds, per_round)
    if "engine" in sections:
        await engine_states(server, conn, max(rounds // 2, 2), states)
    await conn.close()
    if "writers" in sections:
        await many_writers(server, writers, per_round)
    print("load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=60)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--states", type=int, default=100, help="no-op states per engine run")
    parser.add_argument(
        "--sections", default="single,engine,writers", help="comma-separated subset of single,engine,writers"
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="start the server with fsync off: no disk waits, so wall time is CPU and round trips only",
    )
    args = parser.parse_args()
    server = PgServer.start(durable=not args.no_fsync)
    try:
        asyncio.run(
            bench(server, args.rounds, args.per_round, args.writers, args.states, set(args.sections.split(",")))
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
