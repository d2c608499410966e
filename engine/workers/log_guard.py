"""The worker's output guard: whatever a worker process writes to its stdout and stderr reaches them (a detached
worker's ``runs/<id>/worker.log``) only through the secrets guard (ENGINE-SPEC §12, :mod:`engine.secrets`).

That covers the worker's own lines, a handler's ``print()`` and ``os.write(1, …)``, a C extension's writes, a
subprocess that inherits the descriptors, tracebacks and Python's last words (a ``SystemExit`` message is printed
after ``main`` returns): :func:`guard_stdio` works on descriptors 1 and 2, not on ``sys.stdout``. It

1. forks a small helper (``mfm-log-guard`` in ``ps -o comm``) that keeps the real destinations and reads two pipes
   (one when stdout and stderr share a file, as in ``worker.log``: their order is kept), passing every line through
   :class:`engine.secrets.LineRedactor`: a line that looks secret is replaced by a marker before anything is
   written, so the secret never reaches the disk;
2. points descriptors 1 and 2 of the worker at the pipes.

The helper ignores SIGTERM, SIGINT and SIGHUP and leaves at end of file, once every writer is gone: a SIGKILLed
worker loses nothing it had written (the helper drains the pipe), a SIGKILL of the whole process group loses at most
what was still in the pipe. At a normal exit the worker waits (a little) until the helper has read all it wrote.
Should the helper die first, the worker points 1 and 2 at ``/dev/null``: output is dropped, never written
unguarded. The exec transport's captured stdout/stderr do not pass here: they are the programs' own pipes, stored as
artifacts through the store's guard.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import ctypes
import fcntl
import os
import selectors
import signal
import sys
import termios
import threading
import time

from engine.secrets import LineRedactor

__all__ = ["GUARD_NAME", "guard_stdio"]

GUARD_NAME = b"mfm-log-guard"
_DRAIN_TIMEOUT_S = 5.0
_PR_SET_NAME = 15


def guard_stdio() -> int | None:
    """Route descriptors 1 and 2 of this process through the output guard; return the helper's pid.

    ``None`` (and nothing changed) when they can't be: a descriptor is closed, or ``fork`` failed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return None
    shared = (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)
    dest_out = os.dup(1)
    dest_err = dest_out if shared else os.dup(2)
    pipes = [os.pipe()] if shared else [os.pipe(), os.pipe()]
    try:
        pid = os.fork()
    except OSError:
        for fd in {dest_out, dest_err, *(fd for pair in pipes for fd in pair)}:
            os.close(fd)
        return None
    if pid == 0:  # the helper
        try:
            _pump([(pipes[0][0], dest_out)] if shared else [(pipes[0][0], dest_out), (pipes[1][0], dest_err)])
        finally:
            os._exit(0)
    os.dup2(pipes[0][1], 1)
    os.dup2(pipes[-1][1], 2)
    for read_fd, write_fd in pipes:
        os.close(read_fd)
        os.close(write_fd)
    if dest_err != dest_out:
        os.close(dest_err)
    os.set_inheritable(dest_out, False)
    _Watch(pid, dest_out).start()
    return pid


class _Watch:
    """In the worker: reaps the helper; if it dies while the worker runs, output goes to ``/dev/null``."""

    def __init__(self, pid: int, note_fd: int) -> None:
        self.pid = pid
        self.note_fd = note_fd
        self.closing = False
        self.thread = threading.Thread(target=self._wait, name="mfm-log-guard-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()
        atexit.register(self.close)

    def _wait(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        if not self.closing:
            _to_devnull()
            with contextlib.suppress(OSError):
                os.write(self.note_fd, b"[mfm: the output guard died; this worker's further output is dropped]\n")

    def close(self) -> None:
        """At exit: let the helper read everything written so far (a little wait, bounded), so that once this
        process is gone (its lease free) its log is complete. Our ends stay open: what Python still prints while
        it shuts down passes the guard too, and the helper leaves when the kernel closes them."""
        self.closing = True
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while _unread(1) + _unread(2) > 0 and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)


def _unread(fd: int) -> int:
    """Bytes written to the pipe behind ``fd`` and not read yet (0 when unknown)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return 0
    return buf[0]


def _to_devnull() -> None:
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.dup2(null, fd)
    os.close(null)


def _pump(routes: list[tuple[int, int]]) -> None:
    """The helper: read each pipe, write its judged lines to its destination, until every pipe is at its end."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    keep = sorted({fd for route in routes for fd in route})
    low = 0
    for fd in keep:  # nothing else stays open here: the pipes' write ends above all (else no end of file)
        os.closerange(low, fd)
        low = fd + 1
    try:
        high = os.sysconf("SC_OPEN_MAX")
    except (AttributeError, ValueError, OSError):
        high = 65536
    os.closerange(low, max(high, low + 1))
    with contextlib.suppress(Exception):  # a name for `ps -o comm` (Linux)
        ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(GUARD_NAME), 0, 0, 0)
    selector = selectors.DefaultSelector()
    for read_fd, dest in routes:
        selector.register(read_fd, selectors.EVENT_READ, (dest, LineRedactor()))
    while selector.get_map():
        for key, _ in selector.select():
            dest, redactor = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                _write_all(dest, redactor.feed(chunk))
            else:
                _write_all(dest, redactor.finish())
                selector.unregister(key.fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write everything, or drop it on an error (a full disk must not stall the worker behind a full pipe)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return
