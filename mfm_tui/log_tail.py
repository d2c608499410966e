"""Following a text file like ``tail -f``, read with ``aiofiles`` so a large log never blocks the UI.

:class:`LogTail` starts at the end (the last ``initial_bytes`` of the file, whatever its size: a 100 MB worker log
shows its last lines after reading 256 KiB), then each :meth:`LogTail.read_new` returns the complete lines appended
since (a partial last line waits for its newline). A file that shrinks (truncated, replaced) is read again from its
start. No Textual here: the logs view calls it from a worker and shows what it returns.

:class:`FileWatch` says when files of one folder change, event-driven: an inotify descriptor read by the event loop
itself (``add_reader``), so nothing wakes up while nothing changes (no thread stepping every few milliseconds, no
timer) and a change is seen as soon as the kernel reports it. Linux only; elsewhere ``start`` says no and the caller
falls back to ``watchfiles`` or its timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
import aiofiles.os

__all__ = ["INITIAL_BYTES", "MAX_READ", "FileWatch", "LogTail", "TailRead"]

INITIAL_BYTES = 256 * 1024
"""How much of the end of the file the first read shows."""
MAX_READ = 4 * 1024 * 1024
"""At most this much is read per call (a burst is caught up over several polls)."""


@dataclass(frozen=True, slots=True)
class TailRead:
    lines: list[str]
    reset: bool = False
    """The file shrank: ``lines`` start again from its beginning."""
    skipped: int = 0
    """Bytes before the first line shown (the start of a large file, on the first read)."""


@dataclass
class LogTail:
    path: str
    initial_bytes: int = INITIAL_BYTES
    offset: int | None = None
    """Where the next read starts (``None``: not read yet)."""
    bytes_read: int = 0
    """Total bytes read so far (what following costs)."""
    _partial: bytes = field(default=b"", repr=False)

    async def read_new(self) -> TailRead:
        try:
            size = (await aiofiles.os.stat(self.path)).st_size
        except FileNotFoundError:
            return TailRead([])
        reset = False
        skipped = 0
        if self.offset is None:
            self.offset = max(0, size - self.initial_bytes)
            skipped = self.offset
        elif size < self.offset:
            self.offset, self._partial, reset = 0, b"", True
        if size <= self.offset:
            return TailRead([], reset)
        async with aiofiles.open(self.path, "rb") as f:
            await f.seek(self.offset)
            data = await f.read(min(size - self.offset, MAX_READ))
        self.bytes_read += len(data)
        self.offset += len(data)
        if skipped and data:  # the first read started mid-file: drop the cut first line
            cut = data.find(b"\n")
            skipped += cut + 1 if cut >= 0 else len(data)
            data = data[cut + 1 :] if cut >= 0 else b""
        data = self._partial + data
        head, sep, rest = data.rpartition(b"\n")
        self._partial = rest if sep else data
        text = head.decode("utf-8", "replace") if sep else ""
        return TailRead(text.split("\n") if sep else [], reset, skipped)


_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_WATCH_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
_GONE = _IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)


def _inotify() -> ctypes.CDLL | None:
    """The C library's inotify calls (``None``: not Linux, or no inotify)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    except (OSError, AttributeError):
        return None
    return libc


class FileWatch:
    """``await watch.wait()`` returns ``True`` once one of ``names`` in ``folder`` changed since the last call
    (written, created, replaced, deleted; ``names=None``: any file), ``False`` once the watch ended (the folder
    went, or ``close``) and no change is left to report. Changes that land while the caller works are not lost: the
    next ``wait`` returns at once.

    ``start()`` (on the running loop) says whether the watch is on; ``close()`` ends it (idempotent).
    """

    def __init__(self, folder: Path | str, names: Iterable[str] | None = None) -> None:
        self.folder = Path(folder)
        self.names = None if names is None else frozenset(os.fsencode(n) for n in names)
        self.changes = 0
        """How many times a change was reported (for tests and benchmarks)."""
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._pending = False
        """A change not yet returned by ``wait`` (kept across the end of the watch: reported once, then False)."""
        self._ended = False

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def start(self) -> bool:
        """Watch from now on; ``False`` when inotify is unavailable (not Linux, the limit of watches reached, no
        folder): the caller polls instead."""
        libc = _inotify()
        if libc is None or self._ended:
            return False
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return False
        if libc.inotify_add_watch(fd, os.fsencode(self.folder), _WATCH_MASK | _IN_ONLYDIR) < 0:
            os.close(fd)
            return False
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)
        return True

    async def wait(self) -> bool:
        """Until a change (``True``) or the end of the watch (``False``); see the class docstring."""
        while not self._pending:
            if not self.active:
                return False
            self._changed.clear()
            await self._changed.wait()
        self._pending = False
        return True

    def close(self) -> None:
        self._ended = True
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            if self._loop is not None:
                with contextlib.suppress(Exception):  # the loop may be closed already
                    self._loop.remove_reader(fd)
            os.close(fd)
        self._changed.set()  # a waiter wakes (and returns False, after a change still pending)

    def _readable(self) -> None:
        changed = gone = False
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            except OSError:
                gone = True
                break
            if not data:
                break
            pos = 0
            while pos + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    changed = True  # events were dropped: say "changed", the caller re-reads
                elif mask & _GONE and not name:
                    gone = True
                elif self.names is None or name in self.names:
                    changed = True
        if changed:
            self.changes += 1
            self._pending = True
            self._changed.set()
        if gone:
            self.close()
