"""The worker pool records each run's exec process groups in its queue row and a takeover makes sure the previous
holder's are gone before it executes anything (issue 13 item 1); a failed run gets one recovery run (item 12).

On a real PostgreSQL server (tests/engine/pg_server.py), with in-process pools as in test_pool_postgres.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import MfmError
from engine.events import RunStatus
from engine.ids import RunId
from engine.operations import OperationRegistry, load_registry
from engine.pool import PostgresPoolStore, WorkerPool
from engine.process_groups import Machine, process_start_ticks
from engine.workers import cancel_run, resume_run, start_run
from tests.engine.pg_server import PgServer
from tests.engine.test_pool_postgres import HANG_GUARD, check_stream, serving, until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


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


@pytest.fixture(scope="module")
def registry() -> OperationRegistry:
    return load_registry(["engine.demo_ops"], entry_points=False)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A program's process group left running by a dead worker (its own session, as exec programs have)."""
    proc = subprocess.Popen(["sleep", "3201"], start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def recorded_groups(pg_server: PgServer, store: PostgresPoolStore, run: RunId) -> Any:
    out = pg_server.psql(f"SELECT exec_groups FROM {store.schema}.mfm_run_queue WHERE run_id = '{run}'").strip()
    return json.loads(out) if out else None


def pool(store: PostgresPoolStore, registry: OperationRegistry, host: str, quiet: bool = True) -> WorkerPool:
    return WorkerPool(store, registry, host=host, quiet=quiet, poll=0.05)


async def test_a_run_records_its_program_group_while_it_runs_and_drops_it_after(
    pg_server: PgServer, store: PostgresPoolStore, registry: OperationRegistry
) -> None:
    prepared = await start_run(store, registry, "demo_pipeline", {"exec_seconds": 3202})
    async with serving(pool(store, registry, "alpha")):

        async def recorded() -> bool:
            return recorded_groups(pg_server, store, prepared.run_id) is not None

        await until(recorded, "the program's group in the queue row")
        record = recorded_groups(pg_server, store, prepared.run_id)
        ((pgid, ticks),) = record["groups"]
        assert Machine.from_json(record["machine"]) == Machine.here()
        assert process_start_ticks(pgid) == ticks and b"sh" in Path(f"/proc/{pgid}/cmdline").read_bytes()
        await cancel_run(store, prepared.run_id)

        async def done() -> bool:
            row = await store.queue.get(prepared.run_id)
            return row is not None and row.done

        await until(done, "the cancelled run to finish")
    assert recorded_groups(pg_server, store, prepared.run_id) is None


async def _leave_behind(
    pg_server: PgServer, store: PostgresPoolStore, registry: OperationRegistry, groups: Any, machine: Machine
) -> RunId:
    """A run claimed by a worker that recorded ``groups`` and then died (its lease expired)."""
    prepared = await start_run(store, registry, "demo_big", {"states": 2, "events": 1, "delay_ms": 0})
    (claim,) = await store.queue.claim(1, "dead-host", 4242, 30.0)
    assert await store.queue.record_groups(claim.run_id, claim.token, {"machine": machine.to_json(), "groups": groups})
    pg_server.psql(f"UPDATE {store.schema}.mfm_run_queue SET lease_expires_at = clock_timestamp() - interval '1 s'")
    return prepared.run_id


async def _take_over(store: PostgresPoolStore, registry: OperationRegistry, run: RunId) -> None:
    await asyncio.wait_for(pool(store, registry, "rescuer").run(asyncio.Event(), exit_when_idle=True), HANG_GUARD)
    assert check_stream(await store.events.read_range(run, 1)).status is RunStatus.COMPLETED


async def test_a_takeover_kills_the_previous_holders_group_first(
    pg_server: PgServer, store: PostgresPoolStore, registry: OperationRegistry, sleeper: subprocess.Popen[bytes]
) -> None:
    ticks = process_start_ticks(sleeper.pid)
    run = await _leave_behind(pg_server, store, registry, [[sleeper.pid, ticks]], Machine.here())
    await _take_over(store, registry, run)
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert recorded_groups(pg_server, store, run) is None


async def test_a_takeover_never_kills_a_reused_pid(
    pg_server: PgServer, store: PostgresPoolStore, registry: OperationRegistry, sleeper: subprocess.Popen[bytes]
) -> None:
    ticks = process_start_ticks(sleeper.pid)
    assert ticks is not None
    run = await _leave_behind(pg_server, store, registry, [[sleeper.pid, ticks + 1]], Machine.here())
    await _take_over(store, registry, run)
    time.sleep(0.1)
    assert sleeper.poll() is None  # a fake start time: the pid names another process, left alone


async def test_a_takeover_reports_a_group_on_another_host(
    pg_server: PgServer,
    store: PostgresPoolStore,
    registry: OperationRegistry,
    sleeper: subprocess.Popen[bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    far = Machine("far-away", "boot", "ns")
    run = await _leave_behind(pg_server, store, registry, [[sleeper.pid, process_start_ticks(sleeper.pid)]], far)
    await asyncio.wait_for(
        pool(store, registry, "rescuer", quiet=False).run(asyncio.Event(), exit_when_idle=True), HANG_GUARD
    )
    assert sleeper.poll() is None
    assert f"process group {sleeper.pid} of the previous attempt ran on host 'far-away'" in capsys.readouterr().out
    assert check_stream(await store.events.read_range(run, 1)).status is RunStatus.COMPLETED


async def test_a_queue_table_from_an_older_version_gains_the_column(pg_server: PgServer) -> None:
    schema = pg_server.new_schema_name()
    pg_server.psql(
        f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.mfm_run_queue (run_id uuid PRIMARY KEY,"
        " action text NOT NULL, manifest_id text, source_run_id uuid, args text NOT NULL DEFAULT '{}',"
        " enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(), owner_token uuid, owner_host text,"
        " owner_pid integer, claimed_at timestamptz, heartbeat_at timestamptz, lease_expires_at timestamptz,"
        " claims integer NOT NULL DEFAULT 0, done_at timestamptz, outcome text, result text, last_error text)"
    )
    store = PostgresPoolStore(pg_server.dsn(), schema=schema)
    try:
        run = RunId(str(uuid.uuid4()))
        await store.queue.enqueue(run, "resume")
        (claim,) = await store.queue.claim(1, "h", os.getpid(), 30.0)
        assert claim.exec_groups is None
        assert await store.queue.record_groups(run, claim.token, {"groups": []})
    finally:
        await store.close()


async def test_a_failed_run_is_recovered_once(
    pg_server: PgServer, store: PostgresPoolStore, registry: OperationRegistry
) -> None:
    failed = await start_run(store, registry, "demo_fix", {"required_file": "/nonexistent/mfm-pool-once"})
    await asyncio.wait_for(pool(store, registry, "alpha").run(asyncio.Event(), exit_when_idle=True), HANG_GUARD)
    assert check_stream(await store.events.read_range(failed.run_id, 1)).status is RunStatus.FAILED
    other = PostgresPoolStore(pg_server.dsn(), schema=store.schema)
    try:
        outcomes = await asyncio.gather(
            resume_run(store, failed.run_id), resume_run(other, failed.run_id), return_exceptions=True
        )
    finally:
        await other.close()
    (won,) = [o for o in outcomes if not isinstance(o, BaseException)]
    (lost,) = [o for o in outcomes if isinstance(o, BaseException)]
    assert won.recovery_run_id is not None
    assert isinstance(lost, MfmError) and lost.code == "run_already_recovered"
    assert f"already recovered as {won.recovery_run_id}" in lost.message
    with pytest.raises(MfmError) as again:
        await resume_run(store, failed.run_id)
    assert again.value.code == "run_already_recovered" and won.recovery_run_id in again.value.message
    async with serving(pool(store, registry, "beta")):

        async def recovered() -> bool:
            row = await store.queue.get(won.recovery_run_id)  # type: ignore[arg-type]
            return row is not None and row.done

        await until(recovered, "the recovery run to finish (failing again: the file is still missing)")
    with pytest.raises(MfmError) as still:
        await resume_run(store, failed.run_id)
    assert still.value.code == "run_already_recovered"
