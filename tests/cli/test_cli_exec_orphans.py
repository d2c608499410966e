"""A SIGKILLed worker takes its exec program with it (issue 13 item 1), seen from outside through the CLI."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from cli_helpers import Mfm, live_pids_with, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_sigkilled_worker_mid_exec_leaves_no_program_behind(mfm: Mfm) -> None:
    marker = "sleep 594"  # the demo's program runs `sleep <exec_seconds>` in a child of `sh`
    run_id = mfm.start("demo_pipeline", "exec_seconds=594")
    wait_until(lambda: bool(live_pids_with(marker)), timeout=60, what="the exec program")
    worker = int(mfm.lease(run_id)["pid"])
    # The worker's children: the program's `sh` (and the exec group guard); the `sleep` is a grandchild.
    started = [*_children(worker), *live_pids_with(marker)]
    assert any(p in _children(worker) for p in started)
    try:
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: not live_pids_with(marker), timeout=5, what="the program's `sleep` to die with its worker")
        wait_until(lambda: not any(_alive(p) for p in started), timeout=5, what="every child of the worker to die")
    finally:
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_resume_kills_the_previous_attempts_program_before_starting_again(mfm: Mfm) -> None:
    """The lease records the program's process group; `mfm resume` makes sure it is gone before the new attempt.

    The group guard is SIGKILLed first, so nothing kills the program with its worker except the parent-death signal,
    which reaches only the group leader (`sh`): its forked `sleep` lives on in the group, as after any death of the
    guard. Then `mfm resume` must kill that `sleep` before the second attempt runs it again."""
    marker = "sleep 593"
    run_id = mfm.start("demo_pipeline", "exec_seconds=593")
    wait_until(lambda: bool(live_pids_with(marker)), timeout=60, what="the exec program")
    holder = mfm.lease(run_id)
    worker = int(holder["pid"])
    ((pgid, _ticks),) = holder["exec_groups"]  # recorded while it runs
    (old_sleep,) = live_pids_with(marker)
    guards = [p for p in _children(worker) if "mfm-exec-guard" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(guards) == 1
    try:
        os.kill(guards[0], signal.SIGKILL)
        wait_until(lambda: not _alive(guards[0]), timeout=5, what="the guard to die")
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: not _alive(worker) and not _alive(pgid), timeout=5, what="the worker and `sh` to die")
        assert _alive(old_sleep), "precondition: the program's `sleep` outlived its worker"

        res = mfm("resume", run_id)
        assert res.code == 0, res.err
        assert not _alive(old_sleep)  # gone before `mfm resume` even returned, so before the new worker started
        assert f"killed process group {pgid} left by the previous attempt (pids {old_sleep})" in res.err
        wait_until(lambda: bool(live_pids_with(marker)), timeout=60, what="the second attempt's program")
        assert live_pids_with(marker) != [old_sleep] and len(live_pids_with(marker)) == 1  # only one copy runs
        log = (mfm.store / "runs" / run_id / "worker.log").read_text()
        assert f"killed process group {pgid}" in log
        new_holder = mfm.lease(run_id)
        assert new_holder["pid"] != worker and [g[0] for g in new_holder["exec_groups"]] != [pgid]
    finally:
        for pid in [old_sleep, *live_pids_with(marker)]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
