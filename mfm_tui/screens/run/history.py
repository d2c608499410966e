"""``RunHistory``: time travel's folds, the run as it was after an event seq (``[`` / ``]`` / ``t`` on the run screen).

For an events file only the lines the model needs are decoded (kernel events, facts, retries: raw-byte scans, cached
while time travelling), as in the first fold (``mfm_tui.log_index.fold_file``).
"""

from __future__ import annotations

import bisect
import contextlib

from engine.errors import MfmError
from engine.events import EventEnvelope, decode_envelope
from mfm_tui.log_index import FOLD_NEEDLES, FileLogSource, summarize
from mfm_tui.run_model import LeaseStatus, RunModel
from mfm_tui.screens.run.loader import RunLoader

__all__ = ["RunHistory"]


class RunHistory:
    """Past models of the run that ``loader`` reads."""

    def __init__(self, loader: RunLoader) -> None:
        self.loader = loader
        self._decoded: tuple[int, list[EventEnvelope]] | None = None
        """The decoded kernel/fact/retry envelopes of the events file, and how many lines they cover."""

    def clear(self) -> None:
        """Back to live: forget the decoded lines."""
        self._decoded = None

    def fold_until(self, seq: int) -> tuple[RunModel, int | None]:
        """A fresh model of events 1..``seq`` and the time of event ``seq`` (``None`` when unknown)."""
        live = self.loader.model
        past = RunModel(live.run_id, plan=live.plan, manifest=live.manifest, lease=LeaseStatus.NONE)
        src = self.loader.source
        if not isinstance(src, FileLogSource):
            envs = self.loader.decode_range(0, seq)
            past.apply(envs)
            return past, envs[-1].ts_millis if envs else None
        cache = self._decoded
        if cache is None or cache[0] < seq:
            total = len(src)
            wanted = src.lines_containing(FOLD_NEEDLES, total)
            decoded: list[EventEnvelope] = []
            for start in range(0, len(wanted), 4096):
                for raw in src.read_lines(wanted[start : start + 4096]):
                    with contextlib.suppress(MfmError):
                        decoded.append(decode_envelope(raw))
            cache = self._decoded = (total, decoded)
        for env in cache[1][: bisect.bisect_right(cache[1], seq, key=lambda e: e.seq)]:
            past.last_seq = env.seq - 1  # the lines skipped are domain events the model only counts
            past.apply((env,))
        past.event_count = past.last_seq = seq
        last_raw = src.raw(seq - 1)
        return past, summarize(last_raw).ts_millis if last_raw is not None else None
