"""``mfm doctor --migrate`` (issue 12): a version-1 store becomes version 2, and a kill at ANY step of the
migration leaves a store that opens (as version 1 or 2), reads every committed event unchanged, accepts appends,
and finishes migrating when asked again."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.doctor import check_store, migrate_store
from engine.engine import RunPhase
from engine.runtime import Engine, Failpoints
from engine.stores.fs import FsStore, framing
from engine.testing import FakeClock, FakeSleeper, WriteKey, base_config, fixed_run_ids, make_plan, start_plan
from tests.engine.store_contract import env, envs, new_run


async def _v1_store(root: Path) -> dict[str, list[Any]]:
    """A version-1 store: two engine runs (one finished, one stopped half-way) and a run of multi-event batches."""
    store = FsStore(root, new_version=1)
    plan = make_plan([(f"s{i}", WriteKey(f"k{i}", i)) for i in range(3)], [("s0", "s1"), ("s1", "s2")])
    engine = Engine(plan_resolver=lambda m: plan, clock=FakeClock(), sleeper=FakeSleeper(), run_ids=fixed_run_ids())
    done = await start_plan(engine, store.stores, plan, base_config())
    assert done.phase is RunPhase.COMPLETED
    stopped = await start_plan(
        Engine(
            plan_resolver=lambda m: plan,
            clock=FakeClock(),
            sleeper=FakeSleeper(),
            run_ids=fixed_run_ids("00000000-0000-4000-8000-000000000100"),
            failpoints=Failpoints.stop_after_handler("machine.main.s1"),
        ),
        store.stores,
        plan,
        base_config(),
    )
    assert stopped.phase is RunPhase.RUNNING
    raw = new_run()
    await store.events.append(raw, 0, envs(raw, 1, 3))
    await store.events.append(raw, 3, envs(raw, 4, 4))
    return {run: await store.events.read_range(run, 1) for run in await store.events.list_runs()}


def _steps(root: Path) -> list[str]:
    seen: list[str] = []
    migrate_store(root, step=seen.append)
    return seen


def _migrate_killed_at(root: Path, k: int) -> None:
    """Run the migration in a child process SIGKILLed right after its ``k``-th durable step."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            count = [0]

            def step(_name: str) -> None:
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)

            migrate_store(root, step=step)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


async def _check_reads(root: Path, expected: dict[str, list[Any]]) -> int:
    store = FsStore(root, create=False)
    assert store.version in (1, 2)
    for run, events in expected.items():
        assert await store.events.read_range(run, 1) == events, run  # type: ignore[arg-type]
        assert store.events.damage(run) is None  # type: ignore[arg-type]
    return store.version


def _errors(root: Path) -> set[str]:
    return {f.code for f in check_store(root).findings if f.severity == "error"}


def _formats(root: Path, runs: list[str]) -> set[int]:
    return {framing.log_format((root / framing.events_file(r)).read_bytes()[:1], 0) for r in runs}


async def test_migration_converts_every_log_byte_for_byte_and_flips_the_version_last(tmp_path: Path) -> None:
    root = tmp_path / "store"
    expected = await _v1_store(root)
    before = {r: (root / framing.events_file(r)).read_bytes() for r in expected}
    steps = _steps(root)
    assert steps[-2:] == ["written store.json", "renamed store.json"]
    assert json.loads((root / "store.json").read_text())["version"] == 2
    assert await _check_reads(root, expected) == 2
    for run, old in before.items():
        new = (root / framing.events_file(run)).read_bytes()
        # the same envelopes, byte for byte, as the bodies of version-2 event records, commit for commit
        assert new == framing.v1_to_v2(old)
        assert [ln[ln.index(b" {") + 1 :] for ln in new.split(b"\n")[:-1]] == [
            ln.rstrip(b" ") for ln in old.split(b"\n")[:-1]
        ]
    assert _errors(root) == {"artifact_missing"}  # the raw run's made-up ids, as before the migration
    again = migrate_store(root)
    assert (again.version_before, again.version_after, again.converted) == (2, 2, [])


async def test_a_kill_after_every_step_of_the_migration_loses_nothing(tmp_path: Path) -> None:
    original = tmp_path / "original"
    expected = await _v1_store(original)
    assert _errors(original) == {"artifact_missing"}
    probe = tmp_path / "probe"
    shutil.copytree(original, probe)
    steps = _steps(probe)
    assert len(steps) == 3 * len(expected) + 2
    for k in range(1, len(steps) + 1):
        root = tmp_path / f"killed-{k}"
        shutil.copytree(original, root)
        _migrate_killed_at(root, k)
        version = await _check_reads(root, expected)  # opens, as version 1 or 2, and every event reads
        assert version == (2 if k == len(steps) else 1), k
        formats = _formats(root, list(expected))
        assert formats <= {1, 2}
        # a writer can append to a run whatever the format its log is in now
        store = FsStore(root)
        (run,) = [r for r, evs in expected.items() if evs[0].event.manifest_id == "a" * 64]  # raw
        head = len(expected[run])
        extra = env(run, head + 1)  # type: ignore[arg-type]
        assert await store.events.append(run, head, [extra]) == head + 1  # type: ignore[arg-type]
        report = migrate_store(root)  # run again: finishes the job
        assert report.version_after == 2 and not report.blocked, k
        assert _formats(root, list(expected)) == {2}
        expected_now = {**expected, run: [*expected[run], extra]}
        assert await _check_reads(root, expected_now) == 2
        assert _errors(root) == {"artifact_missing"}, k  # nothing but the raw run's made-up ids


async def test_a_writer_holding_the_old_log_open_appends_to_the_new_one(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsStore(root, new_version=1)
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 2))  # the writer's fd is cached on the version-1 file
    migrate_store(root)
    assert await store.events.append(run, 2, [env(run, 3)]) == 3
    data = (root / framing.events_file(run)).read_bytes()
    assert data.startswith(b"E") and data.count(b"\n") == 3
    assert await FsStore(root).events.read_range(run, 1) == envs(run, 1, 3)


async def test_a_damaged_log_blocks_the_flip_and_is_left_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsStore(root, new_version=1)
    good, bad = new_run(), new_run()
    await store.events.append(good, 0, envs(good, 1, 2))
    await store.events.append(bad, 0, envs(bad, 1, 3))
    path = root / framing.events_file(bad)
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    damaged = path.read_bytes()
    report = migrate_store(root)
    assert report.converted == [good] and [r for r, _ in report.blocked] == [bad]
    assert report.version_after == 1 and json.loads((root / "store.json").read_text())["version"] == 1
    assert path.read_bytes() == damaged
    assert await FsStore(root).events.read_range(good, 1) == envs(good, 1, 2)


async def test_v1_store_keeps_writing_version_1_until_migrated(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsStore(root, new_version=1)
    run = new_run()
    await store.events.append(run, 0, envs(run, 1, 2))
    assert (root / framing.events_file(run)).read_bytes().startswith(b'{"run_id"')
    reopened = FsStore(root)
    assert reopened.version == 1
    await reopened.events.append(run, 2, [env(run, 3)])
    assert (root / framing.events_file(run)).read_bytes().count(b"E.") == 0


def test_cli_migrate(tmp_path: Path) -> None:
    root = tmp_path / "store"
    expected = asyncio.run(_v1_store(root))
    res = subprocess.run(
        [sys.executable, "-m", "mfm_tui", "--store", str(root), "doctor", "--migrate", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["version_before"], out["version_after"]) == (1, 2)
    assert sorted(out["converted"]) == sorted(expected)
    assert json.loads((root / "store.json").read_text())["version"] == 2
