"""RunScreen's time travel: ``[`` / ``]`` step one event, ``t`` jumps to a seq, ``esc`` returns to live. The screen then
shows a past model folded from events 1..seq (``view_model``) and the time of that event (``_now``).
"""

from __future__ import annotations

import bisect
import contextlib
from typing import TYPE_CHECKING

from textual.widgets import Static

from engine.errors import MfmError
from engine.events import EventEnvelope, decode_envelope
from engine.ids import RunId
from engine.runtime import Clock
from mfm_tui.log_index import (
    FOLD_NEEDLES as _FOLD_NEEDLES,
)
from mfm_tui.log_index import FileLogSource, LogSource, summarize
from mfm_tui.run_model import LeaseStatus, RunModel
from mfm_tui.screens.confirm import SeqPrompt
from mfm_tui.widgets.event_log import EventLog

if TYPE_CHECKING:
    from textual.screen import Screen

    _Base = Screen[None]
else:
    _Base = object


class TimeTravelMixin(_Base):
    """Time travel over the run's events; mixed into ``RunScreen`` (which owns the state it uses)."""

    run_id: RunId
    model: RunModel
    source: LogSource
    as_of: int | None
    _past: RunModel | None
    _past_millis: int | None
    _history: tuple[int, list[EventEnvelope]] | None

    if TYPE_CHECKING:

        @property
        def clock(self) -> Clock: ...

        @property
        def ascii_only(self) -> bool: ...

        def _render_all(self) -> None: ...

        def _decode_range(self, start: int, stop: int) -> list[EventEnvelope]: ...

    @property
    def view_model(self) -> RunModel:
        """The model shown: the live one, or the run as of ``as_of`` while time travelling."""
        return self._past if self.as_of is not None and self._past is not None else self.model

    def _now(self) -> int:
        if self.as_of is not None and self._past_millis is not None:
            return self._past_millis
        return self.clock.now_millis()

    def action_history(self, step: int) -> None:
        last = len(self.source)
        if last == 0:
            return
        current = self.as_of if self.as_of is not None else last
        target = max(1, min(last, current + step))
        self.set_as_of(None if target >= last and step > 0 else target)

    def action_jump_seq(self) -> None:
        last = len(self.source)
        if last:
            self.app.push_screen(SeqPrompt(last), self.set_as_of)

    def set_as_of(self, seq: int | None) -> None:
        """Show the run as it was after event ``seq`` (``None``: live again)."""
        if seq is not None and seq > len(self.source):
            seq = None
        self.as_of = seq
        banner = self.query_one("#time-banner", Static)
        if seq is None:
            self._past = None
            self._past_millis = None
            self._history = None
            banner.update("")
            self.remove_class("-time-travel")
        else:
            self._past, self._past_millis = self._fold_until(seq)
            dash = "-" if self.ascii_only else "—"
            banner.update(f" as of seq {seq} of {len(self.source)} {dash} [ ] step, t jump, esc returns to live")
            self.add_class("-time-travel")
            log = self.query_one(EventLog)
            if not log.filter.active:
                if log.follow:
                    log.action_toggle_follow()
                log.cursor = seq - 1
        self._render_all()

    def _fold_until(self, seq: int) -> tuple[RunModel, int | None]:
        """A fresh model of events 1..``seq``. For an events file only the lines the model needs are decoded
        (kernel, facts, retries: raw-byte scans, cached while time travelling), as in ``_fold_file``."""
        live = self.model
        past = RunModel(self.run_id, plan=live.plan, manifest=live.manifest, lease=LeaseStatus.NONE)
        src = self.source
        if not isinstance(src, FileLogSource):
            envs = self._decode_range(0, seq)
            past.apply(envs)
            return past, envs[-1].ts_millis if envs else None
        cache = self._history
        if cache is None or cache[0] < seq:
            total = len(src)
            wanted = src.lines_containing(_FOLD_NEEDLES, total)
            decoded: list[EventEnvelope] = []
            for start in range(0, len(wanted), 4096):
                for raw in src.read_lines(wanted[start : start + 4096]):
                    with contextlib.suppress(MfmError):
                        decoded.append(decode_envelope(raw))
            cache = self._history = (total, decoded)
        for env in cache[1][: bisect.bisect_right(cache[1], seq, key=lambda e: e.seq)]:
            past.last_seq = env.seq - 1  # the lines skipped are domain events the model only counts
            past.apply((env,))
        past.event_count = past.last_seq = seq
        last_raw = src.raw(seq - 1)
        return past, summarize(last_raw).ts_millis if last_raw is not None else None
