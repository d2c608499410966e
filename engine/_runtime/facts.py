"""The run's fact index (ENGINE-SPEC §11.3): fact key → payload artifact id, single assignment."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from engine._secrets import contains_secrets
from engine.errors import StorageError
from engine.events import DOMAIN_EVENT_FACT_RECORDED, DomainEvent, EventEnvelope, FactRecorded
from engine.ids import ArtifactId

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
        for env in envelopes:
            ev = env.event
            if not isinstance(ev, DomainEvent) or ev.name != DOMAIN_EVENT_FACT_RECORDED:
                continue
            try:
                fact = FactRecorded.model_validate(ev.payload)
            except (ValidationError, ValueError):
                raise StorageError.corruption(
                    "fact_recorded_malformed", f"fact_recorded event at seq {env.seq} is malformed", {"seq": env.seq}
                ) from None
            bound = index.bindings.get(fact.key)
            if bound is None:
                index.bindings[fact.key] = fact.payload_id
            elif bound != fact.payload_id:
                details: dict[str, int | str] = {"seq": env.seq}
                if not contains_secrets(fact.key):
                    details["key"] = fact.key
                raise StorageError.corruption(
                    "fact_recorded_conflict",
                    f"fact_recorded event at seq {env.seq} rebinds a key to a different payload",
                    details,  # type: ignore[arg-type]
                )
        return index
