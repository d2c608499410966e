"""Live IO (ENGINE-SPEC §11.1): transport calls with fact recording, recorded time and randomness.

One ``LiveIo`` serves one attempt of one state. A call with a fact key whose key is already bound
in the run's fact index returns the recorded payload without touching the transport (dedupe across
retries, orphan recovery and resume). Otherwise the response is canonically encoded, stored as a
``FactPayload`` artifact (verified put), bound in memory and durably announced with a
``fact_recorded`` event that bypasses the event profile.

Side-effect safety (§0.10): for a state whose meta is ``ApplySideEffect`` with ``Idempotency::Key``,
a call made *without* a fact key gets one derived from that idempotency key
(:func:`side_effect_fact_key`), so a crash and resume never apply the effect twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine._kinds import ArtifactKind
from engine._secrets import contains_secrets
from engine.artifacts import check_content_address, read_canonical_json, verified_put_bytes
from engine.errors import ErrorCategory, IoError, MfmError, StorageError, StorageErrorKind
from engine.events import fact_event
from engine.hashing import CanonicalJsonError, artifact_id_for_bytes, canonical_json_bytes
from engine.ids import ArtifactId, RunId, StateId
from engine.io import IoCall, IoResult
from engine.transport import LiveTransport, LiveTransportFactory, TransportContext

if TYPE_CHECKING:
    from engine._runtime.clock import Clock, Sleeper
    from engine._runtime.facts import FactIndex
    from engine._runtime.writer import EventWriter
    from engine.config import RunConfig
    from engine.engine import Stores

__all__ = ["LiveIo", "derived_fact_key", "side_effect_fact_key"]


def derived_fact_key(kind: str, run_id: RunId | str, state_id: StateId | str, attempt: int, ordinal: int) -> str:
    """``mfm:<kind>|run:<run_uuid>|state:<state_id>|attempt:<n>|ord:<n>`` (time and random facts)."""
    return f"mfm:{kind}|run:{run_id}|state:{state_id}|attempt:{attempt}|ord:{ordinal}"


def side_effect_fact_key(state_id: StateId | str, idempotency_key: str, call: int = 0) -> str:
    """The fact key of the ``call``-th unkeyed IO call of an ``ApplySideEffect`` state (§0.10).

    It contains neither the run id nor the attempt, so every attempt (and every resume) of the
    state sees the first recorded response and never reaches the transport again.
    """
    return f"mfm:side_effect|state:{state_id}|idempotency:{idempotency_key}|call:{call}"


def payload_read_error(exc: MfmError) -> IoError:
    """Map a fact payload read failure: corruption codes pass through, others → ``fact_payload_get_failed``."""
    if isinstance(exc, StorageError) and exc.kind is StorageErrorKind.CORRUPTION:
        return IoError.other(exc.code, exc.message, category=ErrorCategory.STORAGE)
    if isinstance(exc, IoError):
        return exc
    return IoError.other(
        "fact_payload_get_failed", f"fact payload could not be read: {exc.message}", category=ErrorCategory.STORAGE
    )


class _AttemptIo:
    """What live and replay IO share: identity of the attempt and the derived-key ordinal."""

    def __init__(
        self,
        *,
        run_id: RunId,
        state_id: StateId,
        attempt: int,
        facts: FactIndex,
        stores: Stores,
        side_effect_key: str | None = None,
        fact_run_id: RunId | None = None,
    ) -> None:
        self.run_id = run_id
        self.state_id = state_id
        self.attempt = attempt
        self.facts = facts
        self.stores = stores
        self.side_effect_key = side_effect_key
        self._fact_run_id = fact_run_id or run_id
        self._ordinal = 0
        self._unkeyed_calls = 0

    def _next_derived_key(self, kind: str) -> str:
        key = derived_fact_key(kind, self._fact_run_id, self.state_id, self.attempt, self._ordinal)
        self._ordinal += 1
        return key

    def _effective_key(self, call: IoCall) -> str | None:
        if call.fact_key is not None:
            return str(call.fact_key)
        if self.side_effect_key is None:
            return None
        n = self._unkeyed_calls
        self._unkeyed_calls += 1
        return side_effect_fact_key(self.state_id, self.side_effect_key, n)

    async def get_recorded_fact(self, key: str) -> ArtifactId | None:
        return self.facts.get(key)

    async def _read_json(self, payload_id: ArtifactId) -> Any:
        try:
            return await read_canonical_json(self.stores.artifacts, payload_id)
        except MfmError as exc:
            raise payload_read_error(exc) from None

    async def _read_raw(self, payload_id: ArtifactId) -> bytes:
        try:
            data = bytes(await self.stores.artifacts.get(payload_id))
            check_content_address(payload_id, data)
            return data
        except MfmError as exc:
            raise payload_read_error(exc) from None


class LiveIo(_AttemptIo):
    """``IoProvider`` for one live attempt."""

    def __init__(
        self,
        *,
        run_id: RunId,
        state_id: StateId,
        attempt: int,
        facts: FactIndex,
        stores: Stores,
        run_config: RunConfig,
        factory: LiveTransportFactory,
        writer: EventWriter,
        clock: Clock,
        sleeper: Sleeper,
        random_source: Callable[[int], bytes] | None = None,
        side_effect_key: str | None = None,
    ) -> None:
        super().__init__(
            run_id=run_id,
            state_id=state_id,
            attempt=attempt,
            facts=facts,
            stores=stores,
            side_effect_key=side_effect_key,
        )
        self.run_config = run_config
        self._factory = factory
        self._writer = writer
        self._clock = clock
        self._sleeper = sleeper
        self._random = random_source or os.urandom
        self._transport: LiveTransport | None = None

    def _get_transport(self) -> LiveTransport:
        if self._transport is None:
            self._transport = self._factory.make(
                TransportContext(
                    stores=self.stores,
                    run_id=self.run_id,
                    state_id=self.state_id,
                    attempt=self.attempt,
                    run_config=self.run_config,
                )
            )
        return self._transport

    async def call(self, call: IoCall) -> IoResult:
        key = self._effective_key(call)
        if key is None:
            response = await self._get_transport().call(call.namespace, call.request)
            return IoResult(response=response, recorded_payload_id=None)
        bound = self.facts.get(key)
        if bound is not None:
            return IoResult(response=await self._read_json(bound), recorded_payload_id=bound)
        _check_key(key)
        transport = self._get_transport()
        keyed = getattr(transport, "call_keyed", None)  # a transport that needs the fact key (child runs, §16)
        if keyed is not None:
            response = await keyed(call.namespace, call.request, key)
        else:
            response = await transport.call(call.namespace, call.request)
        payload_id = await self._record_bytes(key, _encode_fact(response))
        if payload_id is None:  # bound meanwhile by a concurrent attempt: first binding wins
            bound = self.facts.get(key)
            assert bound is not None
            return IoResult(response=await self._read_json(bound), recorded_payload_id=bound)
        return IoResult(response=response, recorded_payload_id=payload_id)

    async def record_value(self, key: str, value: Any) -> ArtifactId:
        data = _encode_fact(value)
        bound = self.facts.get(key)
        if bound is not None:
            if artifact_id_for_bytes(data) != bound:
                raise _conflict(key)
            return bound
        _check_key(key)
        pid = await self._record_bytes(key, data)
        if pid is None:
            bound = self.facts.get(key)
            if bound is None or artifact_id_for_bytes(data) != bound:
                raise _conflict(key)
            return bound
        return pid

    async def now_millis(self) -> int:
        key = self._next_derived_key("now_millis")
        value = self._clock.now_millis()
        data = _encode_fact(value)
        bound = self.facts.get(key)
        if bound is not None:
            if artifact_id_for_bytes(data) != bound:
                raise _conflict(key)
            return value
        await self._record_bytes(key, data)
        return value

    async def random_bytes(self, n: int) -> bytes:
        key = self._next_derived_key("random_bytes")
        bound = self.facts.get(key)
        if bound is not None:
            return await self._read_raw(bound)
        data = bytes(self._random(n))
        if len(data) != n:
            raise IoError.other("random_unavailable", f"random source returned {len(data)} bytes, not {n}")
        await self._record_bytes(key, data)
        return data

    async def sleep_ms(self, ms: int) -> None:
        if ms > 0:
            await self._sleeper.sleep(ms / 1000)

    async def _record_bytes(self, key: str, data: bytes) -> ArtifactId | None:
        """Store, bind, append ``fact_recorded``; ``None`` if another attempt bound ``key`` first."""
        try:
            pid = await verified_put_bytes(self.stores.artifacts, ArtifactKind.FACT_PAYLOAD, data)
        except MfmError as exc:
            raise IoError.other(
                "fact_payload_put_failed",
                f"fact payload could not be stored: {exc.message}",
                category=ErrorCategory.STORAGE,
            ) from None
        if self.facts.bind_if_unbound(key, pid) != pid:
            return None
        try:
            await self._writer.append([fact_event(key, pid)])
        except MfmError as exc:
            self.facts.unbind(key, pid)
            if exc.code == "secrets_detected":
                raise IoError.other("secrets_detected", "fact key looks secret; fact not recorded") from None
            raise IoError.other(
                "fact_binding_append_failed",
                f"fact_recorded could not be appended: {exc.message}",
                category=ErrorCategory.STORAGE,
            ) from None
        return pid


def _check_key(key: str) -> None:
    if contains_secrets(key):
        raise IoError.other("secrets_detected", "fact key looks secret; refusing to record it")


def _conflict(key: str) -> IoError:
    shown = "<redacted>" if contains_secrets(key) else key
    return IoError.other(
        "fact_payload_conflict",
        f"fact {shown} is already bound to a different payload",
        category=ErrorCategory.STORAGE,
    )


def _encode_fact(value: Any) -> bytes:
    try:
        return canonical_json_bytes(value)
    except CanonicalJsonError as exc:
        if exc.is_secret:
            raise IoError.other(
                "secrets_detected", "fact payload contains secret-looking content; not recorded"
            ) from None
        raise IoError.other(
            "fact_payload_not_canonical",
            f"fact payload is not canonical JSON: {exc}",
            category=ErrorCategory.PARSING_INPUT,
        ) from None
