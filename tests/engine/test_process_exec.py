"""The process runner (engine/process_exec.py): CONFORMANCE K80 and its kill/reap guarantees."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from engine.process_exec import (
    CHUNK_SIZE,
    ProcessEvent,
    ProcessSpawnError,
    ProcessTimeoutError,
    io_error_kind,
    run_process,
)
from tests.engine.process_helpers import Bg, assert_gone

SH = "/bin/sh"


class Recorder:
    def __init__(self) -> None:
        self.events: list[ProcessEvent] = []

    def __call__(self, event: ProcessEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[tuple[str, int | None]]:
        return [(e.kind, e.signal if e.kind == "signal_sent" else e.returncode) for e in self.events]

    @property
    def pid(self) -> int:
        return next(e.pid for e in self.events if e.kind == "spawned")


async def sh(code: str, **kwargs: Any) -> Any:
    kwargs.setdefault("stdout_limit", 1 << 20)
    kwargs.setdefault("stderr_limit", 1 << 20)
    return await run_process(SH, ["-c", code], **kwargs)


async def test_k80_output_over_limit_is_drained_and_counted() -> None:
    """K80: limit 1024, program emitting 16,384 bytes → success, overflowed, 1024 retained, total counted."""
    result = await sh("head -c 16384 /dev/zero", stdout_limit=1024, stderr_limit=1024)
    assert result.exit_code == 0
    assert result.success
    assert result.stdout.overflowed is True
    assert len(result.stdout.data) == 1024
    assert result.stdout.total_bytes == 16384
    assert result.stderr.overflowed is False
    assert result.stderr.total_bytes == 0


async def test_k80_stdin_4mib_to_looping_program_times_out() -> None:
    """K80: 4 MiB of stdin to a looping program with a 20 ms timeout → Timeout (child killed and reaped)."""
    rec = Recorder()
    with pytest.raises(ProcessTimeoutError) as err:
        await sh("while :; do :; done", stdin=b"a" * (4 << 20), timeout_s=0.02, observer=rec)
    assert err.value.pid == rec.pid
    assert rec.kinds()[-1][0] == "reaped"
    assert_gone(rec.pid)


async def test_output_exactly_at_limit_is_not_overflow() -> None:
    result = await sh(f"head -c {3 * CHUNK_SIZE} /dev/zero", stdout_limit=3 * CHUNK_SIZE)
    assert result.stdout.overflowed is False
    assert result.stdout.total_bytes == len(result.stdout.data) == 3 * CHUNK_SIZE


async def test_stdin_is_delivered_and_closed_and_output_captured() -> None:
    result = await sh("tr a-z A-Z; echo err >&2", stdin=b"hello")
    assert result.stdout.data == b"HELLO"
    assert result.stderr.data == b"err\n"
    assert result.stdin_write_error is None
    assert result.stdin_close_error is None


async def test_exit_code_and_signal() -> None:
    failed = await sh("exit 42")
    assert (failed.exit_code, failed.signal, failed.success) == (42, None, False)
    killed = await sh("kill -9 $$")
    assert (killed.exit_code, killed.signal) == (None, signal.SIGKILL)


async def test_env_is_the_complete_environment() -> None:
    result = await run_process(
        SH, ["-c", 'printf "%s|%s" "$ONLY" "$HOME"'], env={"ONLY": "1"}, stdout_limit=100, stderr_limit=100
    )
    assert result.stdout.data == b"1|"


async def test_broken_pipe_is_reported_not_raised() -> None:
    result = await sh("exit 0", stdin=b"z" * (1 << 20))
    assert result.exit_code == 0
    failure = result.stdin_write_error or result.stdin_close_error
    assert failure is not None
    assert failure.broken_pipe
    assert failure.kind in ("BrokenPipe", "ConnectionReset")


async def test_spawn_failure() -> None:
    with pytest.raises(ProcessSpawnError):
        await run_process("/nonexistent/program", stdout_limit=1, stderr_limit=1)
    with pytest.raises(ProcessSpawnError):
        await run_process(SH, ["-c", "true"], env={"BAD\0NAME": "x"}, stdout_limit=1, stderr_limit=1)


async def test_negative_limits_rejected() -> None:
    with pytest.raises(ValueError):
        await run_process(SH, ["-c", "true"], stdout_limit=-1, stderr_limit=0)


async def test_cleanup_reaches_the_whole_process_group(tmp_path: Path, bg: Bg) -> None:
    """A grandchild in the child's process group is signalled too (it would otherwise hold the pipes)."""
    rec = Recorder()
    pid_file = tmp_path / "grandchild.pid"
    code = f"sleep 60 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait"
    task = bg(sh(code, grace_period_s=5.0, observer=rec))
    grandchild = await _started(pid_file, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.kinds()[1:] == [("signal_sent", signal.SIGTERM), ("reaped", -signal.SIGTERM)]
    # The grandchild is not ours to reap (init is); it must be dead: gone, or a zombie awaiting init.
    for _ in range(400):
        try:
            text = Path(f"/proc/{grandchild}/status").read_text()
        except FileNotFoundError:
            break
        state = next(line for line in text.splitlines() if line.startswith("State:"))
        if "Z" in state or "X" in state:
            break
        await asyncio.sleep(0.005)
    else:
        raise AssertionError("the grandchild survived the process-group SIGTERM")


async def _started(pid_file: Path, task: asyncio.Task[Any]) -> int:
    for _ in range(2000):
        if pid_file.exists():
            return int(pid_file.read_text())
        assert not task.done()
        await asyncio.sleep(0.005)
    raise AssertionError("child never started")


async def test_cancellation_terminates_reaps_and_reraises(tmp_path: Path, bg: Bg) -> None:
    rec = Recorder()
    pid_file = tmp_path / "c.pid"
    task = bg(sh(f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; sleep 60", grace_period_s=5.0, observer=rec))
    pid = await _started(pid_file, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.kinds() == [("spawned", None), ("signal_sent", signal.SIGTERM), ("reaped", -signal.SIGTERM)]
    assert_gone(pid)


async def test_cancellation_escalates_to_sigkill_after_grace(tmp_path: Path, bg: Bg) -> None:
    rec = Recorder()
    pid_file = tmp_path / "k.pid"
    code = f"trap '' TERM; echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; sleep 60"
    task = bg(sh(code, grace_period_s=0.1, observer=rec))
    pid = await _started(pid_file, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.kinds()[1:] == [
        ("signal_sent", signal.SIGTERM),
        ("signal_sent", signal.SIGKILL),
        ("reaped", -signal.SIGKILL),
    ]
    assert_gone(pid)


async def test_repeated_cancellation_during_cleanup_still_reaps(tmp_path: Path, bg: Bg) -> None:
    """A second cancel while the runner waits out the grace period does not abandon the child."""
    rec = Recorder()
    pid_file = tmp_path / "r.pid"
    code = f"trap '' TERM; echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; sleep 60"
    task = bg(sh(code, grace_period_s=0.2, observer=rec))
    pid = await _started(pid_file, task)
    task.cancel()
    for _ in range(200):  # wait until the runner has sent SIGTERM, then cancel again
        if any(e.kind == "signal_sent" for e in rec.events):
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.kinds()[-1] == ("reaped", -signal.SIGKILL)
    assert_gone(pid)


def test_io_error_kind_names() -> None:
    assert io_error_kind(BrokenPipeError()) == "BrokenPipe"
    assert io_error_kind(ConnectionResetError()) == "ConnectionReset"
    assert io_error_kind(PermissionError(13, "denied")) == "PermissionDenied"
    assert io_error_kind(OSError(9999, "odd")) == "Other"
    assert io_error_kind(ValueError("x")) == "Other"


async def test_failing_observer_does_not_break_the_guarantees(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[ProcessEvent] = []

    def explode(event: ProcessEvent) -> None:
        seen.append(event)
        raise RuntimeError("observer bug")

    result = await sh("printf ok", observer=explode)
    assert result.stdout.data == b"ok"
    with pytest.raises(ProcessTimeoutError):
        await sh("while :; do :; done", timeout_s=0.02, observer=explode)
    assert [e.kind for e in seen][-1] == "reaped"
    assert_gone(seen[-1].pid)
    assert "process observer failed" in caplog.text


async def test_cancel_during_spawn_still_kills_the_group_and_reaps(
    bg: Bg,
) -> None:
    """A cancellation that lands while the spawn is in flight waits for it, then SIGTERMs and reaps."""
    rec = Recorder()
    task = bg(sh("sleep 60", grace_period_s=5.0, observer=rec))
    await asyncio.sleep(0)  # the task is now inside the spawn
    assert rec.events == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.kinds() == [("spawned", None), ("signal_sent", signal.SIGTERM), ("reaped", -signal.SIGTERM)]
    assert_gone(rec.pid)


async def test_reap_is_not_held_up_by_a_descendant_outside_the_group(tmp_path: Path, bg: Bg) -> None:
    """A descendant that left the process group (setsid) but holds stdout open does not block the reap."""
    rec = Recorder()
    pid_file = tmp_path / "escapee.pid"
    code = (
        f"setsid sh -c 'echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 60' & "
        f"while [ ! -e {pid_file} ]; do sleep 0.01; done; exec sleep 60"
    )
    task = bg(sh(code, grace_period_s=5.0, observer=rec))
    escapee = await _started(pid_file, task)
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rec.kinds()[1:] == [("signal_sent", signal.SIGTERM), ("reaped", -signal.SIGTERM)]
        assert_gone(rec.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(escapee, signal.SIGKILL)
