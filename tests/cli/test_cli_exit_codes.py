"""The command line tells the truth: exit codes follow the README's table (issue 13 item 12).

A finished run can't be resumed (4), a failed run is recovered once (4, naming its recovery run), a reader that goes
away ends a command quietly with 0, a full disk is ``storage_full`` (5), and ``lease_held`` names the worker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from cli_helpers import Mfm, Result, wait_until

pytestmark = pytest.mark.slow


def _error(res: Result, exit_code: int, code: str) -> str:
    assert res.code == exit_code, (res.code, res.out, res.err)
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith(f"error[{code}]: "), res.err
    return res.err_lines[0]


def test_resume_of_a_completed_or_cancelled_run_is_a_conflict(mfm: Mfm) -> None:
    done = mfm("start", "demo_big", "-p", "states=2", "--wait", "--json")
    assert done.code == 0, done.err
    run_id = done.json()["run_id"]
    for extra in ((), ("--wait",), ("--json",)):
        line = _error(mfm("resume", run_id[:8], *extra), 4, "run_already_finished")
        assert f"run {run_id} already finished (completed)" in line
    cancelled = mfm.start("demo_big", "states=2000", "delay_ms=20")
    assert mfm("cancel", cancelled).code == 0
    wait_until(lambda: mfm("show", cancelled, "--json").json()["status"] == "cancelled", what="the cancel")
    assert "(cancelled)" in _error(mfm("resume", cancelled), 4, "run_already_finished")


def test_a_failed_run_is_recovered_once(mfm: Mfm, tmp_path: Path) -> None:
    failed = mfm("start", "demo_fix", "-p", f"required_file={tmp_path / 'missing'}", "--wait", "--json")
    assert failed.code == 1, failed.err
    failed_id = failed.json()["run_id"]
    racers = [mfm.popen("resume", failed_id) for _ in range(3)]  # at once: exactly one recovery run
    results = [(p.wait(timeout=120), *p.communicate()) for p in racers]
    winners = [out for code, out, _ in results if code == 0]
    assert len(winners) == 1, results
    recovery_id = winners[0].strip().splitlines()[-1]
    for code, _, err in results:
        if code != 0:
            assert code == 4 and err.startswith(f"error[run_already_recovered]: run {failed_id} already recovered as")
            assert recovery_id in err, err
    wait_until(lambda: mfm("show", recovery_id, "--json").json()["status"] == "failed", what="the recovery to end")
    line = _error(mfm("resume", failed_id[:8]), 4, "run_already_recovered")
    assert f"already recovered as {recovery_id}" in line and f"`mfm resume {recovery_id[:8]}`" in line
    runs = mfm("runs", "--json").json()
    assert [r["run_id"] for r in runs if r.get("recovered_from") == failed_id] == [recovery_id]


def _with_closed_stdout(mfm: Mfm, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run with stdout a pipe whose reader is already gone: the first write fails (EPIPE), whatever its size."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            mfm.argv(*args), stdout=write_end, stderr=subprocess.PIPE, env=mfm.env, timeout=60, check=False
        )
    finally:
        os.close(write_end)


def test_a_reader_that_goes_away_ends_the_command_quietly(mfm: Mfm) -> None:
    run_id = mfm("start", "demo_big", "-p", "states=3", "--wait", "--json").json()["run_id"]
    for args in (
        ("events", run_id, "--json"),
        ("events", run_id, "--follow"),
        ("runs",),
        ("runs", "--json"),
        ("show", run_id),
        ("ops", "--json"),
        ("--help",),
        ("runs", "--help"),
    ):
        res = _with_closed_stdout(mfm, *args)
        assert (res.returncode, res.stderr) == (0, b""), (args, res)
    head = subprocess.run(  # and the shell's own way of saying it
        f"{subprocess.list2cmdline(mfm.argv('events', run_id, '--json'))} | head -1",
        shell=True,
        capture_output=True,
        env=mfm.env,
        timeout=60,
        check=False,
    )
    assert head.returncode == 0 and head.stderr == b"" and head.stdout.count(b"\n") == 1


_INJECT = """
import errno, os, sys
{patch}
from mfm_tui.cli import main
sys.argv[0] = "mfm"
main()
"""
_FULL_STORE = """
from engine.stores.fs._ops import FsOps
def write(self, fd, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
FsOps.write = write
"""
_FULL_LEASE = """
from engine.workers import Lease
def write(self):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
Lease._write = write
"""


@pytest.mark.parametrize("where", ["store", "lease"])
def test_a_full_disk_is_storage_full_not_a_usage_error(mfm: Mfm, where: str) -> None:
    """Fault injection in the command's process (ENOSPC from the store's writes, or from the launcher's own lease
    write); a real full tmpfs behaves the same (checked by hand: see the report)."""
    patch = _FULL_STORE if where == "store" else _FULL_LEASE
    argv = mfm.argv("start", "demo_pipeline")
    cmd = [argv[0], "-c", _INJECT.format(patch=patch), *argv[3:]]  # python -c … instead of python -m mfm_tui
    proc = subprocess.run(cmd, capture_output=True, text=True, env=mfm.env, timeout=60, check=False)
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    line = _error(res, 5, "storage_full")
    assert "No space left on device" in line and "Traceback" not in res.err


def test_lease_held_names_the_worker_not_the_competing_command(mfm: Mfm) -> None:
    run_id = mfm.start("demo_big", "states=400", "events=1", "delay_ms=50")
    wait_until(lambda: bool(mfm.read_events(run_id)), what="the first events")
    os.kill(int(mfm.lease(run_id)["pid"]), signal.SIGKILL)
    wait_until(lambda: mfm("show", run_id, "--json").json()["lease"] == "stale", what="worker lost")
    racers = [mfm.popen("resume", run_id) for _ in range(4)]
    results = [(p.pid, p.wait(timeout=120), *p.communicate()) for p in racers]
    (winner,) = [(pid, out) for pid, code, out, _ in results if code == 0]
    worker = int(re.search(r"worker pid (\d+)", winner[1]).group(1))  # type: ignore[union-attr]
    for _pid, code, _out, err in results:
        if code != 0:
            assert code == 4 and err.startswith("error[lease_held]: "), err
            named = int(re.search(r"\(pid (\d+) on ", err).group(1))  # type: ignore[union-attr]
            assert named == worker, (named, worker, winner[0], err)
    assert mfm("cancel", run_id).code == 0
