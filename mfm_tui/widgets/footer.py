"""``KeyFooter``: Textual's ``Footer`` without the two style passes per key each time it is built.

Textual's ``FooterKey`` starts ``compact`` (its default) and is then bound to the footer's ``compact`` (``False``
here): each key of each (re)built footer ran its ``compact`` watcher twice, adding then removing ``-compact``, and
each time Textual applied the stylesheet to that key at once. The run screen's footer is built several times before
its first frame (the bindings change as it mounts and takes the focus): 63 such passes, ~0.15 s of the 1M run's
"spawn -> last event" (issue 15). Here a bound key starts with the footer's value, so nothing flips; what the footer
shows and does is the same.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.reactive import Reactive
from textual.widgets import Footer

__all__ = ["KeyFooter"]


class KeyFooter(Footer):
    """A ``Footer`` (same look, keys, clicks and CSS: ``Footer`` selectors match it) whose keys start in the
    footer's ``compact`` state."""

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            # A key (FooterKey, not public: found by its ``compact`` reactive). The command palette's key is not
            # bound to the footer's compact: it keeps Textual's own start.
            compact = getattr(type(widget), "compact", None)
            if isinstance(compact, Reactive) and not widget.has_class("-command-palette"):
                widget.set_reactive(compact, self.compact)
            yield widget
