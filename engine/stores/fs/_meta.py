"""Opening a filesystem store: the root folder (owner checked), ``store.json`` (format and version), and, only when
asked to, the store's creation."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from datetime import UTC, datetime
from typing import Any

import engine.stores.fs.safe_paths as safe_paths
from engine.errors import StorageError
from engine.stores.fs._core import read_all
from engine.stores.fs._ops import FsOps, translate
from engine.stores.fs.framing import (
    ARTIFACTS_DIR,
    CLOEXEC,
    DIR_MODE,
    DIRECTORY,
    FILE_MODE,
    NOFOLLOW,
    RD_FLAGS,
    RUNS_DIR,
    STORE_FORMAT,
    STORE_META_FILE,
    STORE_VERSION,
    STORE_VERSIONS,
    TEMP_PREFIX,
    temp_name,
)

__all__ = ["is_writable", "open_store"]

_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def open_store(root: str, ops: FsOps, *, create: bool, version: int = STORE_VERSION) -> tuple[int, dict[str, Any]]:
    """Open the store folder ``root``; return its descriptor and the parsed ``store.json``.

    ``create``: a missing store (folder, ``store.json``, ``runs/``, ``artifacts/``) is created; otherwise a missing
    one is ``store_not_found`` and nothing at all is written (reading never needs write access). ``version``: the
    format of a store created here (an existing store keeps its own).
    """
    try:
        fd = _open_root(root, ops, create=create)
    except OSError as exc:
        raise _store_error(root, exc) from exc
    try:
        meta = _read_meta(fd, root)
        if meta is None:
            stray = [e.name for e in safe_paths.list_dir(fd) if not e.name.startswith(TEMP_PREFIX)]
            if stray:
                raise StorageError.other(
                    "store_not_a_store",
                    f"{root} is not empty and has no store.json; refusing to use it as a store "
                    f"(found {', '.join(sorted(stray)[:5])})",
                )
            if not create:
                raise _not_found(root, "the folder is empty")
            body = {"created_at": datetime.now(UTC).isoformat(), "format": STORE_FORMAT, "version": version}
            _write_meta(fd, root, json.dumps(body, sort_keys=True).encode() + b"\n", ops)
            meta = _read_meta(fd, root)
            if meta is None:
                raise FileNotFoundError(errno.ENOENT, "store.json vanished right after it was written")
        found = meta.get("version") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT or found not in STORE_VERSIONS:
            raise StorageError.other(
                "store_version_unknown",
                f"store at {root} has format {meta.get('format')!r} version {found!r}; "
                f"this program understands {STORE_FORMAT!r} versions {', '.join(map(str, STORE_VERSIONS))}"
                if isinstance(meta, dict)
                else f"store at {root}: store.json is not an object",
            )
        if create:
            for sub in (RUNS_DIR, ARTIFACTS_DIR):
                os.close(safe_paths.make_dir(fd, sub, f"{root}/{sub}", ops)[0])
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise _store_error(root, exc) from exc
        raise
    return fd, meta


def is_writable(root_fd: int) -> bool:
    """Whether this process may write the store open as ``root_fd`` (its folder and its ``runs/``)."""

    def ok(name: str) -> bool:
        try:
            return os.access(name, os.W_OK | os.X_OK, dir_fd=root_fd, effective_ids=True, follow_symlinks=False)
        except OSError:
            return False

    try:
        has_runs = safe_paths.stat_entry(root_fd, RUNS_DIR) is not None
    except OSError:
        has_runs = False
    return ok(".") and (not has_runs or ok(RUNS_DIR))


def _not_found(root: str, why: str) -> StorageError:
    return StorageError.not_found(
        "store_not_found",
        f"no store at {root} ({why}); `mfm start` creates one, or pass --store / set MFM_STORE",
        {"path": root},
    )


def _open_root(root: str, ops: FsOps, *, create: bool) -> int:
    try:
        return safe_paths.open_root(root)
    except FileNotFoundError:
        if not create:
            raise _not_found(root, "the folder does not exist") from None
    except NotADirectoryError:
        raise StorageError.other("store_not_a_directory", f"store path {root} exists and is not a directory") from None
    _make_dirs(root, ops)
    return safe_paths.open_root(root)


def _store_error(root: str, exc: OSError) -> StorageError:
    if exc.errno in _DENIED:
        readable = not os.path.lexists(root) or os.access(root, os.R_OK | os.X_OK, effective_ids=True)
        code, what = ("store_not_writable", "not writable") if readable else ("store_unreadable", "not readable")
        err = translate(exc, code, "open store at", root)
        return StorageError.other(code, f"store at {root} is {what}: {exc.strerror or exc}", err.info.details)
    return translate(exc, "store_io", "open store at", root)


def _read_meta(root_fd: int, root: str) -> Any:
    path = f"{root}/{STORE_META_FILE}"
    try:
        fd = safe_paths.open_file(root_fd, STORE_META_FILE, RD_FLAGS, path)
    except FileNotFoundError:
        return None
    try:
        raw = read_all(fd)
    finally:
        os.close(fd)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise translate(exc, "store_version_unknown", "parse the store metadata", path) from exc


def _make_dirs(root: str, ops: FsOps) -> None:
    """Create ``root`` and its missing parents (each 0700 whatever the umask), each new entry durable in its parent.

    The folders above the store are the user's: they are created by path, as ``mkdir -p`` would."""
    missing: list[str] = []
    path = root
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for path in reversed(missing):
        if ops.mkdir(path, DIR_MODE):
            fd = os.open(path, os.O_RDONLY | DIRECTORY | NOFOLLOW | CLOEXEC)
            try:
                ops.fchmod(fd, DIR_MODE)
            finally:
                os.close(fd)
            parent = os.path.dirname(path) or "."
            pfd = os.open(parent, os.O_RDONLY | DIRECTORY | CLOEXEC)
            try:
                ops.fsync_dir(parent, pfd)
            finally:
                os.close(pfd)


def _write_meta(root_fd: int, root: str, data: bytes, ops: FsOps) -> None:
    tmp = temp_name("store")
    fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=root_fd)
    try:
        try:
            ops.fchmod(fd, FILE_MODE)
            ops.write_all(fd, data)
            ops.fdatasync(fd)
        finally:
            ops.close(fd)
        with contextlib.suppress(FileExistsError):  # another process initialised it first
            ops.link(tmp, STORE_META_FILE, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        ops.fsync_dir(root, root_fd)
    finally:
        with contextlib.suppress(OSError):
            ops.unlink(tmp, dir_fd=root_fd)
