"""Following a text file like ``tail -f``, read with ``aiofiles`` so a large log never blocks the UI.

:class:`LogTail` starts at the end (the last ``initial_bytes`` of the file, whatever its size: a 100 MB worker log
shows its last lines after reading 256 KiB), then each :meth:`LogTail.read_new` returns the complete lines appended
since (a partial last line waits for its newline). A file that shrinks (truncated, replaced) is read again from its
start. No Textual here: the logs view calls it from a worker and shows what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiofiles
import aiofiles.os

__all__ = ["INITIAL_BYTES", "MAX_READ", "LogTail", "TailRead"]

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
