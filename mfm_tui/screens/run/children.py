"""``ChildPicker``: the child runs a state spawned (ENGINE-SPEC §16), to drill into one (``enter`` on that state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from engine.ids import RunId
from mfm_tui.glyphs import Glyphs
from mfm_tui.run_model import ChildRef, RunDisplayStatus, RunModel

__all__ = ["ChildPicker", "child_line"]


def child_line(ref: ChildRef, model: RunModel | None, glyphs: Glyphs) -> str:
    """``✓ 54da24cc demo_child  completed  3/3``: a child as its own model shows it (else as its parent joined it)."""
    if model is None:
        status = RunDisplayStatus((ref.status or "running").lower())
        return f"{glyphs.run[status]} {ref.run_id[:8]}  {status.label}"
    done = f"  {model.done}/{model.total}" if model.total else ""
    return f"{glyphs.run[model.status]} {ref.run_id[:8]} {model.op_id or glyphs.dash}  {model.status_label}{done}"


class ChildPicker(ModalScreen[RunId | None]):
    """The children of one state; ``enter`` opens the highlighted child, ``esc`` closes."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,backspace,q", "dismiss_none", "Close")]
    """
    | Key(s) | Description |
    | :- | :- |
    | enter | Open the highlighted child run. |
    | escape, backspace, q | Close. |
    """

    DEFAULT_CSS = """
    ChildPicker { align: center middle; }
    ChildPicker > #children-box {
        width: 64; max-width: 95%; height: auto; max-height: 80%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    ChildPicker #children-list { height: auto; max-height: 20; border: none; background: $surface; }
    ChildPicker #children-hint { color: $text-muted; }
    """

    def __init__(self, title: str, refs: Sequence[ChildRef], models: Mapping[RunId, RunModel], glyphs: Glyphs) -> None:
        super().__init__()
        self.title_text = title
        self.refs = list(refs)
        self.lines = [child_line(ref, models.get(ref.run_id), glyphs) for ref in self.refs]

    def compose(self) -> ComposeResult:
        with Vertical(id="children-box") as box:
            box.border_title = self.title_text
            yield OptionList(
                *(Option(line, id=str(ref.run_id)) for ref, line in zip(self.refs, self.lines, strict=True)),
                id="children-list",
            )
            yield Static("enter open   esc close", id="children-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(RunId(event.option.id) if event.option.id is not None else None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
