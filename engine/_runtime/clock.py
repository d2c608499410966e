"""Injectable time: a wall clock (milliseconds), an async sleeper, and test failpoints."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from engine.ids import StateId

__all__ = ["AsyncioSleeper", "Clock", "Failpoints", "Sleeper", "SystemClock", "as_clock", "as_sleeper"]


@runtime_checkable
class Clock(Protocol):
    """Wall-clock milliseconds since the epoch (``ts_millis``, time facts, retry deadlines)."""

    def now_millis(self) -> int: ...


@runtime_checkable
class Sleeper(Protocol):
    """``await sleep(seconds)``: the retry backoff wait (fake in tests)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now_millis(self) -> int:
        return time.time_ns() // 1_000_000


class AsyncioSleeper:
    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _CallableClock:
    def __init__(self, fn: Callable[[], int]) -> None:
        self._fn = fn

    def now_millis(self) -> int:
        return int(self._fn())


def as_clock(clock: Clock | Callable[[], int] | None) -> Clock:
    """Accept a ``Clock``, a zero-argument callable returning millis, or ``None`` (system clock)."""
    if clock is None:
        return SystemClock()
    if isinstance(clock, Clock):
        return clock
    return _CallableClock(clock)


def as_sleeper(sleeper: Sleeper | None) -> Sleeper:
    return AsyncioSleeper() if sleeper is None else sleeper


@dataclass
class Failpoints:
    """Test failpoints (ENGINE-SPEC §8 step 7).

    ``stop_after_handler_once``: the next attempt whose handler returns (success or failure) stops
    the invocation as if the process died: nothing more is written, the attempt stays open and the
    call returns phase ``Running``. ``stop_after_handler_states`` limits it to some states.
    """

    stop_after_handler_once: bool = False
    stop_after_handler_states: frozenset[StateId] | None = None
    fired: list[StateId] = field(default_factory=list)

    @classmethod
    def stop_after_handler(cls, *states: str) -> Failpoints:
        return cls(
            stop_after_handler_once=True,
            stop_after_handler_states=frozenset(StateId(s) for s in states) if states else None,
        )

    def take_stop_after_handler(self, state_id: StateId) -> bool:
        """True (and disarm) when armed for ``state_id``."""
        if not self.stop_after_handler_once:
            return False
        if self.stop_after_handler_states is not None and state_id not in self.stop_after_handler_states:
            return False
        self.stop_after_handler_once = False
        self.fired.append(state_id)
        return True
