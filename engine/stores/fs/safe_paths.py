"""Walking a filesystem store by directory descriptors: the ONE place that opens the store's folders and files.

Nothing below the store's root is ever reached through a symbolic link. Each folder is opened relative to its
parent's descriptor with ``O_DIRECTORY | O_NOFOLLOW`` (:func:`open_dir`), each file relative to its folder's
descriptor with ``O_NOFOLLOW`` (:func:`open_file`), new folders are made relative to their parent
(:func:`make_dir`), so no path component is followed: a symlink planted in place of ``runs/<id>``,
``runs/<id>/control``, ``artifacts/<aa>`` or ``quarantine`` is refused (``store_symlink``) and nothing is read or
written where it points.

The root itself is opened by its path (:func:`open_root`), which may pass through symlinks: the user chose that path
(as ssh accepts a home folder reached through a symlink). Everything below it is refused when it is a symlink. The
folders above the root are the user's business and are not checked.

Ownership, as ssh checks ``~/.ssh``: the root and every folder opened below it must belong to the effective user
(``store_foreign_owner`` otherwise), so a store (or a folder planted in it) owned by someone else is never used.
There is no exception for root: root opening a store owned by another user is refused too (run the command as the
store's owner, e.g. ``sudo -u OWNER mfm …``); a process may only use a store it owns.

Folders are created ``DIR_MODE`` (0700) and then ``fchmod``-ed on their descriptor, so their mode never depends on
the umask. Descriptors returned here are ``O_CLOEXEC``; the caller closes them (or uses :class:`Dir`).

Errors: a refused symlink or owner is a ``StorageError`` (raised at once, never translated); anything else is the
``OSError`` of the failing call (``FileNotFoundError`` for a missing folder or file), for the caller to translate.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import NamedTuple

from engine.errors import StorageError
from engine.stores.fs._ops import FsOps
from engine.stores.fs.framing import CLOEXEC, DIR_MODE, DIRECTORY, FILE_MODE, NOFOLLOW

__all__ = [
    "DIR_FLAGS",
    "FOREIGN_OWNER",
    "SYMLINK",
    "Dir",
    "Entry",
    "check_owner",
    "is_symlink",
    "list_dir",
    "make_dir",
    "open_below",
    "open_dir",
    "open_dirs",
    "open_file",
    "open_file_below",
    "open_root",
    "stat_entry",
    "symlink_refused",
]

SYMLINK = "store_symlink"
"""The code of a refused symlink inside a store."""
FOREIGN_OWNER = "store_foreign_owner"
"""The code of a store folder owned by another user than the effective one."""
DIR_FLAGS = os.O_RDONLY | DIRECTORY | NOFOLLOW | CLOEXEC
"""``os.open`` flags of every folder opened below the root."""

_OPS = FsOps()


def symlink_refused(path: str) -> StorageError:
    return StorageError.other(
        SYMLINK,
        f"refusing to follow a symbolic link planted in the store: {path}",
        {"path": path, "errno": "ELOOP", "action": "open"},
    )


def check_owner(st: os.stat_result, path: str) -> None:
    """Raise ``store_foreign_owner`` unless ``st`` belongs to the effective user."""
    euid = os.geteuid()
    if st.st_uid != euid:
        raise StorageError.other(
            FOREIGN_OWNER,
            f"{path} belongs to uid {st.st_uid}, not to this user (uid {euid}); refusing to use a store "
            "owned by someone else (run as its owner)",
            {"path": path, "owner_uid": st.st_uid, "uid": euid},
        )


def stat_entry(dir_fd: int, name: str) -> os.stat_result:
    """``lstat`` of ``name`` in the folder open as ``dir_fd`` (a symlink is described, not followed)."""
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(stat_entry(dir_fd, name).st_mode)
    except OSError:
        return False


def _checked(fd: int, path: str) -> int:
    try:
        check_owner(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_root(root: str) -> int:
    """Open the store folder ``root`` (its path may pass through symlinks), owned by the effective user."""
    return _checked(os.open(root, os.O_RDONLY | DIRECTORY | CLOEXEC), root)


def open_dir(parent_fd: int, name: str, path: str) -> int:
    """Open folder ``name`` of the folder open as ``parent_fd``; never through a symlink, owned by us.

    ``path`` names the folder in errors. A missing folder is ``FileNotFoundError``.
    """
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and is_symlink(parent_fd, name):
            raise symlink_refused(path) from None
        raise
    return _checked(fd, path)


def make_dir(
    parent_fd: int, name: str, path: str, ops: FsOps | None = None, *, durable: bool = True
) -> tuple[int, bool]:
    """Open folder ``name`` of ``parent_fd``, creating it (``DIR_MODE`` whatever the umask, made durable in its
    parent unless not ``durable``: a folder of cached copies) if missing. Returns ``(fd, created)``."""
    ops = ops or _OPS
    created = ops.mkdir(name, DIR_MODE, dir_fd=parent_fd)
    fd = open_dir(parent_fd, name, path)
    if created:
        try:
            ops.fchmod(fd, DIR_MODE)
            if durable:
                ops.fsync_dir(path.rpartition("/")[0] or ".", parent_fd)
        except BaseException:
            os.close(fd)
            raise
    return fd, created


def open_dirs(parent_fd: int, rel: str, path: str, *, create: bool = False, ops: FsOps | None = None) -> int:
    """Open the folder ``rel`` (``a/b/c``, relative to ``parent_fd`` whose path is ``path``), one component at a
    time, creating missing ones when ``create``. Returns a new descriptor (``rel`` empty: a duplicate)."""
    fd = os.dup(parent_fd)
    os.set_inheritable(fd, False)
    here = path
    for part in (p for p in rel.split("/") if p):
        if part in (".", ".."):
            os.close(fd)
            raise ValueError(f"not a store path: {rel!r}")
        here = f"{here}/{part}"
        try:
            child = make_dir(fd, part, here, ops)[0] if create else open_dir(fd, part, here)
        finally:
            os.close(fd)
        fd = child
    return fd


def open_below(root: str, rel: str, *, create: bool = False, ops: FsOps | None = None) -> int:
    """Open the folder ``rel`` of the store at ``root`` (:func:`open_root`, then :func:`open_dirs`)."""
    root_fd = open_root(root)
    try:
        return open_dirs(root_fd, rel, root, create=create, ops=ops)
    finally:
        os.close(root_fd)


def open_file_below(
    root: str, rel: str, flags: int, mode: int = FILE_MODE, *, create_dirs: bool = False, ops: FsOps | None = None
) -> int:
    """Open the file ``rel`` (``a/b/name``) of the store at ``root``: :func:`open_below` its folder, then
    :func:`open_file`."""
    parent, _, name = rel.rpartition("/")
    dfd = open_below(root, parent, create=create_dirs, ops=ops)
    try:
        return open_file(dfd, name, flags, f"{root}/{rel}", mode, ops)
    finally:
        os.close(dfd)


def open_file(dir_fd: int, name: str, flags: int, path: str, mode: int = FILE_MODE, ops: FsOps | None = None) -> int:
    """Open file ``name`` of the folder open as ``dir_fd`` with ``flags`` (``O_NOFOLLOW | O_CLOEXEC`` added).

    A symlink in its place is ``store_symlink``; a new file gets ``mode`` (callers ``fchmod`` when the umask must
    not matter). Opens for writing go through ``ops`` (the store's seam).
    """
    try:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            return (ops or _OPS).open(name, flags, mode, dir_fd=dir_fd)
        return os.open(name, flags | NOFOLLOW | CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise symlink_refused(path) from None
        raise


class Dir:
    """A folder descriptor as a context manager: ``with Dir(open_dir(...)) as d: ... d.fd``."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def entries(self) -> list[Entry]:
        return list_dir(self.fd)


class Entry(NamedTuple):
    """One entry of a folder, its type as ``lstat`` sees it (a symlink is neither a folder nor a file)."""

    name: str
    is_dir: bool
    is_file: bool
    is_symlink: bool


def list_dir(dir_fd: int) -> list[Entry]:
    """The entries of the folder open as ``dir_fd``, read through a fresh open of it (a descriptor shared with
    another thread would share its read position)."""
    fd = os.open(".", DIR_FLAGS, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            return [
                Entry(e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False), e.is_symlink())
                for e in it
            ]
    finally:
        os.close(fd)
