"""Dialogs: an error (code + message, never a traceback)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["ErrorDialog"]


class ErrorDialog(ModalScreen[None]):
    """``[code] message`` in a box; ``esc`` or ``enter`` closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "dismiss_dialog", "Close"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape, enter, q | Close the dialog. |
    """

    def __init__(self, code: str, message: str, *, title: str = "Error") -> None:
        super().__init__()
        self.code = code
        self.message = message
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error-dialog") as box:
            box.border_title = self.title_text
            body = Text()
            body.append(f"[{self.code}]", style="bold")
            body.append(f" {self.message}")
            yield Static(body, id="dialog-body")
            yield Static("esc close", id="dialog-hint")

    def action_dismiss_dialog(self) -> None:
        self.dismiss(None)
