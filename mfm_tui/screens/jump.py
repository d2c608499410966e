"""``:`` jumps between views, as in k9s: ``runs``, ``workers``, or a run by id prefix.

:func:`resolve_jump` is pure (tested without a terminal); :class:`JumpPrompt` is the one-line prompt whose answer
the app turns into a view.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

__all__ = ["VIEWS", "Jump", "JumpPrompt", "resolve_jump"]

VIEWS = {"runs": "runs", "run": "runs", "r": "runs", "home": "runs", "workers": "workers", "w": "workers"}
"""View names (and their short forms) ``:`` accepts besides a run id prefix."""


@dataclass(frozen=True, slots=True)
class Jump:
    """Where ``:text`` goes: a view (``runs``, ``workers``), a run, or nowhere (``error = (code, message)``)."""

    view: str | None = None
    run_id: str | None = None
    error: tuple[str, str] | None = None


def resolve_jump(text: str, run_ids: Iterable[str]) -> Jump:
    word = text.strip().lower().removeprefix(":")
    if not word:
        return Jump(error=("usage", "type runs, workers or a run id prefix"))
    if word in VIEWS:
        return Jump(view=VIEWS[word])
    matches = sorted(r for r in run_ids if str(r).startswith(word))
    if len(matches) == 1:
        return Jump(run_id=matches[0])
    if not matches:
        return Jump(error=("run_not_found", f"no view or run matches {text.strip()!r} (views: runs, workers)"))
    shown = ", ".join(m[:8] for m in matches[:6]) + (" …" if len(matches) > 6 else "")
    return Jump(error=("run_id_ambiguous", f"{text.strip()!r} matches {len(matches)} runs: {shown}"))


class JumpPrompt(ModalScreen[str | None]):
    """A one-line prompt at the bottom: ``enter`` answers its text, ``esc`` answers ``None``.

    | Key(s) | Description |
    | :- | :- |
    | enter | Jump. |
    | escape | Back out. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss_prompt", "Back out")]

    DEFAULT_CSS = """
    JumpPrompt { align: left bottom; background: $background 0%; }
    JumpPrompt > #jump-box { height: auto; width: 100%; background: $panel; }
    JumpPrompt #jump-hint { height: 1; padding: 0 1; color: $text-muted; }
    JumpPrompt #jump-input { border: none; height: 1; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with Vertical(id="jump-box"):
            yield Static("jump to: runs · workers · a run id prefix   (enter: go, esc: back)", id="jump-hint")
            yield Input(placeholder=":", id="jump-input")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)

    def action_dismiss_prompt(self) -> None:
        self.dismiss(None)
