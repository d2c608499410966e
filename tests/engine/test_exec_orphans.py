"""Exec children die with the process that started them (issue 13 item 1, ENGINE-SPEC §0.6).

A parent process runs ``sh -c …`` through ``engine.process_exec.run_process`` and is then SIGKILLed:
nothing it started through the runner may outlive it, neither the program (the group leader) nor a
grandchild the program forked (``sleep`` after ``;`` runs in a forked child of ``sh``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.exec_guard import GUARD_MARKER, GroupGuard, group_guard
from engine.process_exec import process_start_ticks, run_process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG")

ROOT = Path(__file__).resolve().parents[2]

PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from engine.process_exec import run_process

    async def main() -> None:
        await run_process("/bin/sh", ["-c", sys.argv[1]], stdout_limit=1024, stderr_limit=1024, timeout_s=120)

    asyncio.run(main())
    """
)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3… of ``/proc/<pid>/stat`` (after the command name), or None when the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    """Not gone and not a zombie (a dead child of init that nobody reaped yet counts as dead)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes()).replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _live_with(marker: str, parent: int) -> list[int]:
    """Live processes other than ``parent`` whose command line contains ``marker``."""
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [p for p in pids if p != parent and marker in _cmdline(p) and _alive(p)]


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


class Parents:
    """Starts parent processes; at teardown kills them and every pid noted in ``extra``."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[subprocess.Popen[bytes]] = []
        self.extra: list[int] = []

    def __call__(self, script: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", PARENT, script], env=env, cwd=self.cwd)
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for pid in self.extra:  # never leave a sleeper behind, whatever the outcome
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def spawn_parent(tmp_path: Path) -> Iterator[Parents]:
    parents = Parents(tmp_path)
    yield parents
    parents.cleanup()


def _read_pid(path: Path, parent: subprocess.Popen[bytes]) -> int:
    _wait_for(lambda: path.exists() or parent.poll() is not None, 30, f"{path.name}")
    assert parent.poll() is None, "the parent exited early"
    return int(path.read_text())


def _pid_file_script(tmp_path: Path, body: str) -> str:
    return f"echo $$ > {tmp_path}/leader.tmp && mv {tmp_path}/leader.tmp {tmp_path}/leader; {body}"


def test_sigkilled_parent_takes_the_program_and_its_grandchild_with_it(tmp_path: Path, spawn_parent: Parents) -> None:
    # `sleep` after `&` and before `wait` is a grandchild of the parent, in the program's process group.
    script = _pid_file_script(
        tmp_path, f"sleep 3171 & echo $! > {tmp_path}/gc.tmp && mv {tmp_path}/gc.tmp {tmp_path}/gc; wait"
    )
    parent = spawn_parent(script)
    leader = _read_pid(tmp_path / "leader", parent)
    grandchild = _read_pid(tmp_path / "gc", parent)
    spawn_parent.extra += [leader, grandchild]
    assert _alive(leader) and _alive(grandchild)
    parent.kill()
    parent.wait()
    _wait_for(lambda: not _alive(leader) and not _alive(grandchild), 5, "the program and its grandchild to die")


def test_sigkilled_parent_takes_a_plain_sh_sleep_with_it(tmp_path: Path, spawn_parent: Parents) -> None:
    """The brief's case: ``sh -c 'sleep 30'`` (dash execs the sleep in place; bash forks it)."""
    parent = spawn_parent("sleep 3172")
    _wait_for(lambda: bool(_live_with("sleep 3172", parent.pid)), 30, "the sleep")
    sleepers = _live_with("sleep 3172", parent.pid)  # `sh` itself, or `sh` and its forked `sleep`
    spawn_parent.extra += sleepers
    parent.kill()
    parent.wait()
    _wait_for(lambda: not any(_alive(p) for p in sleepers), 5, "the sleep to die")


def test_the_parent_death_signal_alone_kills_the_program(tmp_path: Path, spawn_parent: Parents) -> None:
    """With the group guard gone first, PR_SET_PDEATHSIG still takes the program (the group leader) down."""
    parent = spawn_parent(_pid_file_script(tmp_path, "exec sleep 3173"))
    leader = _read_pid(tmp_path / "leader", parent)
    spawn_parent.extra.append(leader)
    _wait_for(lambda: any(GUARD_MARKER in _cmdline(p) for p in _children(parent.pid)), 5, "the guard")
    guards = [p for p in _children(parent.pid) if GUARD_MARKER in _cmdline(p)]
    assert len(guards) == 1, "the runner starts one group guard per process"
    os.kill(guards[0], signal.SIGKILL)
    _wait_for(lambda: not _alive(guards[0]), 5, "the guard to die")
    assert _alive(leader)
    parent.kill()
    parent.wait()
    _wait_for(lambda: not _alive(leader), 5, "the program to die")


def test_the_guard_leaves_with_its_parent(tmp_path: Path, spawn_parent: Parents) -> None:
    """A normal exit of the parent ends the guard too (no process is left behind)."""
    parent = spawn_parent(_pid_file_script(tmp_path, "sleep 1"))
    _read_pid(tmp_path / "leader", parent)
    _wait_for(lambda: any(GUARD_MARKER in _cmdline(p) for p in _children(parent.pid)), 5, "the guard")
    guards = [p for p in _children(parent.pid) if GUARD_MARKER in _cmdline(p)]
    assert parent.wait(timeout=30) == 0
    _wait_for(lambda: not any(_alive(p) for p in guards), 5, "the guard to leave")


def test_the_guard_spares_a_group_whose_leader_pid_was_reused() -> None:
    """A group is killed only if its leader's start time still matches (or the leader is gone)."""
    sleeper = subprocess.Popen(["sleep", "3174"], start_new_session=True)
    try:
        ticks = process_start_ticks(sleeper.pid)
        assert ticks is not None
        reused = GroupGuard()
        reused.register(sleeper.pid, start_ticks=ticks + 1)  # as if the pid now named a later process
        reused.close()  # end of file: the guard kills what it must, then leaves
        assert sleeper.poll() is None
        same = GroupGuard()
        same.register(sleeper.pid)
        same.close()
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


async def test_a_killed_guard_is_replaced_on_the_next_spawn() -> None:
    await run_process("/bin/sh", ["-c", "true"], stdout_limit=10, stderr_limit=10)
    first = group_guard().pid
    assert first is not None
    _wait_for(lambda: GUARD_MARKER in _cmdline(first), 5, "the guard's command line")  # set at the end of exec
    os.kill(first, signal.SIGKILL)
    _wait_for(lambda: group_guard().pid is None, 5, "the guard to die")
    await run_process("/bin/sh", ["-c", "true"], stdout_limit=10, stderr_limit=10)
    second = group_guard().pid
    assert second is not None and second != first
