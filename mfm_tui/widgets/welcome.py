"""Shown instead of the runs list while the store has no runs: what mfm does and how to start."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

__all__ = ["DEMO_OPERATIONS", "Welcome"]

DEMO_OPERATIONS: tuple[tuple[str, str], ...] = (
    ("demo_pipeline", "runs a real program, transforms its output"),
    ("demo_flaky", "fails a few times, then succeeds: watch the retries"),
    ("demo_fanout", "processes items in parallel, then joins them"),
    ("demo_side_effect", "writes a file exactly once, even across a crash"),
    ("demo_fix", "stops until you create a file, then resume it"),
    ("demo_big", "many states and events, to watch at scale"),
)


def welcome_text(read_only: bool = False) -> Text:
    text = Text(no_wrap=False)
    text.append("No runs yet.\n\n", style="bold")
    text.append("mfm runs durable, event-sourced state machines, and this screen watches\n")
    text.append("and steers them: every step is recorded, so a run survives a crash and\n")
    text.append("can be resumed or replayed.\n\n")
    text.append("Demo operations\n", style="bold")
    width = max(len(name) for name, _ in DEMO_OPERATIONS)
    for name, line in DEMO_OPERATIONS:
        text.append(f"  {name.ljust(width)}  ", style="bold")
        text.append(f"{line}\n")
    text.append("\n")
    if not read_only:
        text.append("press ")
        text.append("s", style="bold reverse")
        text.append(" to start one, or from a shell:  ")
    else:
        text.append("read-only: start one from a shell:  ")
    text.append("mfm start demo_flaky", style="bold")
    return text


class Welcome(Static):
    """The empty-store welcome."""

    DEFAULT_CSS = """
    Welcome {
        height: 1fr;
        padding: 1 2;
        color: $foreground;
    }
    """

    def __init__(self, *, read_only: bool = False, id: str | None = None) -> None:
        super().__init__(welcome_text(read_only), id=id)
