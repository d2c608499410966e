"""Live transports: what a Live IO call is routed to (ENGINE-SPEC §11.5).

A ``LiveTransportFactory`` declares a namespace group (``exec``, ``proof``, ``local.fs`` …) and
makes one ``LiveTransport`` per attempt. Transports raise ``IoError`` on failure and must be
cancellation-safe: when the attempt's asyncio task is cancelled (run cancelled), a transport
that owns a child process terminates it (SIGTERM, then SIGKILL after a grace period), reaps it,
and re-raises ``asyncio.CancelledError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from engine.ids import RunId, StateId

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.engine import Stores

__all__ = ["LiveTransport", "LiveTransportFactory", "TransportContext"]


@dataclass(frozen=True, slots=True)
class TransportContext:
    """Who a transport serves: one attempt of one state of one run."""

    stores: Stores
    run_id: RunId
    state_id: StateId
    attempt: int
    run_config: RunConfig


@runtime_checkable
class LiveTransport(Protocol):
    async def call(self, namespace: str, request: Any) -> Any:
        """Perform the call; return a JSON value or raise ``IoError``."""
        ...


@runtime_checkable
class LiveTransportFactory(Protocol):
    @property
    def namespace_group(self) -> str: ...

    def make(self, context: TransportContext) -> LiveTransport: ...
