"""``?``: every binding of the screen it was opened from, then the app-wide keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["HelpEntry", "HelpScreen", "help_text"]


@dataclass(frozen=True, slots=True)
class HelpEntry:
    keys: str
    description: str
    group: str


def help_text(entries: Sequence[HelpEntry]) -> Text:
    text = Text(no_wrap=False)
    width = max((len(e.keys) for e in entries), default=4)
    group = None
    for entry in entries:
        if entry.group != group:
            if group is not None:
                text.append("\n")
            text.append(f"{entry.group}\n", style="bold underline")
            group = entry.group
        text.append(f"  {entry.keys.ljust(width)}  ", style="bold")
        text.append(f"{entry.description}\n")
    return text


class HelpScreen(ModalScreen[None]):
    """The key map of the current screen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close help"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape, question_mark, q | Close the help. |
    """

    def __init__(self, entries: Sequence[HelpEntry], *, title: str = "Keys") -> None:
        super().__init__()
        self.entries = list(entries)
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box") as box:
            box.border_title = self.title_text
            with VerticalScroll(id="help-scroll"):
                yield Static(help_text(self.entries), id="help-body")
            yield Static("esc close", id="help-hint")

    def action_close(self) -> None:
        self.dismiss(None)
