"""The run's fact index (ENGINE-SPEC §11.3): fact key → payload artifact id, single assignment."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from engine._secrets import contains_secrets
from engine.errors import StorageError
from engine.events import DOMAIN_EVENT_FACT_RECORDED, DomainEvent, EventEnvelope, FactRecorded
from engine.ids import ArtifactId, FactKey

__all__ = ["FactIndex"]


class FactIndex:
    """Shared by every state and attempt of one invocation; first durable binding wins."""

    def __init__(self) -> None:
        self.bindings: dict[str, ArtifactId] = {}

    def get(self, key: str) -> ArtifactId | None:
        return self.bindings.get(key)

    def bind_if_unbound(self, key: str, payload_id: ArtifactId) -> ArtifactId:
        """Bind ``key`` unless already bound; return the binding in force."""
        return self.bindings.setdefault(key, payload_id)

    def unbind(self, key: str, payload_id: ArtifactId) -> None:
        if self.bindings.get(key) == payload_id:
            del self.bindings[key]

    def __len__(self) -> int:
        return len(self.bindings)

    @classmethod
    def rebuild(cls, envelopes: Iterable[EventEnvelope]) -> FactIndex:
        """From every ``fact_recorded`` domain event (also inside failed and orphaned attempts)."""
        index = cls()
        payload_ids: dict[str, ArtifactId] = {}  # fact payloads repeat: each id checked once
        for env in envelopes:
            ev = env.event
            # (the exact type first: pydantic models' isinstance goes through ABCMeta)
            if type(ev) is not DomainEvent and not isinstance(ev, DomainEvent):
                continue
            if ev.name != DOMAIN_EVENT_FACT_RECORDED:
                continue
            payload = ev.payload
            # The common shape, checked as FactRecorded would check it (a str key, a valid artifact id, a JSON meta
            # or none, nothing else), without building the model; anything else is judged by the model.
            if (
                type(payload) is dict
                and len(payload) <= 3
                and type(key := payload.get("key")) is str
                and type(pid := payload.get("payload_id")) is str
                and (len(payload) == 2 or "meta" in payload)
                and (payload_id := payload_ids.get(pid) or _artifact_id_or_none(pid, payload_ids)) is not None
            ):
                fact_key: str = FactKey(key)
            else:
                try:
                    fact = FactRecorded.model_validate(payload)
                except (ValidationError, ValueError):
                    raise StorageError.corruption(
                        "fact_recorded_malformed",
                        f"fact_recorded event at seq {env.seq} is malformed",
                        {"seq": env.seq},
                    ) from None
                fact_key, payload_id = fact.key, fact.payload_id
            bound = index.bindings.get(fact_key)
            if bound is None:
                index.bindings[fact_key] = payload_id
            elif bound != payload_id:
                details: dict[str, int | str] = {"seq": env.seq}
                if not contains_secrets(fact_key):
                    details["key"] = fact_key
                raise StorageError.corruption(
                    "fact_recorded_conflict",
                    f"fact_recorded event at seq {env.seq} rebinds a key to a different payload",
                    details,  # type: ignore[arg-type]
                )
        return index


def _artifact_id_or_none(value: str, made: dict[str, ArtifactId]) -> ArtifactId | None:
    try:
        aid = made[value] = ArtifactId(value)
    except ValueError:
        return None  # FactRecorded words the error
    return aid
