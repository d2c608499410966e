"""The filesystem store's seams: every mutating OS call (:class:`FsOps`) and the one OS/parse error translator.

``FsOps`` is injectable into ``FsStore`` so that a fault-injection test can make any single call fail (ENOSPC, EIO,
a short write) and check that the store reports it and stays consistent. Reads that cannot change the store go to
``os`` directly.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import NoReturn

from pydantic import JsonValue

from engine.errors import StorageError
from engine.stores.fs.framing import CLOEXEC, DIR_MODE, FILE_MODE, NOFOLLOW

__all__ = ["FsOps", "fail", "translate"]


class FsOps:
    """Every write, sync, link, rename, unlink, mkdir and open-for-write the store performs goes through here."""

    def open(self, path: str, flags: int, mode: int = FILE_MODE, *, dir_fd: int | None = None) -> int:
        """``os.open`` with ``O_NOFOLLOW | O_CLOEXEC`` always added (symlinks are refused, fds never leak)."""
        return os.open(path, flags | NOFOLLOW | CLOEXEC, mode, dir_fd=dir_fd)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """``os.pread``: the reads of the summary cache go through here (a test counts them)."""
        return os.pread(fd, n, offset)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def write_all(self, fd: int, data: bytes) -> None:
        """Write every byte (loops over short writes; a write of 0 bytes is an error, not a hang)."""
        view = memoryview(data)
        while view:
            n = self.write(fd, view)
            if n <= 0:
                raise OSError(errno.EIO, "short write (0 bytes written)")
            view = view[n:]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync_dir(self, path: str, fd: int) -> None:
        """Make the entries of the folder open as ``fd`` durable (``path`` names it)."""
        self.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fchmod(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)

    def link(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        """Hard link; never replaces ``dst`` (``FileExistsError`` if it exists)."""
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)

    def rename(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        os.unlink(path, dir_fd=dir_fd)

    def mkdir(self, path: str, mode: int = DIR_MODE, *, dir_fd: int | None = None) -> bool:
        """Create a directory (its creator ``fchmod``s it to ``mode`` on its descriptor: the umask never counts);
        False if it already exists."""
        try:
            os.mkdir(path, mode, dir_fd=dir_fd)
        except FileExistsError:
            return False
        return True

    def flock(self, fd: int, operation: int) -> None:
        fcntl.flock(fd, operation)

    def close(self, fd: int) -> None:
        os.close(fd)


def translate(exc: BaseException, code: str, action: str, path: str) -> StorageError:
    """THE translation of an OS or parse error into the contract's ``StorageError`` (never raises).

    ``FileNotFoundError`` for an ``artifact_*`` code is ``NotFound``; a JSON/Unicode error is ``Corruption``; a
    refused symlink says so; everything else is ``Other`` with the path, errno and reason in the message/details.
    """
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError):
        num = exc.errno or 0
        if num == errno.ELOOP:
            reason = "refusing to follow a symlink (or other non-regular file) planted in the store"
            code = "store_symlink"
        else:
            reason = exc.strerror or str(exc) or type(exc).__name__
        details: dict[str, JsonValue] = {"path": path, "errno": errno.errorcode.get(num, str(num)), "action": action}
        if isinstance(exc, FileNotFoundError) and code.startswith("artifact"):
            return StorageError.not_found("artifact_not_found", f"artifact not found: {path}", details)
        retryable = num in (errno.EAGAIN, errno.EINTR, errno.ENOSPC, errno.EDQUOT)
        return StorageError.other(code, f"{action} {path}: {reason}", details, retryable=retryable)
    if isinstance(exc, ValueError):  # json.JSONDecodeError, UnicodeDecodeError
        return StorageError.corruption(code, f"{action} {path}: {exc}"[:500], {"path": path, "action": action})
    return StorageError.other(code, f"{action} {path}: {type(exc).__name__}: {exc}"[:500], {"path": path})


def fail(exc: BaseException, code: str, action: str, path: str) -> NoReturn:
    """``raise translate(...) from exc``."""
    raise translate(exc, code, action, path) from exc
