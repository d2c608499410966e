"""Artifact checks for ``mfm doctor``: names and hashes of the files under ``artifacts/``, and the artifact ids
the events refer to."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from engine.doctor._findings import TEMP_NAME, DoctorReport, Finding, add_if_any, check_mode, relative
from engine.doctor._walk import refused, temp_finding
from engine.errors import StorageError
from engine.events import (
    DOMAIN_EVENT_FACT_RECORDED,
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.ids import ArtifactId, RunId
from engine.stores.fs import framing, safe_paths

__all__ = ["artifact_exists", "check_all_artifacts", "check_artifact_file", "collect_refs"]

_ARTIFACT_SIDECARS = (framing.KIND_SUFFIX,)


def _artifact_path(root: Path, aid: str) -> Path:
    return root / framing.artifact_file(aid)


def artifact_exists(root: Path, aid: str) -> bool:
    try:
        fan = safe_paths.open_below(str(root), framing.artifact_folder(aid))
    except (OSError, StorageError):
        return False
    try:
        safe_paths.stat_entry(fan, aid)
    except OSError:
        return False
    finally:
        os.close(fan)
    return True


def check_all_artifacts(report: DoctorReport, root: Path, present: dict[ArtifactId, bool]) -> None:
    try:
        adir = safe_paths.open_below(str(root), framing.ARTIFACTS_DIR)
    except FileNotFoundError:
        return
    except (OSError, StorageError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc.message
        report.add(Finding("store_unreadable", "error", f"cannot list artifacts: {reason}", path=framing.ARTIFACTS_DIR))
        return
    try:
        for entry in sorted(safe_paths.list_dir(adir)):
            _check_fan(report, root, adir, entry.name, present)
    finally:
        os.close(adir)


def _check_fan(report: DoctorReport, root: Path, adir: int, fan: str, present: dict[ArtifactId, bool]) -> None:
    fan_path = root / framing.ARTIFACTS_DIR / fan
    try:
        st = safe_paths.stat_entry(adir, fan)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        report.add(
            Finding("symlink_in_store", "error", "a symbolic link among the artifacts", path=relative(root, fan_path))
        )
        return
    if not stat.S_ISDIR(st.st_mode):
        if stat.S_ISREG(st.st_mode) and TEMP_NAME.search(fan):
            add_if_any(report, temp_finding(root, fan_path, st))
        else:
            report.add(
                Finding(
                    "artifact_name_invalid",
                    "warning",
                    "an unexpected file among the artifact folders",
                    path=relative(root, fan_path),
                )
            )
        return
    if not refused(report, relative(root, fan_path), st):
        return
    check_mode(report, root, fan_path, st)
    try:
        fan_fd = safe_paths.open_dir(adir, fan, str(fan_path))
    except (OSError, StorageError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc.message
        report.add(Finding("store_unreadable", "error", f"cannot list: {reason}", path=relative(root, fan_path)))
        return
    try:
        entries = sorted(safe_paths.list_dir(fan_fd))
        for entry in entries:
            name = entry.name
            path = fan_path / name
            if framing.ARTIFACT_NAME.fullmatch(name) and name[:2] == fan:
                present[ArtifactId(name)] = check_artifact_file(report, root, ArtifactId(name))
                continue
            try:
                fst = safe_paths.stat_entry(fan_fd, name)
            except OSError:
                continue
            if stat.S_ISLNK(fst.st_mode):
                report.add(
                    Finding(
                        "symlink_in_store", "error", "a symbolic link among the artifacts", path=relative(root, path)
                    )
                )
                continue
            base = name
            for suffix in _ARTIFACT_SIDECARS:
                if name.endswith(suffix):
                    base = name[: -len(suffix)]
            if base != name and framing.ARTIFACT_NAME.fullmatch(base) and base[:2] == fan:
                check_mode(report, root, path, fst)
                continue
            if stat.S_ISREG(fst.st_mode) and TEMP_NAME.search(name):
                add_if_any(report, temp_finding(root, path, fst))
                continue
            report.add(
                Finding(
                    "artifact_name_invalid",
                    "warning",
                    "a file among the artifacts whose name is not its 64-hex content address",
                    path=relative(root, path),
                )
            )
    finally:
        os.close(fan_fd)


def check_artifact_file(report: DoctorReport, root: Path, aid: ArtifactId) -> bool:
    """Hash one artifact; report damage. True when present and intact."""
    path = _artifact_path(root, aid)
    rel = relative(root, path)
    try:
        fd = safe_paths.open_file_below(str(root), framing.artifact_file(aid), framing.RD_FLAGS)
    except FileNotFoundError:
        return False
    except StorageError as err:
        code = "symlink_in_store" if err.code == safe_paths.SYMLINK else "foreign_owner"
        report.add(Finding(code, "error", f"where an artifact should be: {err.message}", path=rel))
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            report.add(Finding("symlink_in_store", "error", "a symbolic link where an artifact should be", path=rel))
        else:
            report.add(Finding("store_unreadable", "error", f"cannot read artifact: {exc.strerror}", path=rel))
        return False
    try:
        st = os.fstat(fd)
        check_mode(report, root, path, st)
        h = hashlib.sha256()
        while chunk := os.read(fd, framing.CHUNK):
            h.update(chunk)
    except OSError as exc:
        report.add(Finding("store_unreadable", "error", f"cannot read artifact: {exc.strerror}", path=rel))
        return False
    finally:
        os.close(fd)
    report.artifacts_checked += 1
    actual = h.hexdigest()
    if actual != aid:
        report.add(
            Finding(
                "artifact_hash_mismatch",
                "error",
                f"content hashes to {actual[:16]}…, not to its name",
                path=rel,
                details={"artifact_id": str(aid), "actual": actual},
            )
        )
        return False
    return True


def _refs(env: EventEnvelope) -> Iterable[tuple[str, str | None]]:
    ev = env.event
    if isinstance(ev, RunStarted):
        yield "RunStarted.manifest_id", ev.manifest_id
        yield "RunStarted.initial_snapshot_id", ev.initial_snapshot_id
    elif isinstance(ev, StateEntered):
        yield "StateEntered.base_snapshot_id", ev.base_snapshot_id
    elif isinstance(ev, StateCompleted):
        yield "StateCompleted.context_snapshot_id", ev.context_snapshot_id
    elif isinstance(ev, StateFailed):
        yield "StateFailed.failure_snapshot_id", ev.failure_snapshot_id
    elif isinstance(ev, RunCompleted):
        yield "RunCompleted.final_snapshot_id", ev.final_snapshot_id
    elif isinstance(ev, DomainEvent):
        yield "DomainEvent.payload_ref", ev.payload_ref
        if ev.name == DOMAIN_EVENT_FACT_RECORDED and isinstance(ev.payload, dict):
            pid = ev.payload.get("payload_id")
            yield "fact_recorded.payload_id", pid if isinstance(pid, str) else None


def collect_refs(envs: list[EventEnvelope], run_id: RunId, out: dict[ArtifactId, tuple[str, int, str, int]]) -> None:
    for env in envs:
        for what, value in _refs(env):
            if value is None or not framing.ARTIFACT_NAME.fullmatch(value):
                continue
            aid = ArtifactId(value)
            first = out.setdefault(aid, (run_id, env.seq, what, 0))
            out[aid] = (*first[:3], first[3] + 1)
