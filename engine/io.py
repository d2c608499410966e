"""IO calls and the provider a state uses for them (the seed's ``io`` module).

A state never talks to the outside world directly: it calls ``io.call(IoCall(...))``. In Live
mode the call goes to a transport and, with a ``fact_key``, its response is recorded as a fact;
in Replay mode the recorded fact is returned and no transport exists.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from engine._wire import Frozen, WireJsonValue
from engine.ids import ArtifactId, FactKey

__all__ = ["IoCall", "IoProvider", "IoResult"]


class IoCall(Frozen):
    """A request to the transport registered for ``namespace``."""

    namespace: str
    request: WireJsonValue
    fact_key: FactKey | None = None


class IoResult(Frozen):
    response: WireJsonValue
    recorded_payload_id: ArtifactId | None = None


@runtime_checkable
class IoProvider(Protocol):
    """Live or replay IO for one attempt of one state."""

    async def call(self, call: IoCall) -> IoResult: ...

    async def record_value(self, key: str, value: Any) -> ArtifactId: ...

    async def get_recorded_fact(self, key: str) -> ArtifactId | None: ...

    async def now_millis(self) -> int: ...

    async def random_bytes(self, n: int) -> bytes: ...

    async def sleep_ms(self, ms: int) -> None: ...
