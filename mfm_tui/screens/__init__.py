"""Screens of the mfm app: runs (home), run, artifact, help and dialogs.

The screens a user opens after the runs list (the run screen and what it opens on a key: artifacts, logs, timeline,
start; workers, diff) are read from this face and imported on first use (PEP 562): the runs list paints without them
(the run screen alone cost 72 ms of ``import mfm_tui.app``), the run screen's first frame without what it opens on a
key (issue 15).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from engine.lazy import lazy_names

if TYPE_CHECKING:
    from mfm_tui.screens.artifact import ArtifactScreen, run_artifacts
    from mfm_tui.screens.diff import DiffScreen, ReplayScreen
    from mfm_tui.screens.logs import LogsScreen
    from mfm_tui.screens.run import RunScreen
    from mfm_tui.screens.run.event_dialog import EventDialog
    from mfm_tui.screens.start import StartScreen
    from mfm_tui.screens.timeline import TimelineScreen
    from mfm_tui.screens.workers import WorkersScreen

__all__ = [
    "ArtifactScreen",
    "DiffScreen",
    "EventDialog",
    "LogsScreen",
    "ReplayScreen",
    "RunScreen",
    "StartScreen",
    "TimelineScreen",
    "WorkersScreen",
    "run_artifacts",
]

_WHERE = {
    # What the run screen opens on a key (artifacts and an event's JSON: rich.syntax and pygments, ~55 ms; logs,
    # timeline, start: ~35 ms more): imported on that key, not before the run's first frame (issue 15).
    "ArtifactScreen": "mfm_tui.screens.artifact",
    "EventDialog": "mfm_tui.screens.run.event_dialog",
    "run_artifacts": "mfm_tui.screens.artifact",
    "LogsScreen": "mfm_tui.screens.logs",
    "TimelineScreen": "mfm_tui.screens.timeline",
    "DiffScreen": "mfm_tui.screens.diff",
    "ReplayScreen": "mfm_tui.screens.diff",
    "RunScreen": "mfm_tui.screens.run",
    "StartScreen": "mfm_tui.screens.start",
    "WorkersScreen": "mfm_tui.screens.workers",
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())


def loaded(name: str) -> Any:
    """The screen class ``name`` if its module is imported already, else ``None`` (no screen of it can exist)."""
    module = sys.modules.get(_WHERE[name])
    return getattr(module, name, None) if module is not None else None
