"""Status glyphs and line-drawing characters, in a Unicode set and an ASCII set.

Every status has a glyph and a word so it reads without colour; the ASCII set (the ``mfm-ascii``
theme) swaps glyphs for letters and box drawing for ``- | +``. Widgets ask ``glyphs_for_theme(app.theme)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mfm_tui.run_model import RunStatus, StateStatus

__all__ = ["ASCII", "ASCII_THEMES", "UNICODE", "Glyphs", "glyphs_for_theme", "status_class"]

ASCII_THEMES = frozenset({"mfm-ascii"})
"""Themes drawn without any non-ASCII character."""


@dataclass(frozen=True, slots=True)
class Glyphs:
    ascii: bool
    run: Mapping[RunStatus, str]
    state: Mapping[StateStatus, str]
    ellipsis: str
    back: str
    horizontal: str
    vertical: str
    cross: str
    tee_down: str
    tee_right: str
    tee_left: str
    corner_top_right: str
    corner_bottom_right: str
    corner_top_left: str
    corner_bottom_left: str
    marked: str
    separator: str
    dash: str
    """Shown for a missing value."""


UNICODE = Glyphs(
    ascii=False,
    run={
        RunStatus.PENDING: "○",
        RunStatus.RUNNING: "●",
        RunStatus.RETRYING: "↻",
        RunStatus.COMPLETED: "✓",
        RunStatus.FAILED: "✗",
        RunStatus.CANCELLED: "■",
        RunStatus.CANCELLING: "□",
        RunStatus.WORKER_LOST: "!",
    },
    state={
        StateStatus.PENDING: "○",
        StateStatus.RUNNING: "●",
        StateStatus.RETRYING: "↻",
        StateStatus.COMPLETED: "✓",
        StateStatus.FAILED: "✗",
        StateStatus.SKIPPED: "»",
        StateStatus.CANCELLED: "■",
    },
    ellipsis="…",
    back="←",
    horizontal="─",
    vertical="│",
    cross="┼",
    tee_down="┬",
    tee_right="├",
    tee_left="┤",
    corner_top_right="┐",
    corner_bottom_right="┘",
    corner_top_left="┌",
    corner_bottom_left="└",
    marked="▌",
    separator="·",
    dash="—",
)

ASCII = Glyphs(
    ascii=True,
    run={
        RunStatus.PENDING: ".",
        RunStatus.RUNNING: "*",
        RunStatus.RETRYING: "~",
        RunStatus.COMPLETED: "+",
        RunStatus.FAILED: "x",
        RunStatus.CANCELLED: "#",
        RunStatus.CANCELLING: "#",
        RunStatus.WORKER_LOST: "!",
    },
    state={
        StateStatus.PENDING: ".",
        StateStatus.RUNNING: "*",
        StateStatus.RETRYING: "~",
        StateStatus.COMPLETED: "+",
        StateStatus.FAILED: "x",
        StateStatus.SKIPPED: ">",
        StateStatus.CANCELLED: "#",
    },
    ellipsis="...",
    back="<-",
    horizontal="-",
    vertical="|",
    cross="+",
    tee_down="+",
    tee_right="+",
    tee_left="+",
    corner_top_right="+",
    corner_bottom_right="+",
    corner_top_left="+",
    corner_bottom_left="+",
    marked=">",
    separator="|",
    dash="-",
)


def glyphs_for_theme(theme_name: str) -> Glyphs:
    return ASCII if theme_name in ASCII_THEMES else UNICODE


_STATUS_CLASS: Mapping[str, str] = {
    "pending": "muted",
    "running": "running",
    "retrying": "warning",
    "completed": "success",
    "failed": "error",
    "skipped": "muted",
    "cancelled": "muted",
    "cancelling": "warning",
    "worker_lost": "error",
}


def status_class(status: RunStatus | StateStatus) -> str:
    """A colour role for a status: ``success``, ``error``, ``warning``, ``running`` or ``muted``."""
    return _STATUS_CLASS[status.value]
