"""``EventDialog``: one event's full envelope as pretty JSON (``enter`` on a line of the run screen's log)."""

from __future__ import annotations

import json
from typing import ClassVar

from rich.syntax import Syntax
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from mfm_tui.clipboard import copy_text

__all__ = ["EventDialog"]


class EventDialog(ModalScreen[None]):
    """One event's full envelope as pretty JSON; ``y`` copies it, ``esc`` closes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "dismiss", "Close"),
        Binding("y", "copy", "Copy JSON"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape,enter,q | Close the dialog. |
    | y | Copy the envelope's JSON (OSC 52). |
    """

    def __init__(self, seq: int, raw: bytes) -> None:
        super().__init__()
        self.seq = seq
        try:
            self.text = json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
        except ValueError:
            self.text = raw.decode("utf-8", "replace")

    def compose(self) -> ComposeResult:
        with Vertical(id="event-box") as box:
            box.border_title = f"Event seq {self.seq}"
            with VerticalScroll():
                yield Static(Syntax(self.text, "json", theme="ansi_dark", word_wrap=True, background_color="default"))
            yield Static("y copy JSON   esc close", id="event-hint")

    def action_copy(self) -> None:
        copy_text(self.app, self.text, f"event {self.seq}")
