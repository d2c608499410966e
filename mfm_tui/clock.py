"""Wall-clock milliseconds, injectable: the app, the run model's timers and the tests share one ``Clock``."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FrozenClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    def now_millis(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_millis(self) -> int:
        return time.time_ns() // 1_000_000


class FrozenClock:
    """A clock that only moves when told to (tests, snapshots)."""

    def __init__(self, now_millis: int = 1_767_225_600_000) -> None:
        self._now = now_millis

    def now_millis(self) -> int:
        return self._now

    def advance(self, millis: int) -> None:
        self._now += millis

    def set(self, now_millis: int) -> None:
        self._now = now_millis
