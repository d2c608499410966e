"""Replay IO (ENGINE-SPEC §11.2): every answer comes from the run's recorded facts; no transport exists."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import ErrorCategory, IoError
from engine.hashing import CanonicalJsonError, artifact_id_for_json
from engine.ids import ArtifactId, FactKey, RunId, StateId
from engine.io import IoCall, IoResult
from engine.live_io import _AttemptIo, _conflict

if TYPE_CHECKING:
    from engine._runtime.facts import FactIndex
    from engine.engine import Stores

__all__ = ["ReplayIo"]


class ReplayIo(_AttemptIo):
    """``IoProvider`` for one replay attempt. Writes nothing."""

    def __init__(
        self,
        *,
        run_id: RunId,
        state_id: StateId,
        attempt: int,
        facts: FactIndex,
        stores: Stores,
        missing_fact_retryable: bool = False,
        side_effect_key: str | None = None,
        fact_run_id: RunId | None = None,
    ) -> None:
        super().__init__(
            run_id=run_id,
            state_id=state_id,
            attempt=attempt,
            facts=facts,
            stores=stores,
            side_effect_key=side_effect_key,
            fact_run_id=fact_run_id,
        )
        self.missing_fact_retryable = missing_fact_retryable

    def _bound(self, key: str) -> ArtifactId:
        bound = self.facts.get(key)
        if bound is None:
            raise IoError.missing_fact(FactKey(key), retryable=self.missing_fact_retryable)
        return bound

    async def call(self, call: IoCall) -> IoResult:
        key = self._effective_key(call)
        if key is None:
            raise IoError.missing_fact_key()
        bound = self._bound(key)
        return IoResult(response=await self._read_json(bound), recorded_payload_id=bound)

    async def record_value(self, key: str, value: Any) -> ArtifactId:
        bound = self._bound(key)
        await self._read_json(bound)
        try:
            supplied = artifact_id_for_json(value)
        except CanonicalJsonError:
            raise _conflict(key) from None
        if supplied != bound:
            raise _conflict(key)
        return bound

    async def now_millis(self) -> int:
        key = self._next_derived_key("now_millis")
        value = await self._read_json(self._bound(key))
        if type(value) is not int or value < 0:
            raise IoError.other(
                "fact_payload_invalid",
                "recorded time fact is not an unsigned integer",
                category=ErrorCategory.PARSING_INPUT,
            )
        return value

    async def random_bytes(self, n: int) -> bytes:
        key = self._next_derived_key("random_bytes")
        data = await self._read_raw(self._bound(key))
        if len(data) != n:
            raise IoError.other(
                "fact_payload_invalid",
                f"recorded random fact has {len(data)} bytes, {n} requested",
                category=ErrorCategory.PARSING_INPUT,
            )
        return data

    async def sleep_ms(self, ms: int) -> None:
        return None
