"""Redrawing a ``Static`` only when what it shows changes, and re-laying out the screen only when its height does.

``Static.update`` always asks for a layout: the whole screen is reflowed and every widget drawn again. A run
screen redraws its header and state panel on every appended event and every second, mostly with the same text; a
full update there cost most of the time from an append to the line on screen (issue 15).
"""

from __future__ import annotations

from rich.console import RenderableType
from rich.segment import Segment
from textual.widgets import Static

__all__ = ["update_changed"]

_SHOWN = "_mfm_shown_lines"


def update_changed(widget: Static, content: RenderableType) -> bool:
    """Show ``content`` in ``widget`` unless it draws the same lines as now (at the widget's width); a layout only
    when the number of lines changes. Returns whether the widget was updated."""
    width = widget.content_region.width
    if width <= 0 or not widget.is_mounted:
        setattr(widget, _SHOWN, None)
        widget.update(content)
        return True
    console = widget.app.console
    lines: list[list[Segment]] = console.render_lines(content, console.options.update_width(width), pad=False)
    before: list[list[Segment]] | None = getattr(widget, _SHOWN, None)
    if before == lines:
        return False
    setattr(widget, _SHOWN, lines)
    widget.update(content, layout=before is None or len(before) != len(lines))
    return True
