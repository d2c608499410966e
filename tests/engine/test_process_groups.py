"""The previous attempt's exec process groups are recorded in the run's lease and made sure gone before another
attempt starts (issue 13 item 1, the lease part): record, check, kill, and never a reused pid.

``engine.process_groups`` decides; ``engine.workers.lease.Lease`` records (``exec_groups`` in ``runs/<id>/lease``)
and checks on ``acquire``; ``engine.process_exec.run_process`` reports each program's group to the context's
reporter. The outside view (``mfm resume`` after a worker and its guard were SIGKILLed) is in
tests/cli/test_cli_exec_orphans.py; the pool's takeover in tests/engine/test_pool_exec_groups.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import MfmError
from engine.ids import RunId
from engine.process_exec import run_process
from engine.process_groups import (
    ExecGroup,
    GroupCheck,
    Machine,
    ensure_gone,
    group_members,
    process_start_ticks,
    reporting_groups_to,
)
from engine.stores.fs import FsStore
from engine.workers import Lease, LeaseState, lease_state

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

HERE = Machine.here()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Spawned:
    """Process groups started for a test; whatever is left is killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []

    def group(self, script: str) -> subprocess.Popen[bytes]:
        """``sh -c script`` leading its own session and group (as an exec program does)."""
        proc = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True, stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for pid in self.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    s = Spawned()
    yield s
    s.cleanup()


def _leader_with_orphan(spawned: Spawned) -> tuple[ExecGroup, int]:
    """A group whose leader has exited while its child (``sleep``) lives on in the group: what the parent-death
    signal leaves when it takes down only the leader. Returns the recorded group and the orphan's pid."""
    proc = spawned.group("sleep 3191 & echo $!")
    ticks = process_start_ticks(proc.pid)
    assert proc.stdout is not None
    orphan = int(proc.stdout.readline())
    spawned.pids.append(orphan)
    assert proc.wait(timeout=10) == 0  # the leader is gone (reaped)
    assert _alive(orphan) and [m[0] for m in group_members(proc.pid)] == [orphan]
    return ExecGroup(proc.pid, ticks), orphan


# ---------------------------------------------------------------------------------------------
# engine.process_groups
# ---------------------------------------------------------------------------------------------


def test_a_live_group_whose_leader_matches_is_killed_whole(spawned: Spawned) -> None:
    proc = spawned.group("sleep 3192 & echo $!; wait")
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    group = ExecGroup(proc.pid, process_start_ticks(proc.pid))
    (check,) = ensure_gone([group], HERE)
    assert check.outcome == "killed" and set(check.pids) == {proc.pid, child}
    assert proc.wait(timeout=5) == -signal.SIGKILL
    _wait(lambda: not _alive(child), "the child to die")


def test_a_reused_pid_is_never_killed(spawned: Spawned) -> None:
    """The recorded start time differs from the live process's: the pid now names a later process."""
    proc = spawned.group("exec sleep 3193")
    ticks = process_start_ticks(proc.pid)
    assert ticks is not None
    (check,) = ensure_gone([ExecGroup(proc.pid, ticks - 1)], HERE)  # as if recorded for an earlier process
    assert check.outcome == "reused" and check.pids == () and check.safe
    time.sleep(0.1)
    assert proc.poll() is None  # untouched


def test_the_orphans_of_a_dead_leader_are_killed(spawned: Spawned) -> None:
    group, orphan = _leader_with_orphan(spawned)
    (check,) = ensure_gone([group], HERE)
    assert check.outcome == "killed" and check.pids == (orphan,)
    _wait(lambda: not _alive(orphan), "the orphan to die")


def test_a_group_id_reused_by_a_later_session_is_never_killed(spawned: Spawned) -> None:
    """Leader gone, but the group's processes started before the recorded leader did: they can't be its own."""
    group, orphan = _leader_with_orphan(spawned)
    assert group.start_ticks is not None
    (check,) = ensure_gone([ExecGroup(group.pgid, group.start_ticks + 10_000)], HERE)
    assert check.outcome == "reused"
    time.sleep(0.1)
    assert _alive(orphan)


def test_nothing_is_killed_for_another_machine_or_without_a_start_time(spawned: Spawned) -> None:
    proc = spawned.group("exec sleep 3194")
    group = ExecGroup(proc.pid, process_start_ticks(proc.pid))
    elsewhere = Machine("another-host", HERE.boot_id, HERE.pid_ns)
    rebooted = Machine(HERE.host, "another-boot", HERE.pid_ns)
    checks = [
        *ensure_gone([group], elsewhere),
        *ensure_gone([group], rebooted),
        *ensure_gone([group], None),
        *ensure_gone([ExecGroup(proc.pid, None)], HERE),
    ]
    assert [c.outcome for c in checks] == ["elsewhere", "elsewhere", "elsewhere", "unknown"]
    assert "another-host" in checks[0].describe() and "cannot be checked or killed" in checks[0].describe()
    time.sleep(0.1)
    assert proc.poll() is None


def test_a_group_already_gone_is_simply_gone(spawned: Spawned) -> None:
    proc = spawned.group("true")
    ticks = process_start_ticks(proc.pid)
    proc.wait()
    assert ensure_gone([ExecGroup(proc.pid, ticks)], HERE)[0].outcome == "gone"


def test_a_group_that_survives_sigkill_is_reported_alive(spawned: Spawned, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process stuck where SIGKILL can't end it in time (simulated: the kill never lands)."""
    proc = spawned.group("exec sleep 3195")
    monkeypatch.setattr("engine.process_groups.os.killpg", lambda pgid, sig: None)
    (check,) = ensure_gone([ExecGroup(proc.pid, process_start_ticks(proc.pid))], HERE, timeout_s=0.05)
    assert check.outcome == "alive" and check.pids == (proc.pid,) and not check.safe
    assert proc.poll() is None


async def test_run_process_reports_each_group_started_then_ended() -> None:
    seen: list[tuple[str, ExecGroup, bool]] = []

    class Reporter:
        async def group_started(self, group: ExecGroup) -> None:
            seen.append(("started", group, _alive(group.pgid)))  # still waiting for its stdin

        async def group_ended(self, group: ExecGroup) -> None:
            seen.append(("ended", group, os.path.exists(f"/proc/{group.pgid}")))  # reaped

    with reporting_groups_to(Reporter()):
        result = await run_process("/bin/sh", ["-c", "read x; echo $$"], stdout_limit=100, stderr_limit=100)
    await run_process("/bin/sh", ["-c", "true"], stdout_limit=10, stderr_limit=10)  # outside: not reported
    pid = int(result.stdout.data)
    assert [(kind, g.pgid, alive) for kind, g, alive in seen] == [("started", pid, True), ("ended", pid, False)]
    assert seen[0][1] == seen[1][1] and seen[0][1].start_ticks is not None


# ---------------------------------------------------------------------------------------------
# The filesystem lease: record and check
# ---------------------------------------------------------------------------------------------


def _lease_file(store: FsStore, run_id: RunId) -> dict[str, object]:
    value: dict[str, object] = json.loads((Path(store.run_dir(run_id)) / "lease").read_text())
    return value


async def test_the_lease_records_the_groups_while_they_run(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    run_id = RunId.new_v4()
    with Lease.acquire(store, run_id, "run") as lease:
        held = _lease_file(store, run_id)
        assert held["exec_groups"] == [] and held["host"] == HERE.host and held["boot_id"] == HERE.boot_id
        recorded: list[object] = []

        class Spy:  # the lease itself reports; the spy reads the file right after each report
            async def group_started(self, group: ExecGroup) -> None:
                await lease.group_started(group)
                recorded.append((group, _lease_file(store, run_id)["exec_groups"]))

            async def group_ended(self, group: ExecGroup) -> None:
                await lease.group_ended(group)
                recorded.append((group, _lease_file(store, run_id)["exec_groups"]))

        with reporting_groups_to(Spy()):
            await run_process("/bin/sh", ["-c", "true"], stdout_limit=1, stderr_limit=1)
    (group, during), (same, after) = recorded
    assert same == group and group.start_ticks is not None
    assert during == [[group.pgid, group.start_ticks]]
    assert after == []  # removed once the group ended


def _plant(store: FsStore, run_id: RunId, groups: list[list[int | None]], machine: Machine = HERE) -> None:
    """The lease file a SIGKILLed worker leaves: its holder and the groups it was running."""
    holder = {"pid": 1, "host": machine.host, "boot_id": machine.boot_id, "pid_ns": machine.pid_ns, "action": "run"}
    run_dir = Path(store.run_dir(run_id))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "lease").write_text(json.dumps({**holder, "exec_groups": groups}) + "\n")


def test_taking_the_lease_kills_the_previous_attempts_group_first(tmp_path: Path, spawned: Spawned) -> None:
    store = FsStore(tmp_path / "store")
    run_id = RunId.new_v4()
    group, orphan = _leader_with_orphan(spawned)
    _plant(store, run_id, [group.to_json()])
    with Lease.acquire(store, run_id, "resume") as lease:
        assert not _alive(orphan)
        assert [(c.group, c.outcome) for c in lease.previous] == [(group, "killed")]
        assert _lease_file(store, run_id)["exec_groups"] == []  # the new holder starts with none


def test_taking_the_lease_never_kills_a_reused_pid(tmp_path: Path, spawned: Spawned) -> None:
    store = FsStore(tmp_path / "store")
    run_id = RunId.new_v4()
    proc = spawned.group("exec sleep 3196")
    ticks = process_start_ticks(proc.pid)
    assert ticks is not None
    _plant(store, run_id, [[proc.pid, ticks + 1]])  # a fake start time: the pid names another process now
    with Lease.acquire(store, run_id, "resume") as lease:
        assert [c.outcome for c in lease.previous] == ["reused"]
    time.sleep(0.1)
    assert proc.poll() is None


def test_a_group_on_another_host_is_reported_not_killed(tmp_path: Path, spawned: Spawned) -> None:
    store = FsStore(tmp_path / "store")
    run_id = RunId.new_v4()
    proc = spawned.group("exec sleep 3197")
    _plant(store, run_id, [[proc.pid, process_start_ticks(proc.pid)]], Machine("far-away", "b", "p"))
    with Lease.acquire(store, run_id, "resume") as lease:
        (check,) = lease.previous
        assert check.outcome == "elsewhere" and "far-away" in check.describe()
    assert proc.poll() is None


def test_a_group_that_survives_sigkill_refuses_the_new_attempt(
    tmp_path: Path, spawned: Spawned, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FsStore(tmp_path / "store")
    run_id = RunId.new_v4()
    proc = spawned.group("exec sleep 3198")
    _plant(store, run_id, [[proc.pid, process_start_ticks(proc.pid)]])

    def stuck(groups: object, machine: object) -> list[GroupCheck]:
        return [GroupCheck(ExecGroup(proc.pid, 0), "alive", (proc.pid,))]

    monkeypatch.setattr("engine.workers.lease.ensure_gone", stuck)
    with pytest.raises(MfmError) as refused:
        Lease.acquire(store, run_id, "resume")
    assert refused.value.code == "previous_attempt_alive" and str(proc.pid) in refused.value.message
    monkeypatch.undo()
    with Lease.acquire(store, run_id, "resume"):  # the refused attempt released the lock
        pass


def test_the_lease_file_is_read_by_its_first_line(tmp_path: Path) -> None:
    """A rewrite writes the new line, then truncates: a crash in between leaves the old tail after a newline."""
    store = FsStore(tmp_path / "store")
    run_id = RunId.new_v4()
    with Lease.acquire(store, run_id, "run"):
        path = Path(store.run_dir(run_id)) / "lease"
        path.write_bytes(path.read_bytes() + b'garbage tail of a longer old line"]]}\n')
        info = lease_state(store, run_id)
        assert info.state is LeaseState.HELD and info.pid == os.getpid()


async def test_a_program_that_exits_at_once_still_has_its_exact_start_time() -> None:
    """The child copies its own /proc/self/stat before exec: asyncio may reap it before the owner could look."""
    seen: list[ExecGroup] = []

    class Reporter:
        async def group_started(self, group: ExecGroup) -> None:
            seen.append(group)

        async def group_ended(self, group: ExecGroup) -> None:
            pass

    with reporting_groups_to(Reporter()):
        for _ in range(30):
            await run_process("/bin/true", [], stdout_limit=1, stderr_limit=1)
    assert len(seen) == 30 and all(g.start_ticks is not None for g in seen)
