"""Following a text file like ``tail -f``, read with ``aiofiles`` so a large log never blocks the UI.

:class:`LogTail` starts at the end (the last ``initial_bytes`` of the file, whatever its size: a 100 MB worker log
shows its last lines after reading 256 KiB), then each :meth:`LogTail.read_new` returns the complete lines appended
since (a partial last line waits for its newline). A file that shrinks (truncated, replaced) is read again from its
start. No Textual here: the logs view calls it from a worker and shows what it returns.

:class:`FileWatch` says when files of one folder change, event-driven, through ``watchfiles`` (its notifier thread
checks every few milliseconds: the latency/idle trade is its ``step_ms``); without watchfiles or the folder its
``start`` says no and the caller polls on its timer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class FileWatch:
    """``await watch.wait()`` returns ``True`` once one of ``names`` in ``folder`` changed since the last call
    (written, created, replaced, deleted; ``names=None``: any file), ``False`` once the watch ended (``close``, or the
    watcher failed: the folder went) and no change is left to report. Changes that land while the caller works are not
    lost: the next ``wait`` returns at once.

    The watching is ``watchfiles``' (inotify on Linux, the platform's notifier elsewhere) on a thread of its own that
    checks for changes every ``step_ms`` and reports them once ``step_ms`` passed without another (at the latest
    after ``debounce_ms`` under a stream of them): ``step_ms`` trades latency for wake-ups while nothing changes (10 ms:
    an append shows within ~20 ms, for about 0.5 % of a core; 50 ms: ~0.1 %). ``start()`` (on the running loop) says
    whether the watch is on (``False`` without watchfiles or without the folder: the caller polls); ``close()`` ends
    it (idempotent).
    """

    def __init__(
        self, folder: Path | str, names: Iterable[str] | None = None, *, step_ms: int = 10, debounce_ms: int = 40
    ) -> None:
        self.folder = Path(folder)
        self.names = None if names is None else frozenset(names)
        self.step_ms = step_ms
        self.debounce_ms = debounce_ms
        self.changes = 0
        """How many times a change was reported (for tests and benchmarks)."""
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pending = False
        """A change not yet returned by ``wait`` (kept across the end of the watch: reported once, then False)."""
        self._ended = False

    @property
    def active(self) -> bool:
        return self._task is not None and not self._ended and not self._task.done()

    def start(self) -> bool:
        """Watch from now on; ``False`` when watchfiles is missing or the folder is not there (the caller polls)."""
        if self._ended or self._task is not None or not self.folder.is_dir():
            return False
        try:
            import watchfiles  # 60 ms of imports (anyio): loaded when the first watch starts, after the first paint
        except ImportError:
            return False
        self._task = asyncio.get_running_loop().create_task(self._watch(watchfiles))
        return True

    async def _watch(self, watchfiles: Any) -> None:
        names = self.names

        def wanted(_change: Any, path: str) -> bool:
            return names is None or path.rpartition(os.sep)[2] in names

        try:
            async for _changes in watchfiles.awatch(
                self.folder,
                watch_filter=wanted,
                step=self.step_ms,
                debounce=self.debounce_ms,
                stop_event=self._stop,
                recursive=False,
            ):
                self.changes += 1
                self._pending = True
                self._changed.set()
        except Exception:  # the folder went, or the notifier failed: the watch ends and the caller polls
            pass
        finally:
            self._ended = True
            self._changed.set()

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
        self._stop.set()
        self._changed.set()  # a waiter wakes (and returns False, after a change still pending)
