"""The worker's output guard (engine.workers.log_guard; issue 13 item 7): descriptors 1 and 2 pass the secrets
guard, a SIGKILLed worker loses nothing it wrote, and a dead guard means dropped output, never unguarded output."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.secrets import WITHHELD

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, /proc")

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, body: str, *, separate: bool = False) -> tuple[int, str, str]:
    """Run ``body`` after ``guard_stdio()`` in a child whose stdout/stderr are files (one shared file, or two)."""
    script = "import os, signal, sys, time\nfrom engine.workers.log_guard import guard_stdio\nhelper = guard_stdio()\n"
    out, err = tmp_path / "out.log", tmp_path / ("err.log" if separate else "out.log")
    with open(out, "ab") as o, open(err, "ab") as e:
        proc = subprocess.run(
            [sys.executable, "-c", script + textwrap.dedent(body)],
            stdout=o,
            stderr=e if separate else o,
            env=dict(os.environ, PYTHONPATH=str(ROOT), OUT=str(out)),
            timeout=60,
            check=False,
        )
    wait_for_helper(out)
    return proc.returncode, out.read_text(), err.read_text()


def wait_for_helper(path: Path) -> None:
    """The helper writes after the child is gone at a SIGKILL: wait until no process holds the file open (each
    /proc/*/fd link is checked)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        holders = []
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            try:
                holders += [p for p in fd_dir.iterdir() if os.readlink(p) == str(path)]
            except OSError:
                continue
        if not holders:
            return
        time.sleep(0.02)
    raise AssertionError(f"something still holds {path}")


def test_print_os_write_and_a_traceback_are_guarded_in_order(tmp_path: Path) -> None:
    code, log, _ = _run(
        tmp_path,
        """
        print("one", flush=True)
        os.write(1, b"api_key=hunter2\\n")
        os.write(2, b"two\\n")
        raise SystemExit("password=hunter3")
        """,
    )
    assert code == 1
    assert log == f"one\n{WITHHELD}\ntwo\n{WITHHELD}\n"


def test_a_sigkilled_process_loses_nothing_it_wrote(tmp_path: Path) -> None:
    code, log, _ = _run(
        tmp_path,
        """
        for i in range(2000):
            os.write(1, b"line %d\\n" % i)
        os.write(2, b"refresh_token=hunter4\\n")
        os.write(1, b"last words")
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert code == -9
    assert log == "".join(f"line {i}\n" for i in range(2000)) + f"{WITHHELD}\nlast words"


def test_separate_files_keep_separate_streams(tmp_path: Path) -> None:
    code, out, err = _run(tmp_path, 'print("to out")\nprint("secret_key=x", file=sys.stderr)\n', separate=True)
    assert (code, out, err) == (0, "to out\n", f"{WITHHELD}\n")


def test_a_killed_guard_means_dropped_output_never_unguarded(tmp_path: Path) -> None:
    code, log, _ = _run(
        tmp_path,
        """
        print("before", flush=True)
        deadline = time.monotonic() + 30
        while "before" not in open(os.environ["OUT"]).read() and time.monotonic() < deadline:
            time.sleep(0.01)  # written by the helper: only then is it killed
        os.kill(helper, signal.SIGKILL)
        while os.readlink("/proc/self/fd/1") != "/dev/null" and time.monotonic() < deadline:
            time.sleep(0.01)
        print("password=hunter5 after", flush=True)
        print("clean after", flush=True)
        """,
    )
    assert code == 0
    assert log == "before\n[mfm: the output guard died; this worker's further output is dropped]\n"
