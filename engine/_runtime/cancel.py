"""Cancellation: the in-process token and the watcher that merges it with cross-process requests (and watches
for the operator's retry-now request during a backoff, polled the same way)."""

from __future__ import annotations

import asyncio
import contextlib

from engine.errors import MfmError
from engine.ids import RunId
from engine.stores import ControlStore

__all__ = ["CancelToken", "CancelWatcher"]


class CancelToken:
    """In-process cancellation of a run (ENGINE-SPEC §0.6): ``cancel(reason)``, ``cancelled``, ``await wait()``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._reason: str | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        if self._reason is None:
            self._reason = reason or "cancelled"
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        return self._reason

    async def wait(self) -> str:
        await self._event.wait()
        return self._reason or "cancelled"


class CancelWatcher:
    """One per invocation: fires ``event`` when the token is cancelled or a control-store request appears.

    The control store is polled every ``poll_interval`` seconds (real time: this is a liveness poll,
    not a backoff, so the injected sleeper is not used for it).
    """

    def __init__(
        self, run_id: RunId, token: CancelToken | None, control: ControlStore | None, poll_interval: float
    ) -> None:
        self.run_id = run_id
        self.event = asyncio.Event()
        self.reason: str | None = None
        self._token = token
        self._control = control
        self._poll_interval = poll_interval
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def cancelled(self) -> bool:
        """Whether the run is cancelled; a cancelled token counts at once (a sequential run may not have yielded to
        the loop since, so ``_watch_token`` may not have run yet)."""
        if self.reason is not None:  # set by _fire with the event (cheaper than Event.is_set)
            return True
        token = self._token
        if token is not None and token.cancelled:
            self._fire(token.reason or "cancelled")
            return True
        return False

    def _fire(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    async def check_now(self) -> bool:
        """Poll once (used before scheduling starts)."""
        if self._token is not None and self._token.cancelled:
            self._fire(self._token.reason or "cancelled")
        if not self.event.is_set() and self._control is not None:
            with contextlib.suppress(MfmError):
                req = await self._control.cancel_request(self.run_id)
                if req is not None:
                    self._fire(req.reason or "cancel requested")
        return self.event.is_set()

    def start(self) -> None:
        if self._token is not None:
            self._tasks.append(asyncio.ensure_future(self._watch_token(self._token)))
        if self._control is not None:
            self._tasks.append(asyncio.ensure_future(self._poll(self._control)))

    async def _watch_token(self, token: CancelToken) -> None:
        reason = await token.wait()
        self._fire(reason)

    async def _poll(self, control: ControlStore) -> None:
        while not self.event.is_set():
            await asyncio.sleep(self._poll_interval)
            with contextlib.suppress(MfmError):
                req = await control.cancel_request(self.run_id)
                if req is not None:
                    self._fire(req.reason or "cancel requested")

    async def retry_now(self, state_id: str, attempt: int) -> None:
        """Return once a retry-now request for ``(state_id, attempt)`` is in the control store (never without one).

        Polled every ``poll_interval`` seconds of real time, like a cancel request; an unreadable control store
        is retried at the next poll.
        """
        control = self._control
        if control is None:
            await asyncio.Event().wait()  # nothing can ask: wait until the caller stops waiting
            return
        while True:
            with contextlib.suppress(MfmError):
                if await control.retry_now_request(self.run_id, state_id, attempt) is not None:
                    return
            await asyncio.sleep(self._poll_interval)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
