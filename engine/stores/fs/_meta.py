"""Opening a filesystem store: ``store.json`` (format and version), the store directory's checks and creation."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from datetime import UTC, datetime
from typing import Any

from engine.errors import StorageError
from engine.stores.fs._core import read_all, tmp_name
from engine.stores.fs._ops import FsOps, translate
from engine.stores.fs.framing import (
    ARTIFACTS_DIR,
    DIR_MODE,
    FILE_MODE,
    RD_FLAGS,
    RUNS_DIR,
    STORE_FORMAT,
    STORE_META_FILE,
    STORE_VERSION,
    TEMP_PREFIX,
)

__all__ = ["open_store"]


def open_store(root: str, ops: FsOps) -> dict[str, Any]:
    """Open (or initialise) the store directory; return the parsed ``store.json``."""
    meta_path = f"{root}/{STORE_META_FILE}"
    try:
        st = os.stat(root)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _store_error("store_not_writable", root, exc) from exc
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise StorageError.other("store_not_a_directory", f"store path {root} exists and is not a directory")
    try:
        if st is None:
            _make_dirs(root, ops)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "no write permission")
        meta = _read_meta(meta_path)
        if meta is None:
            stray = [n for n in os.listdir(root) if not n.startswith(TEMP_PREFIX)]
            if stray:
                raise StorageError.other(
                    "store_not_a_store",
                    f"{root} is not empty and has no store.json; refusing to use it as a store "
                    f"(found {', '.join(sorted(stray)[:5])})",
                )
            body = {"created_at": datetime.now(UTC).isoformat(), "format": STORE_FORMAT, "version": STORE_VERSION}
            _write_meta(root, meta_path, json.dumps(body, sort_keys=True).encode() + b"\n", ops)
            meta = _read_meta(meta_path)
            if meta is None:
                raise FileNotFoundError(errno.ENOENT, "store.json vanished right after it was written")
        version = meta.get("version") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT or version != STORE_VERSION:
            raise StorageError.other(
                "store_version_unknown",
                f"store at {root} has format {meta.get('format')!r} version {version!r}; "
                f"this program understands {STORE_FORMAT!r} version {STORE_VERSION}"
                if isinstance(meta, dict)
                else f"store at {root}: store.json is not an object",
            )
        for sub in (RUNS_DIR, ARTIFACTS_DIR):
            if ops.mkdir(f"{root}/{sub}", DIR_MODE):
                ops.fsync_dir(root)
    except OSError as exc:
        code = "store_not_writable" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "store_io"
        raise _store_error(code, root, exc) from exc
    return meta


def _store_error(code: str, root: str, exc: OSError) -> StorageError:
    err = translate(exc, code, "open store at", root)
    if code == "store_not_writable":
        return StorageError.other(code, f"store at {root} is not writable: {exc.strerror or exc}", err.info.details)
    return err


def _read_meta(path: str) -> Any:
    try:
        fd = os.open(path, RD_FLAGS)
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
    """Create ``root`` and its missing parents (each 0700), making each new entry durable in its parent."""
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
            ops.fsync_dir(os.path.dirname(path) or ".")


def _write_meta(root: str, path: str, data: bytes, ops: FsOps) -> None:
    tmp = tmp_name(root, "store")
    fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            ops.fchmod(fd, FILE_MODE)
            ops.write_all(fd, data)
            ops.fdatasync(fd)
        finally:
            ops.close(fd)
        with contextlib.suppress(FileExistsError):  # another process initialised it first
            ops.link(tmp, path)
        ops.fsync_dir(root)
    finally:
        with contextlib.suppress(OSError):
            ops.unlink(tmp)
