"""PostgreSQL store: cost of one durable append vs the single-row INSERT+COMMIT floor, from one run.

Starts its own throw-away server (fsync on, ``synchronous_commit = on``) in /tmp, then alternates, in rounds:
- the floor: one ``INSERT`` of a row of the same size as an event row, autocommit (= one commit), psycopg async;
- ``PostgresStore.events.append`` of a 1-event batch (what a no-op state costs per append), and of a 10-event batch;
- artifact puts (a new 2.5 KB snapshot; one already stored), to price a whole no-op state.
Prints p50 / p90 / mean in µs and the ratio append ÷ floor (goal ≤ 1.5× for a 1-event batch), and the CPU each
costs (this process + its server backend, from /proc): wall time on a shared, busy machine swings with the disk's
fsync latency, CPU does not. No assertions.

    .venv/bin/python bench/postgres.py [--rounds 10] [--per-round 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from engine._kinds import ArtifactKind
from engine.events import EventEnvelope, StateCompleted, StateEntered
from engine.ids import ArtifactId, RunId, StateId
from engine.stores.postgres import PostgresStore
from tests.engine.pg_server import PgServer

SNAP = ArtifactId("5f" * 32)


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


class CpuMeter:
    """CPU per operation, client (this process) + server backend: robust to a busy machine, unlike wall time."""

    def __init__(self) -> None:
        self.client = 0.0
        self.server = 0.0
        self.n = 0

    async def measure(self, pid: int, fn: Callable[[], Awaitable[object]], n: int, out: list[float]) -> None:
        s0, c0 = backend_cpu_seconds(pid), time.process_time()
        await timed(fn, n, out)
        self.server += backend_cpu_seconds(pid) - s0
        self.client += time.process_time() - c0
        self.n += n

    def per_op_us(self) -> tuple[float, float]:
        return 1e6 * self.client / self.n, 1e6 * self.server / self.n


async def backend_pid(conn: psycopg.AsyncConnection[tuple[object, ...]], app: str) -> int:
    cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app])
    rows = await cur.fetchall()
    if len(rows) != 1:
        raise RuntimeError(f"expected one backend named {app}, found {len(rows)}")
    return int(str(rows[0][0]))


async def bench(server: PgServer, rounds: int, per_round: int) -> None:
    # One pooled connection, so that one server backend does all the store's work (its CPU is measurable).
    store_dsn = server.dsn() + " application_name=mfm_bench_store"
    store = await PostgresStore(store_dsn, schema="bench", max_connections=1).open()
    await store.events.head_seq(RunId(str(uuid.uuid4())))  # the pool now holds its one connection
    conn = await psycopg.AsyncConnection.connect(server.dsn() + " application_name=mfm_bench_floor", autocommit=True)
    floor_pid = await backend_pid(conn, "mfm_bench_floor")
    store_pid = await backend_pid(conn, "mfm_bench_store")
    floor_cpu, append_cpu = CpuMeter(), CpuMeter()
    settings = {}
    for name in ("fsync", "synchronous_commit", "wal_sync_method", "server_version"):
        row = await (await conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))).fetchone()
        settings[name] = row[0] if row else "?"
    await conn.execute(
        "CREATE TABLE floor_rows (run_id uuid, seq bigint, ts_millis bigint, kind text, payload text,"
        " PRIMARY KEY (run_id, seq))"
    )
    floor_run = uuid.uuid4()
    run1, run10 = RunId(str(uuid.uuid4())), RunId(str(uuid.uuid4()))
    sample = envelope(run1, 2)
    payload = sample.to_json()  # a row at least as large as the event row the store writes
    floor_seq = 0
    heads = {run1: 0, run10: 0}

    async def floor_insert() -> None:
        nonlocal floor_seq
        floor_seq += 1
        await conn.execute(
            "INSERT INTO floor_rows (run_id, seq, ts_millis, kind, payload) VALUES (%s, %s, %s, %s, %s)",
            [floor_run, floor_seq, 0, "StateEntered", payload],
        )

    # Envelopes are built before the clock starts: the engine builds them anyway; the store's cost starts at append.
    batches = {run1: [[envelope(run1, s)] for s in range(1, 1 + 20 + rounds * per_round)]}
    n10 = 5 + rounds * (per_round // 3 or 1)
    batches[run10] = [[envelope(run10, 10 * k + i) for i in range(1, 11)] for k in range(n10)]
    cursor = {run1: 0, run10: 0}

    async def append(run: RunId) -> None:
        batch = batches[run][cursor[run]]
        cursor[run] += 1
        heads[run] = await store.events.append(run, heads[run], batch)

    floor: list[float] = []
    one: list[float] = []
    ten: list[float] = []
    round_ratios: list[float] = []
    await timed(floor_insert, 20, [])  # warm-up: prepared statements, caches
    await timed(lambda: append(run1), 20, [])
    await timed(lambda: append(run10), 5, [])
    for _ in range(rounds):
        f: list[float] = []
        o: list[float] = []
        await floor_cpu.measure(floor_pid, floor_insert, per_round, f)
        await append_cpu.measure(store_pid, lambda: append(run1), per_round, o)
        await timed(lambda: append(run10), per_round // 3 or 1, ten)
        floor += f
        one += o
        round_ratios.append(stats(o)[0] / stats(f)[0])
    # A no-op state writes StateEntered and StateCompleted (two 1-event appends) and puts its context snapshot,
    # which already exists when nothing changed (a put that writes nothing).
    snapshot = b'{"in":{"params":{"n":1}},"work":{"note":"' + b"x" * 2400 + b'"}}'
    new_puts: list[float] = []
    same_puts: list[float] = []
    blobs = [snapshot.replace(b"params", b"p%06d" % i) for i in range(rounds * per_round)]
    await store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, snapshot)
    blob_iter = iter(blobs)
    for _ in range(rounds):
        await timed(lambda: store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, next(blob_iter)), per_round, new_puts)
        await timed(lambda: store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, snapshot), per_round, same_puts)
    await conn.close()
    await store.close()

    f50, f90, fmean = stats(floor)
    print(
        f"server: PostgreSQL {settings['server_version']}, fsync={settings['fsync']}, "
        f"synchronous_commit={settings['synchronous_commit']}, wal_sync_method={settings['wal_sync_method']}, "
        "unix socket"
    )
    print(
        f"event row payload: {len(payload)} bytes; samples: floor {len(floor)}, 1-event {len(one)}, 10-event {len(ten)}"
    )
    print(f"{'':34} {'p50 µs':>10} {'p90 µs':>10} {'mean µs':>10}")
    print(f"{'floor: 1-row INSERT + COMMIT':34} {f50:10.0f} {f90:10.0f} {fmean:10.0f}")
    for label, xs in (("append, 1-event batch", one), ("append, 10-event batch", ten)):
        p50, p90, mean = stats(xs)
        print(f"{label:34} {p50:10.0f} {p90:10.0f} {mean:10.0f}")
    p50, _, mean = stats(one)
    print(
        f"ratio 1-event append / floor: p50 {p50 / f50:.2f}x, mean {mean / fmean:.2f}x, "
        f"median of per-round p50 ratios {statistics.median(round_ratios):.2f}x (goal <= 1.5x)"
    )
    (fc, fs), (ac, as_) = floor_cpu.per_op_us(), append_cpu.per_op_us()
    print(
        f"CPU per op (client + server backend): floor {fc:.0f} + {fs:.0f} µs, 1-event append {ac:.0f} + {as_:.0f} µs;"
        f" extra CPU per append {ac + as_ - fc - fs:.0f} µs"
    )
    t50, _, _ = stats(ten)
    print(f"10-event batch per event: {t50 / 10:.0f} µs (p50 / 10)")
    print(f"{'artifact put, new 2.5 KB':34} " + " ".join(f"{x:10.0f}" for x in stats(new_puts)))
    print(f"{'artifact put, already stored':34} " + " ".join(f"{x:10.0f}" for x in stats(same_puts)))
    noop = 2 * p50 + stats(same_puts)[0]
    print(f"no-op state ≈ 2 appends + 1 put of an unchanged snapshot ≈ {noop:.0f} µs (p50s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=60)
    args = parser.parse_args()
    server = PgServer.start(durable=True)
    try:
        asyncio.run(bench(server, args.rounds, args.per_round))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
