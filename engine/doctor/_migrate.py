"""``mfm doctor --migrate``: convert a version-1 filesystem store to version 2, crash-safe.

Each run log is converted under the run's append lock (no append can be half-way, none starts meanwhile): its
committed lines are read and checked (:func:`~engine.stores.fs.framing.check_log`), written as version-2 event
records (:func:`~engine.stores.fs.framing.v1_to_v2`, commit for commit, the envelopes' bytes unchanged) to a temp
file beside it, fsynced, renamed over ``events.jsonl`` and the run folder fsynced. ``store.json`` is flipped to
version 2 last (temp file, fsync, rename, fsync of the store folder), once every run log is version 2.

A kill at any instant therefore leaves a store that opens: ``store.json`` says 1 or 2, and each run log reads in
its own format (its first byte tells). Running the migration again finishes the job. A run whose log is damaged
(torn tail or corruption: ``mfm doctor`` says which) is left as it is and keeps the store at version 1; after
``mfm doctor --repair`` (torn tails) the migration can be run again. A writer that had the old log open notices
the rename (its file has no link left) and reopens the new one before its next append.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.doctor._findings import is_run_id
from engine.ids import RunId
from engine.stores.fs import framing, safe_paths
from engine.stores.fs.framing import FILE_MODE

__all__ = ["MigrateReport", "migrate_store"]


@dataclass
class MigrateReport:
    """What :func:`migrate_store` did."""

    version_before: int = 0
    version_after: int = 0
    converted: list[str] = field(default_factory=list)
    """Runs whose log was converted now."""
    already: int = 0
    """Run logs that were version 2 (or empty) already."""
    blocked: list[tuple[str, str]] = field(default_factory=list)
    """``(run_id, why)``: damaged logs left as they are (the store stays version 1)."""

    def to_json(self) -> dict[str, object]:
        return {
            "version_before": self.version_before,
            "version_after": self.version_after,
            "converted": self.converted,
            "already": self.already,
            "blocked": [{"run_id": r, "reason": why} for r, why in self.blocked],
        }


def _noop(_step: str) -> None:
    return None


def _write_temp(dfd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | framing.NOFOLLOW | framing.CLOEXEC, FILE_MODE, dir_fd=dfd)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_meta(root_fd: int, root: str) -> dict[str, object]:
    fd = safe_paths.open_file(root_fd, framing.STORE_META_FILE, framing.RD_FLAGS, f"{root}/{framing.STORE_META_FILE}")
    try:
        meta = json.loads(os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    return meta if isinstance(meta, dict) else {}


def _migrate_run(root: str, runs_fd: int, run_id: RunId, step: Callable[[str], None]) -> str | None:
    """Convert one run log; ``"converted"``, ``"already"`` or the reason it was left alone."""
    run_path = f"{root}/{framing.run_folder(run_id)}"
    dfd = safe_paths.open_dir(runs_fd, run_id, run_path)
    try:
        lock_fd = safe_paths.open_file(
            dfd, framing.APPEND_LOCK_FILE, os.O_RDWR | os.O_CREAT, f"{run_path}/{framing.APPEND_LOCK_FILE}"
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                fd = safe_paths.open_file(
                    dfd, framing.EVENTS_FILE, framing.RD_FLAGS, f"{run_path}/{framing.EVENTS_FILE}"
                )
            except FileNotFoundError:
                return "already"
            try:
                check = framing.check_log(fd, run_id, framing.FORMAT_V1)
                if check.size == 0 or check.fmt == framing.FORMAT_V2:
                    return "already"
                if check.first_bad is not None:
                    d = check.first_bad
                    return f"{d.code} at byte {d.offset}: {d.reason} (see `mfm doctor`)"
                data = os.pread(fd, check.committed_end, 0)
            finally:
                os.close(fd)
            if len(data) != check.committed_end:
                return "the log shrank while it was read"
            tmp = framing.temp_name("migrate")
            try:
                _write_temp(dfd, tmp, framing.v1_to_v2(data))
                step(f"written {run_id}")
                os.rename(tmp, framing.EVENTS_FILE, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            step(f"renamed {run_id}")
            os.fsync(dfd)
            step(f"synced {run_id}")
            return "converted"
        finally:
            os.close(lock_fd)
    finally:
        os.close(dfd)


def migrate_store(root: str | os.PathLike[str], *, step: Callable[[str], None] = _noop) -> MigrateReport:
    """Convert the store at ``root`` to version 2 (see the module docstring); ``step`` is called after each durable
    step (a crash test kills the process there)."""
    root = os.path.abspath(os.fspath(root))
    report = MigrateReport()
    root_fd = safe_paths.open_root(root)
    try:
        meta = _read_meta(root_fd, root)
        version = meta.get("version")
        report.version_before = version if isinstance(version, int) else 0
        runs_fd = None
        with contextlib.suppress(FileNotFoundError):
            runs_fd = safe_paths.open_dir(root_fd, framing.RUNS_DIR, f"{root}/{framing.RUNS_DIR}")
        if runs_fd is not None:
            try:
                for entry in sorted(safe_paths.list_dir(runs_fd), key=lambda e: e.name):
                    if not entry.is_dir or not is_run_id(entry.name):
                        continue
                    outcome = _migrate_run(root, runs_fd, RunId(entry.name), step)
                    if outcome == "converted":
                        report.converted.append(entry.name)
                    elif outcome == "already":
                        report.already += 1
                    elif outcome is not None:
                        report.blocked.append((entry.name, outcome))
            finally:
                os.close(runs_fd)
        if report.blocked or report.version_before >= framing.FORMAT_V2:
            report.version_after = report.version_before
            return report
        created = meta.get("created_at")
        body = framing.store_meta(
            framing.FORMAT_V2, created if isinstance(created, str) else datetime.now(UTC).isoformat()
        )
        tmp = framing.temp_name("store")
        try:
            _write_temp(root_fd, tmp, body + b"\n")
            step("written store.json")
            os.rename(tmp, framing.STORE_META_FILE, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=root_fd)
            raise
        step("renamed store.json")
        os.fsync(root_fd)
        report.version_after = framing.FORMAT_V2
        return report
    finally:
        os.close(root_fd)
