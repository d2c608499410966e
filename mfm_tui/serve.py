"""``mfm serve``: the same app in a web browser, through textual-serve.

textual-serve runs a shell command per browser session. That command names THIS interpreter explicitly
(``sys.executable -m mfm_tui … tui``): a bare ``mfm`` or ``python`` could resolve to another environment where the
app cannot start, and the page would still answer 200 while the app behind it has died. Before serving, the same
interpreter is asked to import the app (a broken environment fails here, with its error, instead of in the browser).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.open_store import display_location, is_database_url

__all__ = ["ServeError", "app_command", "preflight", "serve"]


class ServeError(MfmError):
    @classmethod
    def new(cls, code: str, message: str) -> ServeError:
        return cls(ErrorInfo.new(code, message, category=ErrorCategory.UNKNOWN))


def app_command(
    store: str | Path,
    *,
    ops: Sequence[str] = (),
    read_only: bool = False,
    theme: str | None = None,
    python: str | None = None,
) -> str:
    """The shell command textual-serve runs for each browser session.

    A database URL is never put on the command line (``ps`` shows argv to every user, and the URL may
    hold a password): the sessions read it from ``$MFM_STORE``, which :func:`serve` sets.
    """
    parts = [python or sys.executable, "-m", "mfm_tui"]
    if not is_database_url(str(store)):
        parts += ["--store", str(store.absolute()) if isinstance(store, Path) else str(store)]
    for module in ops:
        parts += ["--ops", module]
    parts.append("tui")
    if read_only:
        parts.append("--read-only")
    if theme:
        parts += ["--theme", theme]
    return shlex.join(parts)


def preflight(python: str | None = None) -> None:
    """Check that the interpreter can import the app (else ``serve_app_broken`` with its error)."""
    exe = python or sys.executable
    try:
        proc = subprocess.run(
            [exe, "-c", "import mfm_tui.app, mfm_tui.cli"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServeError.new("serve_app_broken", f"{exe} cannot run the app: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ServeError.new("serve_app_broken", f"{exe} cannot import the app: {last}")


def serve(
    store: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ops: Sequence[str] = (),
    read_only: bool = False,
    theme: str | None = None,
    debug: bool = False,
) -> Any:
    """Serve the app on ``http://host:port`` until interrupted."""
    from textual_serve.server import Server  # optional: only `mfm serve` needs textual-serve (and its aiohttp)

    preflight()
    if is_database_url(str(store)):
        os.environ["MFM_STORE"] = str(store)  # inherited by each session (textual-serve copies os.environ)
    command = app_command(store, ops=ops, read_only=read_only, theme=theme)
    server = Server(command, host=host, port=port, title="mfm")
    shown = display_location(store)
    print(f"serving mfm on http://{host}:{port}  (store {shown}; ctrl+c stops)", flush=True)
    server.serve(debug=debug)
    return server
