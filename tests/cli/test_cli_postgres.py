"""`mfm … --store postgresql://…` end to end: `mfm worker serve` processes on "several hosts" over one database, one
killed with SIGKILL mid-run; start/show/runs/cancel/events/resume through the command line; no password leaks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine._runtime.envelopes import analyze
from engine.events import EventEnvelope, RunCompleted, RunStarted, RunStatus
from engine.ids import RunId
from engine.operations import load_registry
from engine.pool import PostgresPoolStore
from engine.workers import start_run
from tests.engine.pg_server import PgServer

pytestmark = pytest.mark.slow
WAIT = 150.0  # seconds; generous for 2 busy cores, only so that a regression fails instead of hanging


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def url(pg_server: PgServer) -> str:
    return f"postgresql:///postgres?host={pg_server.root}&user=postgres&mfm_schema={pg_server.new_schema_name()}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    e = {k: v for k, v in os.environ.items() if k not in ("MFM_STORE", "XDG_DATA_HOME") and not k.startswith("PG")}
    e.update(HOME=str(home), PYTHONUNBUFFERED="1")
    return e


class Workers:
    """`mfm worker serve` subprocesses, killed at teardown whatever happens."""

    def __init__(self, url: str, env: dict[str, str], logs: Path) -> None:
        self.url, self.env, self.logs = url, env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, host: str, *extra: str) -> None:
        cmd = [sys.executable, "-m", "mfm_tui", "--ops", "engine.demo_ops", "worker", "serve", "--store", self.url]
        cmd += ["--host-name", host, "--poll", "0.1", *extra]
        log = open(self.logs / f"{host}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[host] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

    def log(self, host: str) -> str:
        return (self.logs / f"{host}.log").read_text(errors="replace")

    def wait_serving(self) -> None:
        for host in self.procs:
            wait_until(lambda h=host: "serving" in self.log(h), f"worker {host} to start")  # type: ignore[misc]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(url: str, env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    w = Workers(url, env, tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


def mfm(env: dict[str, str], *args: str, store: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mfm_tui", *(["--store", store] if store else []), "--ops", "engine.demo_ops", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=WAIT, stdin=subprocess.DEVNULL)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for another process (not a timing assertion)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class Db:
    """In-process reads of the store (cheap polling), on one event loop."""

    def __init__(self, url: str) -> None:
        from engine.open_store import open_store

        store = open_store(url)
        assert isinstance(store, PostgresPoolStore)
        self.store = store
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def events(self, run: str) -> list[EventEnvelope]:
        envs: list[EventEnvelope] = self.run(self.store.events.read_range(RunId(run), 1))
        return envs

    def finished(self, run: str) -> bool:
        envs = self.run(self.store.events.read_range(RunId(run), max(1, self.head(run)), None))
        return bool(envs) and isinstance(envs[-1].event, RunCompleted)

    def head(self, run: str) -> int:
        head: int = self.run(self.store.events.head_seq(RunId(run)))
        return head

    def row(self, run: str) -> Any:
        return self.run(self.store.queue.get(RunId(run)))

    def owners(self) -> dict[str, str]:
        """run → host, for runs claimed and not done."""
        rows = self.run(self._owned())
        return {str(r[0]): str(r[1]) for r in rows}

    async def _owned(self) -> list[tuple[Any, ...]]:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.store.queue._dsn) as conn:
            cur = await conn.execute(
                f"SELECT run_id, owner_host FROM {self.store.schema}.mfm_run_queue"
                " WHERE owner_token IS NOT NULL AND done_at IS NULL"
            )
            return await cur.fetchall()

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.close()


@pytest.fixture
def db(url: str, workers: Workers) -> Iterator[Db]:
    d = Db(url)
    try:
        yield d
    finally:
        d.close()


def check_stream(envs: list[EventEnvelope]) -> RunCompleted:
    """Never two writers: contiguous seqs, one RunStarted, attempt-envelope rules, one RunCompleted (last)."""
    assert [e.seq for e in envs] == list(range(1, len(envs) + 1))
    assert isinstance(envs[0].event, RunStarted) and sum(isinstance(e.event, RunStarted) for e in envs) == 1
    analyze(envs)
    assert sum(isinstance(e.event, RunCompleted) for e in envs) == 1
    last = envs[-1].event
    assert isinstance(last, RunCompleted)
    return last


def test_runs_spread_over_workers_and_survive_a_sigkilled_one(
    url: str, env: dict[str, str], workers: Workers, db: Db
) -> None:
    hosts = ["host-a", "host-b", "host-c"]
    for host in hosts:
        workers.start(host, "--concurrency", "2", "--lease-ttl", "2", "--heartbeat", "0.4")
    workers.wait_serving()
    params = {"states": 8, "events": 2, "delay_ms": 250}
    first = mfm(env, "start", "demo_big", *(f"-p{k}={v}" for k, v in params.items()), "--json", store=url)
    assert first.returncode == 0, first.stderr
    runs = [json.loads(first.stdout)["run_id"]]
    registry = load_registry(["engine.demo_ops"], entry_points=False)
    for _ in range(7):
        runs.append(str(db.run(start_run(db.store, registry, "demo_big", params)).run_id))

    seen: dict[str, str] = {}

    def all_hosts_busy() -> bool:
        seen.update(db.owners())
        return set(seen.values()) == set(hosts)

    wait_until(all_hosts_busy, "every worker to hold a run")  # runs spread across the workers

    def victim_mid_run() -> list[str]:
        return [r for r, h in db.owners().items() if h == "host-a" and db.head(r) >= 3 and not db.finished(r)]

    wait_until(lambda: bool(victim_mid_run()), "host-a to be in the middle of a run")
    workers.procs["host-a"].send_signal(signal.SIGKILL)
    workers.procs["host-a"].wait()
    orphaned = [r for r, h in db.owners().items() if h == "host-a"]
    assert orphaned  # host-a died holding at least one unfinished run

    wait_until(lambda: all(db.finished(r) for r in runs), "the other workers to finish every run")
    finals = set()
    for run in runs:
        last = check_stream(db.events(run))
        assert last.status is RunStatus.COMPLETED, (run, last)
        finals.add(last.final_snapshot_id)
    assert len(finals) == 1 and None not in finals  # crashed-and-resumed runs end exactly like the others
    for run in orphaned:
        row = db.row(run)
        assert row.done and row.claims >= 2 and row.host in ("host-b", "host-c")
    listing = mfm(env, "runs", "--json", store=url)
    assert listing.returncode == 0, listing.stderr
    by_run = {r["run_id"]: r for r in json.loads(listing.stdout)}
    assert {by_run[r]["host"] for r in runs} <= set(hosts) and by_run[orphaned[0]]["host"] != "host-a"
    assert "previous worker lost" in workers.log("host-b") + workers.log("host-c")


def test_start_show_runs_cancel_events_resume_on_a_database_store(
    url: str, env: dict[str, str], workers: Workers, db: Db, pg_server: PgServer
) -> None:
    queued = mfm(env, "start", "demo_big", "-p", "states=2", "-p", "delay_ms=0", "--json", store=url)
    assert queued.returncode == 0, queued.stderr
    queued_id = json.loads(queued.stdout)["run_id"]
    waiting = json.loads(mfm(env, "runs", "--json", store=url).stdout)  # no worker yet: queued, listed
    assert [(r["run_id"], r["op_id"], r["status"], r["host"]) for r in waiting] == [
        (queued_id, "demo_big", "pending", None)
    ]
    assert "worker    queued for the worker pool" in mfm(env, "show", queued_id, store=url).stdout

    workers.start("solo", "--concurrency", "2")
    done = mfm(env, "start", "demo_big", "-p", "states=3", "-p", "delay_ms=0", "--wait", "--json", store=url)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    run = result["run_id"]

    listing = mfm(env, "runs", store=url)
    assert listing.returncode == 0, listing.stderr
    header, *lines = listing.stdout.splitlines()
    assert header.split()[-1] == "HOST" and len(lines) == 2 and all(ln.split()[-1] == "solo" for ln in lines)
    show = mfm(env, "show", run[:8], store=url)
    assert show.returncode == 0 and "host      solo" in show.stdout and "completed" in show.stdout
    assert json.loads(mfm(env, "show", run, "--json", store=url).stdout)["host"] == "solo"
    again = mfm(env, "resume", run[:8], store=url)
    assert again.returncode == 4 and "error[run_already_finished]" in again.stderr

    # The same through $MFM_STORE, and a cancel that travels through the database to the worker.
    env_store = {**env, "MFM_STORE": url}
    started = mfm(env_store, "start", "demo_big", "-p", "states=2000", "-p", "delay_ms=20", "--json")
    assert started.returncode == 0, started.stderr
    long_run = json.loads(started.stdout)["run_id"]
    wait_until(lambda: db.head(long_run) >= 3, "the long run to start")
    cancel = mfm(env_store, "cancel", long_run[:8])
    assert cancel.returncode == 0 and f"cancel requested for run {long_run}" in cancel.stdout, cancel.stderr
    wait_until(lambda: db.finished(long_run), "the worker to cancel the run")
    events = mfm(env_store, "events", long_run[:8], "--json")
    assert events.returncode == 0, events.stderr
    last_line = events.stdout.splitlines()[-1]
    assert "RunCompleted" in last_line and "Cancelled" in last_line
    assert check_stream(db.events(long_run)).status is RunStatus.CANCELLED
    late = mfm(env_store, "cancel", long_run)
    assert late.returncode == 4 and "error[run_already_finished]" in late.stderr

    # Commands that need a filesystem store say so; serve refuses a folder.
    doctor = mfm(env_store, "doctor")
    assert doctor.returncode == 2 and "error[store_not_filesystem]" in doctor.stderr
    folder = mfm(env, "worker", "serve", store=str(pg_server.root / "not-a-db"))
    assert folder.returncode == 2 and "error[store_not_database]" in folder.stderr
    unknown = mfm(env_store, "show", str(uuid.uuid4()))
    assert unknown.returncode == 3


def test_a_password_never_appears_in_errors(url: str, env: dict[str, str], pg_server: PgServer) -> None:
    pg_server.add_password_role("cli_pw_role", "the-right-one")
    secret = "wr0ng-pw-8812"
    bad = f"postgresql://cli_pw_role:{secret}@/postgres?host={pg_server.root}"
    res = mfm(env, "runs", store=bad)
    assert res.returncode != 0 and "store_unavailable" in res.stderr
    assert secret not in res.stderr + res.stdout
    via_env = mfm(
        {**env, "PGPASSWORD": secret}, "runs", store=f"postgresql://cli_pw_role@/postgres?host={pg_server.root}"
    )
    assert via_env.returncode != 0 and secret not in via_env.stderr + via_env.stdout
    debug = mfm(env, "--debug", "runs", store=bad)
    assert secret not in debug.stderr + debug.stdout
