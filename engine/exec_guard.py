"""The exec group guard: children of an exec transport die with the process that started them.

Split from :mod:`engine.process_exec` (which spawns the programs and reads their output): this module keeps the
machinery that makes sure an exec program and its descendants never outlive their worker.

- The **group guard** (:class:`GroupGuard`, one per process, started before the first spawn) is a tiny helper
  process (``python -I -S -c … mfm-exec-guard``, its own session) that reads the write end of a close-on-exec pipe
  held by its owner; at end of file (the owner died, even by SIGKILL) it SIGKILLs every registered process group,
  unless the group's leader pid now belongs to a later process (start ticks, ``/proc/<pid>/stat`` field 22).
  Groups 0 and 1, its own and the owner's are never killed.
- :func:`child_setup` is the ``preexec_fn`` (Linux): it arms ``PR_SET_PDEATHSIG=SIGKILL`` and registers the
  child's group with the guard before the program runs, so no grandchild can escape in between.

See :mod:`engine.process_exec`'s docstring for why a ``preexec_fn`` is acceptable here.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal as _signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import cast

from engine.process_groups import process_start_ticks

__all__ = ["GUARD_MARKER", "GroupGuard", "child_setup", "group_guard"]

_log = logging.getLogger(__name__)


# The guard's whole program. It runs under ``python -I -S`` (no site, no user paths), so it imports
# only builtin modules and can't depend on this package being importable. Lines on stdin:
# ``+<pgid> <start ticks>`` (``-1``: read them now) and ``-<pgid>``; its last argument is the
# owner's process group, never killed.
_GUARD_SOURCE = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)


def stat_fields(pid):
    # Fields 3… of /proc/<pid>/stat (field 2, the name, may hold spaces and parentheses), or None.
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def start_ticks(pid):
    fields = stat_fields(pid)
    try:
        return int(fields[19])
    except (TypeError, IndexError, ValueError):
        return -1


def reused(pgid, ticks):
    # True when the leader's pid now names a later process that leads a group of that id.
    fields = stat_fields(pgid)
    try:
        return ticks >= 0 and int(fields[19]) != ticks and int(fields[2]) == pgid
    except (TypeError, IndexError, ValueError):
        return False


groups = {}
pending = b""
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    except OSError:
        break
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\n")
    for line in lines:
        try:
            words = line.split()
            pgid = int(words[0][1:])
            if line[:1] == b"+":
                ticks = int(words[1])
                groups[pgid] = ticks if ticks >= 0 else start_ticks(pgid)
            elif line[:1] == b"-":
                groups.pop(pgid, None)
        except (IndexError, ValueError):
            pass

# Only a child's own group: never 0 or 1, nor this guard's group, nor its owner's.
spared = {os.getpgrp(), os.getpid(), int(sys.argv[-1])}
for pgid, ticks in groups.items():
    if pgid > 1 and pgid not in spared and not reused(pgid, ticks):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
"""

GUARD_MARKER = "mfm-exec-guard"
"""The guard's first argument, so ``ps`` shows what it is."""


class GroupGuard:
    """Kills the registered process groups when this process dies (see the module docstring).

    The owner keeps the write end of a pipe (close-on-exec, so no program inherits it); the guard
    process reads ``+<pgid> <start ticks>`` / ``-<pgid>`` lines from the read end. On Linux each
    child registers itself from its ``preexec_fn``, before it runs anything, so nothing it forks
    can escape; the owner registers it again after the spawn (that copy is what a restarted guard
    is told). A guard that died is restarted on the next spawn, on the same descriptor number.
    Failures to start or feed the guard are logged, never raised: the runner works without it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._owner = os.getpid()
        self._groups: dict[int, int] = {}

    @property
    def pid(self) -> int | None:
        """The guard's pid while one is running (for tests and diagnostics)."""
        proc = self._proc
        return None if proc is None or proc.poll() is not None else proc.pid

    def ensure(self) -> int | None:
        """Start the guard if none is running; the descriptor children write their ``+`` line to."""
        with self._lock:
            self._check_owner()
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            return self._fd

    def register(self, pgid: int, start_ticks: int | None = None) -> None:
        """Guard the process group ``pgid`` (its leader's pid); ``start_ticks`` defaults to the leader's
        start time read now (:func:`process_start_ticks`; unknown → no pid-reuse check)."""
        if pgid <= 1 or pgid in (os.getpid(), os.getpgrp()):
            raise ValueError(f"refusing to guard process group {pgid}: not a child's own group")
        ticks = process_start_ticks(pgid) if start_ticks is None else start_ticks
        with self._lock:
            self._check_owner()
            self._groups[pgid] = -1 if ticks is None else ticks
            if self._fd is None or not self._send(f"+{pgid} {self._groups[pgid]}\n"):
                self._start()

    def unregister(self, pgid: int) -> None:
        with self._lock:
            self._check_owner()
            if self._groups.pop(pgid, None) is not None and self._fd is not None:
                self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Close the pipe and wait briefly for the guard to leave (at interpreter exit)."""
        with self._lock:
            self._check_owner()
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _log.warning("exec group guard %d did not exit; leaving it", proc.pid)

    def reset_lock_after_fork(self) -> None:
        """``os.register_at_fork`` hook: a lock held by another thread at the fork stays held forever.

        Nothing else: the hook also runs in a spawning child before its ``preexec_fn``, which still
        needs the descriptor. A forked copy of the owner drops the owner's guard on first use.
        """
        self._lock = threading.Lock()

    def _check_owner(self) -> None:
        if os.getpid() != self._owner:  # a forked copy: the parent's guard is not ours to feed
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = None
            self._proc = None
            self._groups = {}
            self._owner = os.getpid()

    def _send(self, line: str) -> bool:
        assert self._fd is not None
        data = line.encode("ascii")
        try:
            # Lines are far below PIPE_BUF, so each write is atomic; the guard drains the pipe
            # continuously, and a non-blocking pipe never stalls the event loop if it doesn't.
            return os.write(self._fd, data) == len(data)
        except OSError:
            return False

    def _start(self) -> None:
        """Start a guard (reaping a dead one first) and tell it every registered group."""
        if self._proc is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait(timeout=1)
            self._proc = None
        if not sys.executable:
            _log.warning("no Python executable to run the exec group guard; children may outlive a crash")
            return
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            _log.warning("could not start the exec group guard: %s", exc)
            return
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD_SOURCE, GUARD_MARKER, str(os.getpgrp())],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            os.close(write_fd)
            _log.warning("could not start the exec group guard: %s", exc)
            return
        finally:
            os.close(read_fd)
        os.set_blocking(write_fd, False)
        if self._fd is None:
            self._fd = write_fd
        else:
            # Same number as before (atomically): a preexec_fn made earlier writes to the new guard.
            os.dup2(write_fd, self._fd, inheritable=False)
            os.close(write_fd)
        for pgid, ticks in self._groups.items():
            if not self._send(f"+{pgid} {ticks}\n"):
                _log.warning("could not feed the exec group guard %d", self._proc.pid)
                break


_GUARD = GroupGuard()
os.register_at_fork(after_in_child=_GUARD.reset_lock_after_fork)
atexit.register(_GUARD.close)


def group_guard() -> GroupGuard:
    """This process's group guard (the one :func:`run_process` registers its children with)."""
    return _GUARD


_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[[int, int, int, int, int], int] | None:
    """libc's ``prctl`` (Linux only), resolved once at import so the child never looks it up."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    prctl.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int, int], int]", prctl)


_PRCTL = _load_prctl()


def child_setup(guard_fd: int | None, stat_fd: int | None = None) -> Callable[[], None] | None:
    """The ``preexec_fn`` (Linux): arm SIGKILL on parent death, copy ``/proc/self/stat`` to ``stat_fd`` (so the
    owner learns the child's exact start time even if the child is reaped before it can look), then register with
    the guard.

    None where there is no ``prctl``: there the owner registers the child after the spawn.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()
    getpid, getppid, kill, write, sigkill = os.getpid, os.getppid, os.kill, os.write, int(_signal.SIGKILL)
    open_, read, close, rdonly = os.open, os.read, os.close, os.O_RDONLY

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if stat_fd is not None:
            try:
                fd = open_(b"/proc/self/stat", rdonly)
                try:
                    write(stat_fd, read(fd, 1024))  # far below PIPE_BUF: one write into an empty pipe
                finally:
                    close(fd)
            except OSError:
                pass
        if guard_fd is not None:
            try:  # noqa: SIM105 (no context manager objects between fork and exec)
                write(guard_fd, b"+%d -1\n" % getpid())
            except OSError:
                pass
        if getppid() != parent:  # the parent died before the signal was armed
            kill(getpid(), sigkill)

    return setup
