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
