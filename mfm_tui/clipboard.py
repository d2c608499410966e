"""Copy text to the user's clipboard with OSC 52, which terminals honour over SSH (and tmux with set-clipboard on).

Textual's ``App.copy_to_clipboard`` writes the same OSC 52 sequence; this module adds the pure encoder (tested),
a size guard (many terminals drop sequences beyond ~100 KB) and a tmux passthrough for older tmux setups.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textual.app import App

__all__ = ["MAX_OSC52_BYTES", "copy_text", "osc52_sequence"]

MAX_OSC52_BYTES = 100_000


def osc52_sequence(text: str, *, tmux: bool = False) -> str:
    """``ESC ] 52 ; c ; <base64> BEL``, wrapped in a tmux DCS passthrough when asked."""
    payload = base64.b64encode(text.encode("utf-8")).decode("ascii")
    seq = f"\x1b]52;c;{payload}\a"
    if tmux:
        return "\x1bPtmux;" + seq.replace("\x1b", "\x1b\x1b") + "\x1b\\"
    return seq


def copy_text(app: App[Any], text: str, what: str) -> bool:
    """Copy ``text`` through the app (OSC 52) and tell the user; refuse (and say so) when it is too large."""
    size = len(text.encode("utf-8"))
    if size > MAX_OSC52_BYTES:
        app.notify(f"{what} is {size:,} bytes: too large for the terminal clipboard", severity="warning")
        return False
    app.copy_to_clipboard(text)
    hint = " (tmux: set -g set-clipboard on)" if os.environ.get("TMUX") else ""
    app.notify(f"copied {what}{hint}", timeout=3)
    return True
