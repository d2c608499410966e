"""A one-line notice that the terminal is below the size the screens are laid out for (80x24)."""

from __future__ import annotations

from textual.widgets import Static

__all__ = ["MIN_HEIGHT", "MIN_WIDTH", "SizeNotice", "too_small_text"]

MIN_WIDTH = 80
MIN_HEIGHT = 24


def too_small_text(width: int, height: int) -> str | None:
    """``terminal too small (60x20, need 80x24)``, or ``None`` when the terminal is big enough."""
    if width >= MIN_WIDTH and height >= MIN_HEIGHT:
        return None
    return f"terminal too small ({width}x{height}, need {MIN_WIDTH}x{MIN_HEIGHT})"


class SizeNotice(Static):
    """Shown (docked at the top of its screen) while the terminal is smaller than ``MIN_WIDTH`` x ``MIN_HEIGHT``.

    Its screen calls ``check`` when it is resized (a hidden widget gets no resize of its own).
    """

    DEFAULT_CSS = """
    SizeNotice {
        dock: top;
        height: 1;
        background: $warning;
        color: $background;
        text-style: bold;
        display: none;
    }
    """

    def on_mount(self) -> None:
        self.check(self.app.size.width, self.app.size.height)

    def check(self, width: int, height: int) -> None:
        text = too_small_text(width, height)
        self.display = text is not None
        if text is not None:
            self.update(" " + text)
