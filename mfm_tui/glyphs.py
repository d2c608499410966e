"""Status glyphs and line-drawing characters, in a Unicode set and an ASCII set.

Every status has a glyph and a word so it reads without colour; the ASCII set (the ``mfm-ascii``
theme) swaps glyphs for letters and box drawing for ``- | +``. Widgets ask ``glyphs_for_theme(app.theme)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mfm_tui.run_model import RunDisplayStatus, StateStatus

__all__ = [
    "ASCII",
    "ASCII_THEMES",
    "UNICODE",
    "Glyphs",
    "ascii_text",
    "glyphs_for_theme",
    "short_id",
    "status_class",
    "status_glyph",
]

ASCII_THEMES = frozenset({"mfm-ascii"})
"""Themes drawn without any non-ASCII character."""


@dataclass(frozen=True, slots=True)
class Glyphs:
    ascii: bool
    run: Mapping[RunDisplayStatus, str]
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
        RunDisplayStatus.PENDING: "○",
        RunDisplayStatus.RUNNING: "●",
        RunDisplayStatus.RETRYING: "↻",
        RunDisplayStatus.COMPLETED: "✓",
        RunDisplayStatus.FAILED: "✗",
        RunDisplayStatus.CANCELLED: "■",
        RunDisplayStatus.CANCELLING: "□",
        RunDisplayStatus.WORKER_LOST: "!",
        RunDisplayStatus.STARTING: "○",
        RunDisplayStatus.NOT_STARTED: "!",
        RunDisplayStatus.CRASH_LOOPING: "!",
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
        RunDisplayStatus.PENDING: ".",
        RunDisplayStatus.RUNNING: "*",
        RunDisplayStatus.RETRYING: "~",
        RunDisplayStatus.COMPLETED: "+",
        RunDisplayStatus.FAILED: "x",
        RunDisplayStatus.CANCELLED: "#",
        RunDisplayStatus.CANCELLING: "#",
        RunDisplayStatus.WORKER_LOST: "!",
        RunDisplayStatus.STARTING: ".",
        RunDisplayStatus.NOT_STARTED: "!",
        RunDisplayStatus.CRASH_LOOPING: "!",
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


def status_glyph(status: StateStatus, *, ascii_only: bool = False) -> str:
    """A state's glyph: ``✓`` (``+`` in ASCII) for completed, ``↻`` (``~``) for retrying, …"""
    return (ASCII if ascii_only else UNICODE).state[status]


_ASCII_TABLE = str.maketrans({"…": "...", "→": "->", "—": "-", "–": "-", "↻": "~", "✓": "+", "✗": "x", "●": "*"})


def ascii_text(text: str) -> str:
    """``text`` with this app's few non-ASCII characters swapped for ASCII (the ASCII theme)."""
    return text.translate(_ASCII_TABLE)


def short_id(aid: str | None, n: int = 6) -> str:
    """The first ``n`` characters of an id and an ellipsis (``9c1e0f…``), ``—`` when there is none."""
    return f"{aid[:n]}…" if aid else "—"


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
    "starting": "muted",
    "not_started": "error",
    "crash_looping": "error",
}


def status_class(status: RunDisplayStatus | StateStatus) -> str:
    """A colour role for a status: ``success``, ``error``, ``warning``, ``running`` or ``muted``."""
    return _STATUS_CLASS[status.value]
