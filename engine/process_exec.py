"""An asyncio process runner for transports that execute programs (ENGINE-SPEC §15, §0.6).

``run_process`` spawns a program in its own process group (``start_new_session=True``), writes
``stdin`` and closes it, captures stdout and stderr up to a limit each (read in 8 KiB chunks; the
rest is drained and counted, never retained), and waits for the exit. The deadline starts after
the spawn and covers the stdin write/close, the reads and the wait.

On timeout, on asyncio cancellation and on any unexpected failure, the whole process group gets
SIGTERM, then SIGKILL after a grace period, and the child is reaped (``await wait()``) before the
runner returns or raises: it never leaves a zombie. Cancellation is re-raised after that cleanup.

A cancellation that lands during the spawn waits for the spawn to finish, then cleans up the
same way. (Known CPython 3.11 limit: if loop shutdown cancels *every* task, asyncio's internal
pipe-connecting task included, while a spawn is in flight, asyncio itself can hang in its own
clean-up; the runner cannot prevent that. Cancel exec calls before shutting the loop down.)

Children die with the process that started them, even when it is SIGKILLed (issue 13):

- the **group guard** (:class:`GroupGuard`, one per process, started before the first spawn) is a
  tiny helper process (``python -I -S -c … mfm-exec-guard``, its own session) that reads the
  process groups of the running children from a pipe. When the pipe reaches end of file (the owner
  exited or was killed: the kernel closes its end), it SIGKILLs every group still registered: the
  program and everything it forked (a ``sh`` script's ``sleep`` is a grandchild, which a
  parent-death signal never reaches). Before killing a group it checks, where there is a
  ``/proc``, that the leader's pid was not reused (the start time in ``/proc/<pid>/stat`` field 22,
  read at registration, must still match, or the pid must be gone).
- on Linux a ``preexec_fn`` runs in the child between ``fork`` and ``exec``: it sets
  ``PR_SET_PDEATHSIG`` = SIGKILL (``prctl`` through ``ctypes``), writes the child's own group to the
  guard (so the group is registered before the program runs at all: no window in which a
  grandchild could escape), and kills itself if the owner is already gone. The parent-death signal
  covers the leader if the guard itself was killed. It fires when the *thread* that spawned the
  child exits: asyncio spawns in the event-loop thread, which outlives every ``run_process`` on that
  loop (each awaits its reap). A set-user-ID program clears it. Elsewhere the owner registers the
  group right after the spawn returns.

  ``preexec_fn`` and threads: the child runs Python between ``fork`` and ``exec``, so a lock held by
  another thread at the fork could deadlock it. The function only calls a ``prctl`` resolved at
  import, ``os.write`` on a descriptor fixed in advance, ``os.getppid`` and ``os.kill``: no import,
  no logging, no lock. CPython re-initialises its own locks (GIL, import lock, ``threading``) in the
  child before calling it, and this module's at-fork hook only replaces its lock. The alternatives
  were worse: a wrapper program costs an interpreter start per call and turns spawn errors into exit
  codes, and ``setpriv --pdeathsig`` is not on every machine.

The group is also reported to the current context's ``engine.process_groups.GroupReporter`` (started after the
spawn, ended after the reap): the worker records it in the run's lease, so that a resume or a pool takeover can make
sure it is gone before another attempt starts, even when the guard could not kill it.

Outcomes:
- ``ProcessSpawnError``: the program could not be started (nothing to clean up);
- ``ProcessTimeoutError``: the deadline passed (child killed and reaped);
- ``ProcessWaitError``: reading the pipes or waiting failed (child killed and reaped);
- otherwise a ``ProcessResult`` (exit code or signal, captured output, stdin write/close errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal as _signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.exec_guard import child_setup, group_guard
from engine.process_groups import ExecGroup, current_reporter, process_start_ticks, start_ticks_of_stat

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_GRACE_PERIOD_S",
    "CapturedOutput",
    "OutputTap",
    "ProcessError",
    "ProcessEvent",
    "ProcessObserver",
    "ProcessResult",
    "ProcessSpawnError",
    "ProcessTimeoutError",
    "ProcessWaitError",
    "StdinFailure",
    "io_error_kind",
    "process_start_ticks",
    "run_process",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

CHUNK_SIZE = 8 * 1024
DEFAULT_GRACE_PERIOD_S = 2.0


@dataclass(frozen=True, slots=True)
class CapturedOutput:
    """One output stream: the retained bytes (at most the limit) and the total count read."""

    data: bytes
    total_bytes: int
    overflowed: bool


@dataclass(frozen=True, slots=True)
class StdinFailure:
    """An error while writing or closing the child's stdin."""

    error: OSError

    @property
    def broken_pipe(self) -> bool:
        return isinstance(self.error, BrokenPipeError | ConnectionResetError) or self.error.errno == errno.EPIPE

    @property
    def kind(self) -> str:
        return io_error_kind(self.error)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """A child that ran to its exit (normally or killed by a signal not sent by the runner)."""

    pid: int
    exit_code: int | None
    signal: int | None
    stdout: CapturedOutput
    stderr: CapturedOutput
    stdin_write_error: StdinFailure | None = None
    stdin_close_error: StdinFailure | None = None

    @property
    def success(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """What the runner did to a child, for observers (tests, monitors).

    ``kind`` is ``spawned``, ``signal_sent`` (``signal`` set) or ``reaped`` (``returncode`` set:
    negative = killed by that signal, as in ``asyncio.subprocess.Process.returncode``).
    """

    kind: str
    pid: int
    signal: int | None = None
    returncode: int | None = None


ProcessObserver = Callable[[ProcessEvent], None]

OutputTap = Callable[[str, bytes], None]
"""Sees each chunk the child writes, as it is read: ``tap("stdout" | "stderr", chunk)``, then ``b""`` once the
stream ends (a live log of the output; the result still carries what the limits kept). Its failures are logged,
never raised."""


def _notify(observer: ProcessObserver | None, event: ProcessEvent) -> None:
    """Tell the observer; its failures are logged, never allowed to break the kill/reap guarantees."""
    if observer is None:
        return
    try:
        observer(event)
    except Exception:
        _log.exception("process observer failed on %s", event)


class ProcessError(Exception):
    """Base of the runner's failures."""


class ProcessSpawnError(ProcessError):
    def __init__(self, error: BaseException) -> None:
        super().__init__(f"spawn failed: {error}")
        self.error = error


class ProcessTimeoutError(ProcessError):
    def __init__(self, pid: int, timeout_s: float) -> None:
        super().__init__(f"process {pid} timed out after {timeout_s}s")
        self.pid = pid
        self.timeout_s = timeout_s


class ProcessWaitError(ProcessError):
    def __init__(self, pid: int, error: BaseException) -> None:
        super().__init__(f"waiting for process {pid} failed: {error}")
        self.pid = pid
        self.error = error


_ERRNO_KINDS: dict[int, str] = {
    errno.EPIPE: "BrokenPipe",
    errno.ECONNRESET: "ConnectionReset",
    errno.EAGAIN: "WouldBlock",
    errno.EINTR: "Interrupted",
    errno.ENOENT: "NotFound",
    errno.EACCES: "PermissionDenied",
    errno.EPERM: "PermissionDenied",
    errno.EINVAL: "InvalidInput",
    errno.ETIMEDOUT: "TimedOut",
    errno.ENOSPC: "StorageFull",
}


def io_error_kind(error: BaseException) -> str:
    """A short, Rust ``io::ErrorKind``-like name for an OS error (never the message text)."""
    if isinstance(error, BrokenPipeError):
        return "BrokenPipe"
    if isinstance(error, ConnectionResetError):
        return "ConnectionReset"
    if isinstance(error, OSError) and error.errno is not None:
        return _ERRNO_KINDS.get(error.errno, "Other")
    return "Other"


@dataclass(slots=True)
class _Capture:
    limit: int
    chunks: list[bytes] = field(default_factory=list)
    retained: int = 0
    total: int = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - self.retained
        if room > 0:
            kept = chunk[:room]
            self.chunks.append(kept)
            self.retained += len(kept)

    def result(self) -> CapturedOutput:
        return CapturedOutput(data=b"".join(self.chunks), total_bytes=self.total, overflowed=self.total > self.limit)


async def _drain(
    stream: asyncio.StreamReader | None, capture: _Capture, tap: OutputTap | None = None, name: str = ""
) -> None:
    if stream is None:
        return
    while True:
        chunk = await stream.read(CHUNK_SIZE)
        if chunk:
            capture.feed(chunk)
        if tap is not None:
            try:
                tap(name, chunk)
            except Exception:
                _log.warning("exec output tap failed on %s; the output is still captured", name, exc_info=True)
        if not chunk:
            return


async def _feed_stdin(proc: asyncio.subprocess.Process, data: bytes) -> tuple[StdinFailure | None, StdinFailure | None]:
    """Write ``data`` and close stdin; return (write error, close error) instead of raising."""
    writer = proc.stdin
    if writer is None:
        return None, None
    write_error: StdinFailure | None = None
    close_error: StdinFailure | None = None
    try:
        if data:
            writer.write(data)
            await writer.drain()
    except OSError as exc:
        write_error = StdinFailure(exc)
    try:
        writer.close()
        # Shielded: cancelling ``wait_closed`` cancels the protocol's own close future, which
        # asyncio then fails to resolve (InvalidStateError logged from pipe_connection_lost).
        waiter = asyncio.ensure_future(writer.wait_closed())
        waiter.add_done_callback(_consume_outcome)
        await asyncio.shield(waiter)
    except OSError as exc:
        close_error = StdinFailure(exc)
    return write_error, close_error


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    """Mark a background future's exception as retrieved (it is reported elsewhere or moot)."""
    if not future.cancelled():
        future.exception()


def _signal_group(proc: asyncio.subprocess.Process, sig: int, observer: ProcessObserver | None) -> None:
    """Send ``sig`` to the child's process group (its pid: it leads its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        # The group is gone already; fall back to the leader if it is still unreaped.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, sig)
    _notify(observer, ProcessEvent("signal_sent", proc.pid, signal=sig))


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close our ends of the child's pipes.

    ``Process.wait()`` resolves only once the process has exited *and* every pipe is closed, so a
    descendant that escaped the process group while holding stdout open would otherwise delay the
    reap indefinitely. ``Process`` exposes no public handle on its transport, hence ``getattr``.
    """
    transport = getattr(proc, "_transport", None)
    if transport is None:
        return
    for fd in (0, 1, 2):
        try:
            pipe = transport.get_pipe_transport(fd)
        except (AttributeError, KeyError, TypeError):
            pipe = None
        if pipe is not None:
            pipe.close()


async def _terminate_and_reap(
    proc: asyncio.subprocess.Process,
    tasks: Sequence[asyncio.Future[Any]],
    grace_period_s: float,
    observer: ProcessObserver | None,
) -> None:
    """SIGTERM the group, stop the IO, wait up to the grace period, SIGKILL the group, then reap."""
    if proc.returncode is None:
        _signal_group(proc, _signal.SIGTERM, observer)
    # The output no longer matters, and open pipes must not hold up the reap.
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _close_pipes(proc)
    if proc.returncode is None:
        try:
            async with asyncio.timeout(grace_period_s):
                await proc.wait()
        except TimeoutError:
            pass
    if proc.returncode is None:
        _signal_group(proc, _signal.SIGKILL, observer)
    else:
        # The leader is gone; make sure nothing it started in its group outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, _signal.SIGKILL)
    returncode = await proc.wait()
    _notify(observer, ProcessEvent("reaped", proc.pid, returncode=returncode))


async def _settle(job: asyncio.Future[_T]) -> tuple[asyncio.Future[_T], bool]:
    """Wait for ``job`` to finish even if the caller is cancelled meanwhile.

    Returns the finished future and whether a cancellation arrived (the caller re-raises it).
    """
    cancelled = False
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            if job.done():
                break
            cancelled = True
        except BaseException:  # the job's own failure: read it from the future
            break
    return job, cancelled


async def _cleanup(
    proc: asyncio.subprocess.Process,
    tasks: Sequence[asyncio.Future[Any]],
    grace_period_s: float,
    observer: ProcessObserver | None,
) -> bool:
    """Kill and reap the child and stop the IO tasks, shielded from further cancellation.

    Returns True if a cancellation arrived while cleaning up (the caller re-raises it).
    """
    job, cancelled = await _settle(asyncio.ensure_future(_terminate_and_reap(proc, tasks, grace_period_s, observer)))
    job.result()
    return cancelled


async def run_process(
    program: str,
    args: Sequence[str] = (),
    *,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    stdout_limit: int,
    stderr_limit: int,
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S,
    observer: ProcessObserver | None = None,
    tap: OutputTap | None = None,
) -> ProcessResult:
    """Run ``program args…`` to completion; see the module docstring for the guarantees.

    ``env`` is the child's complete environment (``None`` = inherit). ``timeout_s`` ``None`` means
    no deadline. Limits are per stream, in bytes. ``tap`` sees the output as it is read.
    """
    if stdout_limit < 0 or stderr_limit < 0:
        raise ValueError("output limits must be non-negative")
    # The spawn is shielded: asyncio's own clean-up of a cancelled spawn SIGKILLs only the leader
    # and may wait on pipes held by its descendants. A cancellation during the spawn waits for it
    # to settle, then goes through the same group SIGTERM → SIGKILL → reap as any other.
    stat_read, stat_write = os.pipe()  # the child's /proc/self/stat, written before it runs anything
    try:
        spawn_task = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                program,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=None if env is None else dict(env),
                start_new_session=True,
                preexec_fn=child_setup(group_guard().ensure(), stat_write),
            )
        )
        spawn, cancelled_during_spawn = await _settle(spawn_task)
        os.close(stat_write)
        stat_write = -1
        try:
            proc = spawn.result()
        except (OSError, ValueError, TypeError) as exc:
            if cancelled_during_spawn:
                raise asyncio.CancelledError from exc
            raise ProcessSpawnError(exc) from exc
        # Its process group (it leads its own session), with its leader's exact start time.
        group = ExecGroup(proc.pid, _start_ticks_from(stat_read, proc.pid))
    finally:
        os.close(stat_read)
        if stat_write >= 0:
            os.close(stat_write)
    group_guard().register(group.pgid, group.start_ticks)
    reporter = current_reporter()
    if reporter is not None:
        cancelled_during_spawn |= await _report(reporter.group_started, group)
    try:
        return await _supervise(
            proc, stdin, timeout_s, stdout_limit, stderr_limit, grace_period_s, observer, cancelled_during_spawn, tap
        )
    finally:
        group_guard().unregister(proc.pid)
        if reporter is not None and await _report(reporter.group_ended, group):
            raise asyncio.CancelledError


def _start_ticks_from(stat_read: int, pid: int) -> int | None:
    """The start ticks the child copied into the pipe (read at once: it wrote before ``exec``, and the spawn waits
    for the ``exec``), else read from ``/proc`` now (no ``preexec_fn`` on this platform)."""
    os.set_blocking(stat_read, False)
    try:
        data = os.read(stat_read, 4096)
    except OSError:
        data = b""
    ticks = start_ticks_of_stat(data) if data else None
    return ticks if ticks is not None else process_start_ticks(pid)


async def _report(call: Callable[[ExecGroup], Awaitable[None]], group: ExecGroup) -> bool:
    """Tell the context's :class:`~engine.process_groups.GroupReporter` (the run's lease records the group), shielded
    from cancellation so the record and the process stay in step; failures are logged. Returns whether a
    cancellation arrived meanwhile (the caller re-raises it once the child is dealt with)."""

    async def tell() -> None:
        try:
            await call(group)
        except Exception:
            _log.warning("could not record exec process group %d in the run's lease", group.pgid, exc_info=True)

    _, cancelled = await _settle(asyncio.ensure_future(tell()))
    return cancelled


async def _supervise(
    proc: asyncio.subprocess.Process,
    stdin: bytes,
    timeout_s: float | None,
    stdout_limit: int,
    stderr_limit: int,
    grace_period_s: float,
    observer: ProcessObserver | None,
    cancelled_during_spawn: bool,
    tap: OutputTap | None = None,
) -> ProcessResult:
    """Feed, drain and wait for a spawned child; kill and reap it on every way out."""
    _notify(observer, ProcessEvent("spawned", proc.pid))
    if cancelled_during_spawn:
        await _cleanup(proc, (), grace_period_s, observer)
        raise asyncio.CancelledError

    out = _Capture(stdout_limit)
    err = _Capture(stderr_limit)
    # The deadline starts now (after the spawn) and covers stdin, the reads and the wait.
    feeder = asyncio.ensure_future(_feed_stdin(proc, stdin))
    readers = [
        asyncio.ensure_future(_drain(proc.stdout, out, tap, "stdout")),
        asyncio.ensure_future(_drain(proc.stderr, err, tap, "stderr")),
    ]
    tasks: list[asyncio.Future[Any]] = [feeder, *readers]
    try:
        try:
            async with asyncio.timeout(timeout_s):
                write_error, close_error = await feeder
                await asyncio.gather(*readers)
                returncode = await proc.wait()
        except TimeoutError:
            cancelled = await _cleanup(proc, tasks, grace_period_s, observer)
            if cancelled:
                raise asyncio.CancelledError from None
            raise ProcessTimeoutError(proc.pid, timeout_s if timeout_s is not None else 0.0) from None
    except asyncio.CancelledError:
        if proc.returncode is None or not all(t.done() for t in tasks):
            await _cleanup(proc, tasks, grace_period_s, observer)
        raise
    except ProcessTimeoutError:
        raise
    except (OSError, ValueError) as exc:
        cancelled = await _cleanup(proc, tasks, grace_period_s, observer)
        if cancelled:
            raise asyncio.CancelledError from exc
        raise ProcessWaitError(proc.pid, exc) from exc
    except BaseException:
        await _cleanup(proc, tasks, grace_period_s, observer)
        raise

    _notify(observer, ProcessEvent("reaped", proc.pid, returncode=returncode))
    return ProcessResult(
        pid=proc.pid,
        exit_code=returncode if returncode >= 0 else None,
        signal=-returncode if returncode < 0 else None,
        stdout=out.result(),
        stderr=err.result(),
        stdin_write_error=write_error,
        stdin_close_error=close_error,
    )
