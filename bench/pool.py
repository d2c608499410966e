"""Database worker pool: runs completed per second with 1, 2, 4 and 8 workers, and what limits it.

Starts its own throw-away PostgreSQL server (durable: fsync on, ``synchronous_commit = on``) in /tmp. For each worker
count N, on a fresh schema: N ``mfm worker serve --concurrency 1`` processes (different ``--host-name``) are started
and left idle until every one is serving; then ``--runs`` runs of ``demo_big`` (small parameters) are queued in ONE
statement and the clock runs until every queue row is done. Then the same with ONE process and N slots
(``--concurrency N``: runs interleave on one event loop). Printed per row (best of ``--rounds``; the machine is
shared): runs/s; CPU per run of the worker processes and of the server's backends (/proc); cores in use (total
CPU / wall); transactions per run (``pg_stat_database.xact_commit``: durable appends and puts, but also read-only
statements, heartbeats, idle claim polls and the background NOTIFY sends, which every process adds); and, measured
just before the row, the latency of one durable single-row commit (the floor every append pays). No assertions.

    .venv/bin/python bench/pool.py [--runs 100] [--rounds 2] [--states 5] [--events 2] [--workers 1,2,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from engine.events import RunCompleted
from engine.ids import RunId
from engine.open_store import open_store
from engine.operations import load_registry, prepare_run
from engine.pool import PostgresPoolStore
from tests.engine.pg_server import PgServer

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def server_pids(server: PgServer) -> list[int]:
    master = int((server.data / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == master:
                pids.append(int(entry.name))
    return pids


def server_cpu(server: PgServer) -> float:
    return sum(cpu_seconds(p) for p in server_pids(server))


async def queue_all(store: PostgresPoolStore, manifest_id: str, runs: int) -> list[RunId]:
    ids = [RunId(str(uuid.uuid4())) for _ in range(runs)]
    await store.queue.ensure()
    async with await psycopg.AsyncConnection.connect(store.queue._dsn, autocommit=True) as conn:
        await conn.execute(
            f"INSERT INTO {store.schema}.mfm_run_queue (run_id, action, manifest_id)"
            " SELECT unnest(%s::uuid[]), 'start', %s",
            [[uuid.UUID(r) for r in ids], manifest_id],
        )
    return ids


async def commits(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        cur = await conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def commit_floor_ms(dsn: str, n: int = 40) -> float:
    """Median latency of one durable single-row INSERT (autocommit)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, v text)")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await conn.execute("INSERT INTO bench_floor (v) VALUES ('x')")
            samples.append(time.perf_counter() - t0)
    return 1000 * sorted(samples)[n // 2]


async def pending(store: PostgresPoolStore) -> int:
    return await store.queue.pending()


async def all_completed(store: PostgresPoolStore, ids: list[RunId]) -> int:
    n = 0
    for run in ids:
        head = await store.events.head_seq(run)
        last = await store.events.read_range(run, head, head) if head else []
        n += bool(last) and isinstance(last[0].event, RunCompleted)
    return n


def one_config(server: PgServer, args: argparse.Namespace, processes: int, slots: int) -> dict[str, float]:
    schema = server.new_schema_name()
    url = f"postgresql:///postgres?host={server.root}&user=postgres&mfm_schema={schema}"
    store = open_store(url)
    assert isinstance(store, PostgresPoolStore)
    loop = asyncio.new_event_loop()
    registry = load_registry(["engine.demo_ops"], entry_points=False)
    params = {"states": args.states, "events": args.events, "delay_ms": 0}
    prepared = loop.run_until_complete(prepare_run(store.stores, registry, "demo_big", params, run_id=RunId.new_v4()))
    loop.run_until_complete(store.queue.ensure())
    logs = Path(server.root) / f"logs-{schema}"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MFM_STORE"}
    procs = []
    for i in range(processes):
        cmd = [sys.executable, "-m", "mfm_tui", "--ops", "engine.demo_ops", "worker", "serve", "--store", url]
        cmd += ["--host-name", f"bench-{i}", "--concurrency", str(slots), "--poll", "0.05"]
        with open(logs / f"{i}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        deadline = time.monotonic() + 120
        while not all("serving" in (logs / f"{i}.log").read_text() for i in range(processes)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.05)
        time.sleep(0.5)  # let start-up settle
        floor = loop.run_until_complete(commit_floor_ms(server.dsn()))
        commits0 = loop.run_until_complete(commits(server.dsn()))
        cpu_w0 = sum(cpu_seconds(p.pid) for p in procs)
        cpu_s0 = server_cpu(server)
        t0 = time.perf_counter()
        ids = loop.run_until_complete(queue_all(store, str(prepared.manifest_id), args.runs))
        while loop.run_until_complete(pending(store)):
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        cpu_w = sum(cpu_seconds(p.pid) for p in procs) - cpu_w0
        cpu_s = server_cpu(server) - cpu_s0
        n_commits = loop.run_until_complete(commits(server.dsn())) - commits0
        completed = loop.run_until_complete(all_completed(store, ids))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        loop.run_until_complete(store.close())
        loop.close()
    return {
        "runs_per_s": args.runs / wall,
        "wall_s": wall,
        "worker_cpu_ms_per_run": 1000 * cpu_w / args.runs,
        "server_cpu_ms_per_run": 1000 * cpu_s / args.runs,
        "cores": (cpu_w + cpu_s) / wall,
        "completed": completed,
        "commits_per_run": n_commits / args.runs,
        "commit_floor_ms": floor,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--states", type=int, default=5)
    ap.add_argument("--events", type=int, default=2)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    server = PgServer.start(durable=True)
    results: dict[str, dict[str, float]] = {}
    try:
        print(
            f"demo_big states={args.states} events={args.events} delay_ms=0, {args.runs} runs per row; "
            f"durable server; {os.cpu_count()} cores"
        )
        print(
            f"{'layout':<20} {'runs/s':>7} {'wall s':>7} {'worker CPU/run':>15} {'server CPU/run':>15}"
            f" {'cores':>6} {'xacts/run':>10} {'commit floor':>13}"
        )
        for mode in ("processes", "slots"):
            for n in counts:
                if mode == "slots" and n == 1:
                    continue  # same as 1 process
                procs, slots = (n, 1) if mode == "processes" else (1, n)
                rounds = [one_config(server, args, procs, slots) for _ in range(max(1, args.rounds))]
                r = max(rounds, key=lambda x: x["runs_per_s"])
                label = f"{procs} proc x {slots} slot" + ("s" if slots > 1 else "")
                results[label] = r
                print(
                    f"{label:<20} {r['runs_per_s']:7.1f} {r['wall_s']:7.2f} {r['worker_cpu_ms_per_run']:12.1f} ms"
                    f" {r['server_cpu_ms_per_run']:12.1f} ms {r['cores']:6.2f} {r['commits_per_run']:10.1f}"
                    f" {r['commit_floor_ms']:10.2f} ms"
                    + ("" if r["completed"] == args.runs else f"  ({int(r['completed'])} completed!)"),
                    flush=True,
                )
    finally:
        server.stop()
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
