"""Confirmation dialogs for the controls (cancel, resume, replay, bulk) and the seq prompt of time travel.

A ``ConfirmDialog`` names what will happen and dismisses with ``True`` (confirmed) or ``False``. A bulk
confirmation asks the operator to type the number of runs affected (``type_count``); nothing else confirms it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

__all__ = ["ConfirmDialog", "SeqPrompt", "lines_text"]

_CSS = """
ConfirmDialog, SeqPrompt {
    align: center middle;
    background: $background 60%;
}
ConfirmDialog > #confirm-box, SeqPrompt > #confirm-box {
    width: 76;
    max-width: 95%;
    height: auto;
    max-height: 90%;
    padding: 1 2;
    border: round $warning;
    border-title-color: $warning;
    border-title-style: bold;
    background: $surface;
}
ConfirmDialog.-danger > #confirm-box { border: round $error; border-title-color: $error; }
#confirm-body { height: auto; }
#confirm-input { margin-top: 1; width: 24; }
#confirm-error { height: auto; color: $error; }
#confirm-hint { height: 1; margin-top: 1; color: $text-muted; }
App.-theme-mfm-ascii ConfirmDialog > #confirm-box,
App.-theme-mfm-ascii SeqPrompt > #confirm-box { border: ascii $foreground; }
"""


def lines_text(lines: Sequence[str]) -> Text:
    """A dialog body from its lines: the first (the question) bold."""
    text = Text()
    for i, line in enumerate(lines):
        text.append(line, style="bold" if i == 0 else "")
        if i < len(lines) - 1:
            text.append("\n")
    return text


class ConfirmDialog(ModalScreen[bool]):
    """``body`` and a hint; ``y``/``enter`` confirms (bulk: type ``type_count``, ``enter``); ``esc``/``n`` backs out."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "answer(False)", "Back out"),
        Binding("y", "answer(True)", "Confirm", show=False),
        Binding("n", "answer(False)", "No", show=False),
        Binding("enter", "confirm", "Confirm"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape, n | Back out. |
    | y | Confirm (not a bulk action). |
    | enter | Confirm (bulk: once the count is typed). |
    """

    CSS = _CSS  # app-level rules: the dim see-through backdrop must beat `Screen { background }` of app.tcss

    def __init__(
        self,
        title: str,
        body: Text | str,
        *,
        confirm_label: str = "confirm",
        type_count: int | None = None,
        danger: bool = False,
    ) -> None:
        super().__init__(classes="-danger" if danger else None)
        self.title_text = title
        self.body = body
        self.confirm_label = confirm_label
        self.type_count = type_count

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box") as box:
            box.border_title = self.title_text
            yield Static(self.body, id="confirm-body")
            if self.type_count is not None:
                yield Input(placeholder=f"type {self.type_count}", id="confirm-input", compact=True)
                yield Static("", id="confirm-error")
                hint = f"type {self.type_count} then enter: {self.confirm_label}   esc back out"
            else:
                hint = f"y / enter: {self.confirm_label}   esc / n: back out"
            yield Static(hint, id="confirm-hint")

    def on_mount(self) -> None:
        if self.type_count is not None:
            box = self.query_one("#confirm-input", Input)
            box.cursor_blink = False
            box.focus()

    def action_answer(self, value: bool) -> None:
        if value and self.type_count is not None:
            return  # a bulk action is confirmed only by typing the count
        self.dismiss(value)

    def action_confirm(self) -> None:
        if self.type_count is None:
            self.dismiss(True)
        else:
            self._check_typed(self.query_one("#confirm-input", Input).value)

    @on(Input.Submitted, "#confirm-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._check_typed(event.value)

    def _check_typed(self, value: str) -> None:
        if value.strip() == str(self.type_count):
            self.dismiss(True)
        else:
            self.query_one("#confirm-error", Static).update(f"type exactly {self.type_count} to confirm")


class SeqPrompt(ModalScreen[int | None]):
    """Time travel: ``jump to seq`` (1 … ``last``); dismisses with the seq or ``None``."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Back out")]
    """
    | Key(s) | Description |
    | :- | :- |
    | escape | Back out. |
    """

    CSS = _CSS  # app-level rules: the dim see-through backdrop must beat `Screen { background }` of app.tcss

    def __init__(self, last: int) -> None:
        super().__init__()
        self.last = last

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box") as box:
            box.border_title = "Jump to seq"
            yield Static(f"show the run as it was at an event seq, 1 to {self.last}", id="confirm-body")
            yield Input(placeholder="seq", id="confirm-input", compact=True, type="integer")
            yield Static("", id="confirm-error")
            yield Static("enter jump   esc back out", id="confirm-hint")

    def on_mount(self) -> None:
        box = self.query_one("#confirm-input", Input)
        box.cursor_blink = False
        box.focus()

    @on(Input.Submitted, "#confirm-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            seq = int(event.value)
        except ValueError:
            seq = 0
        if 1 <= seq <= self.last:
            self.dismiss(seq)
        else:
            self.query_one("#confirm-error", Static).update(f"a seq from 1 to {self.last}")

    def action_cancel(self) -> None:
        self.dismiss(None)
