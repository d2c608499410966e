"""``mfm doctor``'s findings and report, and the helpers every check shares (the store layout it checks is
:mod:`engine.stores.fs.framing`'s).

A :class:`Finding` carries a stable ``code`` (the table in :mod:`engine.doctor`), a :class:`DoctorReport` collects
them with the counts, a :class:`Moved` records one thing ``--repair`` moved.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.ids import RunId
from engine.stores.fs.framing import DIR_MODE, FILE_MODE

__all__ = [
    "TEMP_NAME",
    "DoctorReport",
    "Finding",
    "Moved",
    "Severity",
    "add_if_any",
    "check_mode",
    "is_run_id",
    "relative",
]

Severity = Literal["error", "warning"]

TEMP_NAME = re.compile(r"(^\.)|(\.tmp\b)|(\.tmp$)|(^tmp)|(\.part$)|(~$)")
"""Names of temporary files (a dot file, ``*.tmp*``, ``tmp*``, ``*.part``, ``*~``)."""


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    message: str
    path: str | None = None
    """Relative to the store root."""
    run_id: str | None = None
    seq: int | None = None
    repairable: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "path": self.path,
            "run_id": self.run_id,
            "seq": self.seq,
            "repairable": self.repairable,
            "details": self.details,
        }

    def one_line(self) -> str:
        where = self.path or ""
        if self.seq is not None:
            where += f" seq {self.seq}"
        return f"{self.severity}[{self.code}] {where.strip()}: {self.message}"


@dataclass(frozen=True, slots=True)
class Moved:
    """One thing ``--repair`` moved (paths relative to the store root)."""

    what: Literal["torn_tail", "temp_file", "empty_run_dir", "artifact_copy_rebuilt"]
    source: str
    destination: str
    size: int
    removed: bool = False
    """Removed, not moved (only a run folder whose files were all empty: nothing held data)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "source": self.source,
            "destination": None if self.removed else self.destination,
            "bytes": self.size,
            "removed": self.removed,
        }


@dataclass(slots=True)
class DoctorReport:
    root: str
    findings: list[Finding] = field(default_factory=list)
    runs_checked: int = 0
    events_checked: int = 0
    artifacts_checked: int = 0
    moved: list[Moved] = field(default_factory=list)
    torn_tails: dict[str, int] = field(default_factory=dict)
    """Run id → committed end offset, for every run with a torn tail (what ``repair`` truncates to)."""
    blob_records: dict[str, str] = field(default_factory=dict)
    """Artifact id → a run whose log holds a committed blob record of it (format 2): its copy can be rebuilt."""

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.root,
            "ok": self.ok,
            "runs_checked": self.runs_checked,
            "events_checked": self.events_checked,
            "artifacts_checked": self.artifacts_checked,
            "errors": len(self.errors),
            "warnings": len(self.findings) - len(self.errors),
            "findings": [f.to_json() for f in self.findings],
            "moved": [m.to_json() for m in self.moved],
        }


def is_run_id(name: str) -> bool:
    try:
        RunId(name)
    except ValueError:
        return False
    return True


def relative(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def check_mode(report: DoctorReport, root: Path, path: Path, st: os.stat_result) -> None:
    if st.st_mode & 0o077:
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
        report.add(
            Finding(
                "permissions_too_open",
                "warning",
                f"{kind} mode {stat.S_IMODE(st.st_mode):o} lets others read it (expected "
                f"{DIR_MODE if kind == 'folder' else FILE_MODE:o})",
                path=relative(root, path) or ".",
            )
        )


def add_if_any(report: DoctorReport, finding: Finding | None) -> None:
    if finding is not None:
        report.add(finding)
