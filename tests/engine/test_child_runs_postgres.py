"""Child runs on PostgreSQL pool workers (issue 16): a parent and its children across two `worker serve` processes,
the first SIGKILLed while the children run; the second takes the parent over and joins them without a second spawn."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from engine.child_runs import child_run_id, children_of
from engine.events import DomainEvent, RunCompleted, RunStarted
from engine.ids import RunId
from engine.operations import load_registry
from engine.pool import PostgresPoolStore
from engine.workers import start_run
from tests.engine.pg_server import PgServer

HANG_GUARD = 90.0  # seconds; only so that a regression fails instead of hanging the suite
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(pg_server: PgServer) -> AsyncIterator[PostgresPoolStore]:
    s = PostgresPoolStore(pg_server.dsn(), schema=pg_server.new_schema_name())
    try:
        await s.queue.ensure()
        yield s
    finally:
        await s.close()


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def _serve(url: str, host: str, *, exit_when_idle: bool) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "MFM_STORE"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "engine.workers", "--store", url, "serve"]
    cmd += ["--lease-ttl", "1", "--heartbeat", "0.2", "--poll", "0.05", "--host-name", host]
    if exit_when_idle:
        cmd.append("--exit-when-idle")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


async def test_parent_and_children_on_two_pool_workers_one_killed(
    pg_server: PgServer, store: PostgresPoolStore
) -> None:
    url = f"postgresql:///postgres?host={pg_server.root}&user=postgres&mfm_schema={store.schema}"
    registry = load_registry(["engine.demo_ops"], entry_points=False)
    parent = (await start_run(store, registry, "demo_children", {"children": 2, "work_ms": 4_000})).run_id
    expected = [child_run_id(parent, f"demo_children:spawn|i:{i}") for i in range(2)]

    async def children_running() -> bool:
        links = children_of(await store.events.read_range(parent, 1))
        if len(links) != 2:
            return False
        return all([await store.events.head_seq(x.child_run_id) >= 2 for x in links])

    first = _serve(url, "first", exit_when_idle=False)
    try:
        await until(children_running, "the first pool worker to run both children")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    for child in expected:  # real runs in the same store, unfinished: their tasks died with the worker
        envs = await store.events.read_range(child, 1)
        assert isinstance(envs[0].event, RunStarted)
        assert not any(isinstance(e.event, RunCompleted) for e in envs)

    async def lease_expired() -> bool:  # the second worker exits when idle: nothing may be held when it looks
        return not any(live for (_, _, owned, *_rest, live, _age) in await store.queue.leases() if owned)

    await until(lease_expired, "the killed worker's lease to expire")
    second = _serve(url, "second", exit_when_idle=True)
    try:

        async def parent_done() -> bool:
            head = await store.events.head_seq(parent)
            (last,) = await store.events.read_range(parent, head, head)
            return isinstance(last.event, RunCompleted)

        await until(parent_done, "the second pool worker to finish the parent")
        assert await asyncio.to_thread(second.wait, HANG_GUARD) == 0
    finally:
        if second.poll() is None:
            second.send_signal(signal.SIGKILL)
            second.wait()
    envs = await store.events.read_range(parent, 1)
    assert str(envs[-1].event.status) == "Completed"  # type: ignore[union-attr]
    names = [e.event.name for e in envs if isinstance(e.event, DomainEvent)]
    assert names.count("child_run_spawned") == 2 and names.count("child_run_completed") == 2
    assert [str(x.child_run_id) for x in children_of(envs)] == expected
    assert sorted(await store.events.list_runs()) == sorted([parent, *map(RunId, expected)])
    for child in expected:
        cenvs = await store.events.read_range(child, 1)
        assert sum(isinstance(e.event, RunStarted) for e in cenvs) == 1  # never spawned twice
        assert str(cenvs[-1].event.status) == "Completed"  # type: ignore[union-attr]
