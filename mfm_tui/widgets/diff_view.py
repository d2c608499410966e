"""A JSON-aware diff of one document pair: changed paths first (``+ added``, ``- removed``, ``~ changed old → new``),
then the whole document with the changes marked in place."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.widgets import Static

from mfm_tui.json_diff import annotated_lines, diff_json, summarize

__all__ = ["DiffView", "diff_text"]

_STYLES = {"+": "diff-view--added", "-": "diff-view--removed", "~": "diff-view--changed"}


def diff_text(
    name: str,
    old: Any,
    new: Any,
    *,
    styles: dict[str, str] | None = None,
    arrow: str = "→",
    ellipsis: str = "…",
    document: bool = True,
) -> Text:
    """The text of one section (``styles``: sign → rich style)."""
    styles = styles or {}
    changes = diff_json(old, new)
    text = Text(no_wrap=False)
    text.append(f"{name}  ", style="bold")
    text.append(summarize(changes))
    text.append("\n")
    for change in changes:
        text.append("  " + change.line(arrow=arrow, ellipsis=ellipsis) + "\n", style=styles.get(change.kind.sign, ""))
    if document and changes:
        text.append("\n")
        for sign, line in annotated_lines(old, new, ellipsis=ellipsis):
            text.append(f"{sign} {line}\n", style=styles.get(sign, "") if sign != " " else "")
    return text


class DiffView(Static):
    """One section of a diff (``name``, ``old``, ``new``)."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"diff-view--added", "diff-view--removed", "diff-view--changed"}
    """
    | Class | Description |
    | :- | :- |
    | `diff-view--added` | An added path. |
    | `diff-view--removed` | A removed path. |
    | `diff-view--changed` | A changed value. |
    """

    DEFAULT_CSS = """
    DiffView {
        height: auto;
        padding: 0 1 1 1;
        & > .diff-view--added { color: $success; }
        & > .diff-view--removed { color: $error; }
        & > .diff-view--changed { color: $warning; }
    }
    """

    def __init__(self, name: str, old: Any, new: Any, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.section = name
        self.old = old
        self.new = new
        self.ascii_only = ascii_only

    def on_mount(self) -> None:
        self.refresh_text()

    def refresh_text(self) -> None:
        styles = {
            sign: str(self.get_component_rich_style(cls)) if not self.ascii_only else ("bold" if sign != "-" else "")
            for sign, cls in _STYLES.items()
        }
        arrow, ellipsis = ("->", "...") if self.ascii_only else ("→", "…")
        self.update(diff_text(self.section, self.old, self.new, styles=styles, arrow=arrow, ellipsis=ellipsis))
