"""The database worker pool (engine/pool.py) on a real PostgreSQL server: queue, claims, leases, hand-over, cancel.

In-process pools here; tests/cli/test_cli_postgres.py runs `mfm worker serve` processes and kills one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from engine._kinds import ArtifactKind
from engine._runtime.envelopes import analyze
from engine.errors import MfmError, StorageError, StorageErrorKind
from engine.events import EventEnvelope, RunCompleted, RunStarted, RunStatus
from engine.ids import ArtifactId, OpId, RunId
from engine.open_store import display_location, is_database_url, open_store, split_database_url
from engine.operations import OperationRegistry, load_registry
from engine.pool import Claim, LeasedEventStore, PostgresPoolStore, RunLease, RunQueue, WorkerPool, lease_info
from engine.stores import Blob, paired_unit_of_work
from engine.stores.fs import FsStore
from engine.stores.postgres import PostgresStore
from engine.workers import (
    DOMAIN_EVENT_CRASH_LOOP_RESET,
    LeaseState,
    cancel_run,
    lease_state,
    orphan_streak,
    read_verdict,
    replay_run,
    resume_run,
    start_run,
)
from tests.engine.pg_server import PgServer

HANG_GUARD = 60.0  # seconds; only so that a regression fails instead of hanging the suite


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


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for something another task or process does (not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


def check_stream(envs: list[EventEnvelope]) -> RunCompleted:
    """One writer at a time: contiguous seqs, one RunStarted first, attempt-envelope rules, a RunCompleted last."""
    assert [e.seq for e in envs] == list(range(1, len(envs) + 1))
    assert isinstance(envs[0].event, RunStarted)
    assert sum(isinstance(e.event, RunStarted) for e in envs) == 1
    analyze(envs)  # raises EnvelopeViolation on a broken attempt envelope
    last = envs[-1].event
    assert isinstance(last, RunCompleted)
    assert sum(isinstance(e.event, RunCompleted) for e in envs) == 1
    return last


def pool(store: PostgresPoolStore, registry: OperationRegistry, host: str, **kw: float) -> WorkerPool:
    return WorkerPool(store, registry, host=host, quiet=True, poll=0.05, **kw)  # type: ignore[arg-type]


# -- store selection --------------------------------------------------------------------------------------------


def test_open_store_picks_the_backend_from_the_location(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "s", create=True), FsStore)
    db = open_store("postgresql://u:hunter2@db.example:5433/mfm?mfm_schema=team_a&connect_timeout=3")
    assert isinstance(db, PostgresPoolStore) and db.schema == "team_a"
    assert "hunter2" not in repr(db) and "hunter2" not in db.dsn
    assert is_database_url("postgres://x/y") and not is_database_url("/var/lib/mfm") and not is_database_url(None)
    dsn, ours = split_database_url("postgresql:///mfm?host=/tmp/s&mfm_schema=b&mfm_notify=off")
    assert ours == {"mfm_schema": "b", "mfm_notify": "off"} and "mfm_" not in dsn and dsn.startswith("postgresql:///")
    shown = display_location("postgresql://bob:s3cret@db/mfm?password=s3cret2&sslmode=require")
    assert "s3cret" not in shown and shown.startswith("postgresql://bob:***@db/mfm?")
    with pytest.raises(StorageError) as exc:
        open_store("postgresql:///mfm?mfm_notify=sometimes")
    assert exc.value.code == "store_notify_invalid"


async def test_a_wrong_password_never_shows_up_in_the_error(pg_server: PgServer) -> None:
    pg_server.add_password_role("pool_pw_role", "right-pass")
    s = open_store(f"postgresql://pool_pw_role:wrong-pass-123@/postgres?host={pg_server.root}")
    assert isinstance(s, PostgresPoolStore)
    with pytest.raises(StorageError) as exc:
        await s.queue.ensure()
    assert "wrong-pass-123" not in exc.value.one_line()
    with pytest.raises(StorageError) as exc2:
        lease_info(s, RunId(str(uuid.uuid4())))
    assert "wrong-pass-123" not in exc2.value.one_line()


# -- queue and leases -------------------------------------------------------------------------------------------


async def test_a_started_run_is_queued_then_executed_and_its_row_names_the_host(
    store: PostgresPoolStore, registry: OperationRegistry
) -> None:
    prepared = await start_run(store, registry, "demo_big", {"states": 3, "events": 1, "delay_ms": 0})
    assert await store.events.head_seq(prepared.run_id) == 0  # queued, nothing executed here
    queued = lease_state(store, prepared.run_id)
    assert (queued.state, queued.action, queued.host) == (LeaseState.HELD, "queued", None)
    with pytest.raises(MfmError) as held:
        await resume_run(store, prepared.run_id)
    assert held.value.code == "lease_held"

    await asyncio.wait_for(pool(store, registry, "alpha").run(asyncio.Event(), exit_when_idle=True), HANG_GUARD)

    last = check_stream(await store.events.read_range(prepared.run_id, 1))
    assert last.status is RunStatus.COMPLETED
    done = lease_state(store, prepared.run_id)
    assert (done.state, done.host) == (LeaseState.NONE, "alpha")
    row = await store.queue.get(prepared.run_id)
    assert row is not None and row.done and row.outcome == "Completed" and row.claims == 1
    finished = await resume_run(store, prepared.run_id)
    assert finished.finished and finished.spawned_pid is None and finished.recovery_run_id is None
    with pytest.raises(MfmError) as again:
        await cancel_run(store, prepared.run_id)
    assert again.value.code == "run_already_finished"


async def test_concurrent_claimers_never_get_the_same_run(pg_server: PgServer, store: PostgresPoolStore) -> None:
    runs = {RunId(str(uuid.uuid4())) for _ in range(24)}
    for run in runs:
        await store.queue.enqueue(run, "start", manifest_id=ArtifactId("a" * 64))
    others = [PostgresPoolStore(pg_server.dsn(), schema=store.schema) for _ in range(4)]
    try:
        claimed: list[RunId] = []
        while True:
            batches = await asyncio.gather(*(o.queue.claim(2, f"h{i}", 1, 30.0) for i, o in enumerate(others)))
            got = [c.run_id for batch in batches for c in batch]
            if not got:
                break
            claimed += got
        assert sorted(claimed) == sorted(runs)  # every run exactly once
        assert await store.queue.pending() == 24  # claimed, not done
    finally:
        for o in others:
            await o.close()


async def test_an_expired_lease_is_claimed_again_and_the_old_holder_learns_it_lost(
    pg_server: PgServer, store: PostgresPoolStore
) -> None:
    run = RunId(str(uuid.uuid4()))
    await store.queue.enqueue(run, "resume")
    other = PostgresPoolStore(pg_server.dsn(), schema=store.schema)
    try:
        (first,) = await store.queue.claim(5, "old-host", 11, 30.0)
        assert await other.queue.claim(5, "new-host", 22, 30.0) == []  # live lease: not claimable
        assert lease_info(store, run).state is LeaseState.HELD
        pg_server.psql(
            f"UPDATE {store.schema}.mfm_run_queue SET lease_expires_at = clock_timestamp() - interval '1 second'"
        )  # the old holder stopped heartbeating (as if killed)
        stale = lease_info(store, run)
        assert (stale.state, stale.host, stale.pid) == (LeaseState.STALE, "old-host", 11)
        (second,) = await other.queue.claim(5, "new-host", 22, 30.0)
        assert second.run_id == run and second.claims == 2 and second.token != first.token
        assert await store.queue.heartbeat([first.token], 30.0) == set()  # lost
        assert await other.queue.heartbeat([second.token], 30.0) == {second.token}
        assert not await store.queue.finish(run, first.token, "Completed", None)  # a stale holder changes nothing
        assert await other.queue.finish(run, second.token, "Completed", None)
        row = await store.queue.get(run)
        assert row is not None and row.done and row.host == "new-host"
    finally:
        await other.close()


async def test_worker_leases_lists_claimed_queued_and_stale_runs_with_heartbeat_age(
    pg_server: PgServer, store: PostgresPoolStore
) -> None:
    """The workers view's source on a database store: pid, host, heartbeat age, stale flagged, queued rows."""
    from engine.workers import worker_leases

    held, lost, queued, done = (RunId(str(uuid.uuid4())) for _ in range(4))
    for run in (held, lost, queued, done):
        await store.queue.enqueue(run, "resume")
    claims = {c.run_id: c for c in await store.queue.claim(2, "host-a", 41, 30.0)}
    assert set(claims) == {held, lost}
    (finished,) = await store.queue.claim(1, "host-b", 42, 30.0)
    assert finished.run_id == queued  # claim order is enqueue order: queued is the third
    await store.queue.finish(queued, finished.token, "Completed", None)
    pg_server.psql(
        f"UPDATE {store.schema}.mfm_run_queue SET lease_expires_at = clock_timestamp() - interval '1 second',"
        f" heartbeat_at = clock_timestamp() - interval '90 seconds' WHERE run_id = '{lost}'"
    )
    by_run = {w.run_id: w for w in await worker_leases(store)}
    assert set(by_run) == {held, lost, done}  # the finished row is left out
    assert (by_run[held].state, by_run[held].host, by_run[held].pid, by_run[held].stale) == (
        LeaseState.HELD,
        "host-a",
        41,
        False,
    )
    assert by_run[held].heartbeat_age_millis is not None and by_run[held].heartbeat_age_millis < 60_000
    assert by_run[lost].stale and by_run[lost].host == "host-a"
    assert by_run[lost].heartbeat_age_millis is not None and by_run[lost].heartbeat_age_millis >= 90_000
    assert (by_run[done].state, by_run[done].action, by_run[done].pid) == (LeaseState.HELD, "queued", None)


def claim_of(run: RunId) -> Claim:
    return Claim(run, "resume", None, None, {}, uuid.uuid4(), 1)


def test_the_lease_is_valid_only_until_the_last_renewal_plus_ttl_minus_a_margin() -> None:
    now = [100.0]
    lease = RunLease(claim_of(RunId(str(uuid.uuid4()))), sent_at=100.0, ttl=5.0, clock=lambda: now[0])
    now[0] = 103.9
    lease.check()
    lease.renewed(sent_at=103.0)
    now[0] = 106.9
    lease.check()  # renewed: valid until 103 + 5 - 1
    now[0] = 107.0
    with pytest.raises(StorageError) as exc:
        lease.check()
    assert exc.value.code == "lease_lost"
    lease.renewed(sent_at=107.0)  # too late: lost for good (never resurrected by a late heartbeat)
    with pytest.raises(StorageError):
        lease.check()


async def test_a_stale_writer_is_stopped_by_its_lease_or_else_by_the_primary_key(
    pg_server: PgServer, store: PostgresPoolStore, registry: OperationRegistry
) -> None:
    prepared = await start_run(store, registry, "demo_big", {"states": 2, "delay_ms": 0})
    await asyncio.wait_for(pool(store, registry, "alpha").run(asyncio.Event(), exit_when_idle=True), HANG_GUARD)
    envs = await store.events.read_range(prepared.run_id, 1)
    run = RunId(str(uuid.uuid4()))
    first = EventEnvelope(run_id=run, seq=1, ts_millis=1, event=envs[0].event)
    now = [0.0]
    a = RunLease(claim_of(run), 0.0, 5.0, clock=lambda: now[0])
    b = RunLease(claim_of(run), 0.0, 5.0, clock=lambda: now[0])
    # Both believe they hold the run (an append in flight past the expiry): the primary key lets one through.
    results = await asyncio.gather(
        LeasedEventStore(store.events, a).append(run, 0, [first]),
        LeasedEventStore(store.events, b).append(run, 0, [first]),
        return_exceptions=True,
    )
    assert results.count(1) == 1
    (lost,) = [r for r in results if r != 1]
    assert isinstance(lost, StorageError) and lost.kind is StorageErrorKind.CONCURRENCY
    # A worker whose lease ran out refuses to write at all.
    now[0] = 4.0
    second = EventEnvelope(run_id=run, seq=2, ts_millis=1, event=envs[1].event)
    with pytest.raises(StorageError) as exc:
        await LeasedEventStore(store.events, a).append(run, 1, [second])
    assert exc.value.code == "lease_lost"
    assert await store.events.head_seq(run) == 1


async def test_the_leased_store_is_the_pools_unit_of_work_and_checks_the_lease_before_a_commit(
    store: PostgresPoolStore,
) -> None:
    """A pool run commits a step's blobs with its events (paired with the pool's artifacts), and a worker whose
    lease ran out writes neither."""
    run = RunId(str(uuid.uuid4()))
    now = [0.0]
    leased = LeasedEventStore(store.events, RunLease(claim_of(run), 0.0, 5.0, clock=lambda: now[0]))
    assert paired_unit_of_work(leased, store.artifacts) is leased
    snap = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"k":1}')
    first = EventEnvelope(
        run_id=run,
        seq=1,
        ts_millis=1,
        event=RunStarted(op_id=OpId("op"), manifest_id=snap.artifact_id, initial_snapshot_id=snap.artifact_id),
    )
    assert await leased.commit(run, 0, [first], [snap]) == 1
    assert await store.artifacts.get(snap.artifact_id) == snap.data
    now[0] = 4.0
    late = Blob.of(ArtifactKind.CONTEXT_SNAPSHOT, b'{"k":2}')
    second = EventEnvelope(run_id=run, seq=2, ts_millis=1, event=RunCompleted(status=RunStatus.COMPLETED))
    with pytest.raises(StorageError) as exc:
        await leased.commit(run, 1, [second], [late])
    assert exc.value.code == "lease_lost"
    assert await store.events.head_seq(run) == 1 and not await store.artifacts.exists(late.artifact_id)


# -- execution: cancel, hand-over, replay, recover ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(p: WorkerPool) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(p.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, HANG_GUARD)


async def test_a_cancel_request_reaches_the_owning_worker_through_the_database(
    pg_server: PgServer, store: PostgresPoolStore, registry: OperationRegistry
) -> None:
    prepared = await start_run(store, registry, "demo_big", {"states": 500, "events": 0, "delay_ms": 20})
    run = prepared.run_id
    async with serving(pool(store, registry, "alpha", cancel_poll=0.05)):
        await until(lambda: has_events(store, run, 3), "the run to make progress")
        monitor = PostgresPoolStore(pg_server.dsn(), schema=store.schema)  # another process, in effect
        try:
            assert await cancel_run(monitor, run, "stop it") is False  # a live worker holds it: nothing queued
        finally:
            await monitor.close()
        await until(lambda: row_done(store, run), "the worker to close the run")
    last = check_stream(await store.events.read_range(run, 1))
    assert last.status is RunStatus.CANCELLED
    row = await store.queue.get(run)
    assert row is not None and row.outcome == "Cancelled" and row.host == "alpha"


async def has_events(store: PostgresStore, run: RunId, n: int) -> bool:
    return await store.events.head_seq(run) >= n


async def row_done(store: PostgresPoolStore, run: RunId) -> bool:
    row = await store.queue.get(run)
    return row is not None and row.done


async def test_a_stopping_worker_hands_its_runs_over_and_another_finishes_them(
    store: PostgresPoolStore, registry: OperationRegistry
) -> None:
    params = {"states": 30, "events": 1, "delay_ms": 10}
    moved = await start_run(store, registry, "demo_big", params)
    reference = await start_run(store, registry, "demo_big", params)
    async with serving(pool(store, registry, "one", concurrency=1)):
        await until(lambda: has_events(store, moved.run_id, 5), "the first worker to make progress")
    row = await store.queue.get(moved.run_id)
    assert row is not None and not row.done and not row.owned  # released at once, not left to expire
    await asyncio.wait_for(
        pool(store, registry, "two", concurrency=2).run(asyncio.Event(), exit_when_idle=True), HANG_GUARD
    )
    finals = []
    for run in (moved.run_id, reference.run_id):
        last = check_stream(await store.events.read_range(run, 1))
        assert last.status is RunStatus.COMPLETED
        finals.append(last.final_snapshot_id)
    assert finals[0] == finals[1] and finals[0] is not None
    row = await store.queue.get(moved.run_id)
    assert row is not None and row.host == "two" and row.claims == 2


async def test_replay_and_recovery_go_through_the_queue(store: PostgresPoolStore, registry: OperationRegistry) -> None:
    ok = await start_run(store, registry, "demo_big", {"states": 3, "delay_ms": 0})
    await asyncio.wait_for(pool(store, registry, "alpha").run(asyncio.Event(), exit_when_idle=True), HANG_GUARD)
    replay_id = await replay_run(store, ok.run_id)
    assert await read_verdict(store, replay_id) is None
    await asyncio.wait_for(pool(store, registry, "beta").run(asyncio.Event(), exit_when_idle=True), HANG_GUARD)
    verdict = await read_verdict(store, replay_id)
    assert verdict is not None and verdict["verdict"] == "deterministic"
    assert verdict["source_run_id"] == ok.run_id and verdict["replay_run_id"] == replay_id

    failed = await start_run(store, registry, "demo_fix", {"required_file": "/nonexistent/mfm-pool-test"})
    await asyncio.wait_for(pool(store, registry, "alpha").run(asyncio.Event(), exit_when_idle=True), HANG_GUARD)
    assert check_stream(await store.events.read_range(failed.run_id, 1)).status is RunStatus.FAILED
    outcome = await resume_run(store, failed.run_id)
    assert outcome.recovery_run_id is not None and outcome.spawned_pid is None
    row = await store.queue.get(outcome.recovery_run_id)
    assert row is not None and row.action == "recover" and row.source_run_id == failed.run_id


async def test_a_pool_refuses_nonsense(store: PostgresPoolStore, registry: OperationRegistry) -> None:
    with pytest.raises(StorageError) as exc:
        await WorkerPool(store, registry, concurrency=0, quiet=True).run(asyncio.Event())
    assert exc.value.code == "usage"
    with pytest.raises(StorageError) as bad:
        await store.queue.enqueue(RunId(str(uuid.uuid4())), "explode")
    assert bad.value.code == "run_queue_action_invalid"
    run = RunId(str(uuid.uuid4()))
    await store.queue.enqueue(run, "resume")
    with pytest.raises(StorageError) as dup:
        await store.queue.enqueue(run, "resume")
    assert dup.value.code == "run_already_queued"
    assert isinstance(store.queue, RunQueue)


async def test_the_tui_watches_a_database_store_through_the_same_lease_probe(
    store: PostgresPoolStore, registry: OperationRegistry
) -> None:
    from mfm_tui.app import make_app, store_label
    from mfm_tui.run_model import LeaseStatus, lease_status_of
    from mfm_tui.run_model import RunDisplayStatus as ViewStatus

    done = await start_run(store, registry, "demo_big", {"states": 2, "delay_ms": 0})
    await asyncio.wait_for(pool(store, registry, "alpha").run(asyncio.Event(), exit_when_idle=True), HANG_GUARD)
    queued = await start_run(store, registry, "demo_big", {"states": 2, "delay_ms": 0})
    app = make_app(
        store,
        watch=False,
        plan_resolver=registry.plan_resolver(),
        lease_probe=lambda run_id: lease_status_of(lease_state(store, run_id)),  # what `mfm tui` passes
    )
    async with app.run_test() as pilot:
        await app.sync_store()
        await pilot.pause()
        models = app.watcher.models
        assert models[done.run_id].status is ViewStatus.COMPLETED
        assert app.lease_probe is not None and app.lease_probe(queued.run_id) is LeaseStatus.QUEUED  # not lost
        assert models[queued.run_id].status is ViewStatus.PENDING  # listed, though it has no events yet
        assert "postgres" in store_label(store)


async def test_the_workers_view_lists_pool_leases_with_host_pid_and_heartbeat(
    store: PostgresPoolStore, registry: OperationRegistry
) -> None:
    """The TUI's workers view on a database store: the claimed run with its pool worker's host, pid and heartbeat
    age, and a queued run."""
    from mfm_tui.app import make_app
    from mfm_tui.screens.workers import WorkersScreen

    claimed = await start_run(store, registry, "demo_big", {"states": 2, "delay_ms": 0})
    (claim,) = await store.queue.claim(1, "pool-host", 4242, 30.0)
    assert claim.run_id == claimed.run_id
    queued = await start_run(store, registry, "demo_big", {"states": 2, "delay_ms": 0})
    app = make_app(store, watch=False, plan_resolver=registry.plan_resolver())
    async with app.run_test(size=(120, 40)) as pilot:
        await app.sync_store()
        app.push_screen(WorkersScreen())
        for _ in range(400):
            await pilot.pause(0.01)
            if isinstance(app.screen, WorkersScreen) and len(app.screen.rows) == 2:
                break
        screen = app.screen
        assert isinstance(screen, WorkersScreen) and screen.error is None
        by_run = {r.run_id: r.cells for r in screen.rows}
        assert by_run[claimed.run_id][0] == "live" and by_run[claimed.run_id][4:6] == ("pool-host", "4242")
        assert by_run[claimed.run_id][6].endswith(" ago")  # the heartbeat's age, from the database's clock
        assert by_run[queued.run_id][0] == "queued"


# -- crash loops ------------------------------------------------------------------------------------------------

CRASH_OPS = str(Path(__file__).resolve().parents[1] / "crash_ops.py")


def _serve_once(url: str, env: dict[str, str]) -> int:
    """One `mfm worker serve --exit-when-idle` process (lease ttl 1 s); its exit code (-9: SIGKILLed by a handler)."""
    cmd = [sys.executable, "-m", "engine.workers", "--store", url, "--ops", CRASH_OPS, "serve", "--exit-when-idle"]
    cmd += ["--lease-ttl", "1", "--heartbeat", "0.2", "--poll", "0.05", "--host-name", "crashy"]
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=HANG_GUARD, stdin=subprocess.DEVNULL)
    return proc.returncode


async def _serve_until_idle(store: PostgresPoolStore, run: RunId, url: str, env: dict[str, str]) -> int:
    """Pool processes, one after the other, until one exits idle; return how many a handler killed."""
    for deaths in range(12):  # a bound, so that a pool that never stops fails the test instead of hanging it
        code = _serve_once(url, env)
        if code == 0:
            return deaths
        assert code == -signal.SIGKILL
        # The dead pool's lease runs out after its ttl; then the next pool takes the run over.
        await until(lambda: _stale(store, run), "the dead pool's lease to expire")
    raise AssertionError("the pool kept taking over a run whose handler kills it")


async def _stale(store: PostgresPoolStore, run: RunId) -> bool:
    return lease_state(store, run).state is LeaseState.STALE


@pytest.mark.slow
async def test_a_handler_that_kills_its_pool_is_taken_over_k_times_then_parked_until_an_explicit_resume(
    pg_server: PgServer, store: PostgresPoolStore, tmp_path: Path
) -> None:
    url = f"postgresql:///postgres?host={pg_server.root}&user=postgres&mfm_schema={store.schema}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "MFM_STORE"}
    env["MFM_MAX_ORPHAN_RECOVERIES"] = "2"  # K, configured where every process reads it
    registry = load_registry([CRASH_OPS], entry_points=False)
    gate = tmp_path / "gate"
    run = (await start_run(store, registry, "crash_loop", {"gate": str(gate)})).run_id

    # The first pool dies in `boom`; the next K take it over (each closes the orphan attempt and dies again); the
    # one after that parks the run instead of taking it over.
    assert await _serve_until_idle(store, run, url, env) == 1 + 2
    envs = await store.events.read_range(run, 1)
    streak = orphan_streak(envs)
    assert streak is not None and streak.recoveries == 2 and str(streak.state_id).endswith("boom")
    assert not any(isinstance(e.event, RunCompleted) for e in envs)
    row = await store.queue.get(run)
    assert row is not None and row.done and row.outcome == "crash_looping"
    assert row.last_error is not None and "2 consecutive orphan recoveries" in row.last_error
    assert lease_state(store, run).state is LeaseState.NONE  # nobody will pick it up

    shown = subprocess.run(
        [sys.executable, "-m", "mfm_tui", "--store", url, "--ops", CRASH_OPS, "show", run[:8], "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["status"] == "crash_looping" and view["crash_loop"]["orphan_recoveries"] == 2
    assert any("orphan recoveries" in line for line in view["worker_log"])
    assert "hunter2" not in shown.stdout

    # An explicit resume still works and resets the count: K more deaths before the pool parks it again.
    await resume_run(store, run)
    assert await _serve_until_idle(store, run, url, env) == 2
    envs = await store.events.read_range(run, 1)
    assert [e.kind for e in envs].count(DOMAIN_EVENT_CRASH_LOOP_RESET) == 1
    row = await store.queue.get(run)
    assert row is not None and row.outcome == "crash_looping"

    gate.touch()  # the cause is fixed
    await resume_run(store, run)
    assert await _serve_until_idle(store, run, url, env) == 0
    last = check_stream(await store.events.read_range(run, 1))
    assert last.status is RunStatus.COMPLETED
