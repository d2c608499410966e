"""The exec log: what a run's exec programs print, as they print it, in ``runs/<id>/exec.stdout`` and
``exec.stderr`` (``engine.stores.fs.framing.EXEC_OUTPUT_FILES``), for ``tail -f`` and the TUI's logs view.

Each complete line is appended as ``<state>#<attempt> <line>`` (attempt 1-based) with one ``O_APPEND`` write, so
states running side by side (fan-out) never tear each other's lines; a line that looks secret is withheld (the
worker log's guard, ENGINE-SPEC §12.1) and a very long one is cut. Nothing here decides the run: a failure to write
is logged by the exec runner and the program's output is still captured for its fact.
"""

from __future__ import annotations

import os

from engine.ids import RunId
from engine.process_exec import OutputTap
from engine.stores.fs import framing
from engine.transport import TransportContext
from engine.workers.base import RunFolders
from engine.workers.lease import open_run_file
from engine.workers.pending import redact_log_line

__all__ = ["LINE_LIMIT", "exec_log_tap"]

LINE_LIMIT = 2000
"""Characters kept of one printed line (the rest is cut, with ``…``)."""

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def exec_log_tap(store: RunFolders) -> _Factory:
    """For ``ExecTransportFactory(output_tap=...)``: one tap per exec call, writing into the run's folder."""
    return _Factory(store)


class _Factory:
    def __init__(self, store: RunFolders) -> None:
        self._store = store

    def __call__(self, context: TransportContext) -> OutputTap | None:
        label = f"{str(context.state_id).rsplit('.', 1)[-1]}#{context.attempt + 1}"
        return _Tap(self._store, context.run_id, label)


class _Tap:
    """Line-buffers each stream and appends complete lines (the rest once the stream ends)."""

    def __init__(self, store: RunFolders, run_id: RunId, label: str) -> None:
        self._store = store
        self._run_id = run_id
        self._label = label
        self._pending: dict[str, bytes] = {}

    def __call__(self, stream: str, chunk: bytes) -> None:
        data = self._pending.pop(stream, b"") + chunk
        if chunk:  # else: the stream ended, write what is left
            head, sep, rest = data.rpartition(b"\n")
            if not sep:
                head, rest = b"", data
            if len(rest) > LINE_LIMIT * 4:  # no newline for a long while: write what came so far
                head, rest = data, b""
            if rest:
                self._pending[stream] = rest
            data = head
        if data:
            self._write(stream, data)

    def _write(self, stream: str, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        lines = [f"{self._label} {redact_log_line(line, LINE_LIMIT)}\n" for line in text.splitlines()]
        if not lines:
            return
        fd = open_run_file(self._store, self._run_id, framing.EXEC_OUTPUT_FILES[stream], _FLAGS)
        try:
            for line in lines:
                os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
