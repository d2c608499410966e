"""Domain event recording (ENGINE-SPEC §9): profile filter in front of a validating appender."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from engine._runtime.facts import FactIndex
from engine._runtime.writer import EventWriter
from engine._secrets import contains_secrets
from engine.config import EventProfile
from engine.errors import ErrorCategory, MfmError, RunError
from engine.events import DOMAIN_EVENT_FACT_RECORDED, DomainEvent, FactRecorded
from engine.hashing import CanonicalJsonError, check_canonical_value

__all__ = ["ProfileRecorder", "keeps", "validate_domain_event"]


def keeps(profile: EventProfile, name: str) -> bool:
    """Minimal keeps only ``fact_recorded``; Normal, Verbose and Custom keep everything."""
    return name == DOMAIN_EVENT_FACT_RECORDED or profile != EventProfile.MINIMAL


def _invalid(message: str) -> RunError:
    return RunError.other("domain_event_invalid", message, category=ErrorCategory.PARSING_INPUT)


def validate_domain_event(event: DomainEvent) -> None:
    """§4.2: a non-secret name and a canonical (float-free, secret-free) payload."""
    if not isinstance(event, DomainEvent):
        raise _invalid("emitted value is not a DomainEvent")
    if not event.name or contains_secrets(event.name):
        raise _invalid("domain event name is empty or looks secret")
    try:
        check_canonical_value(event.payload)
    except CanonicalJsonError as exc:
        what = "secret-looking content" if exc.is_secret else "non-canonical JSON (floats or unsafe integers)"
        raise _invalid(f"domain event {event.name!r} payload contains {what}") from None


class ProfileRecorder:
    """The ``EventRecorder`` handed to a handler for one attempt."""

    __slots__ = ("_facts", "_profile", "_writer")

    def __init__(self, profile: EventProfile, writer: EventWriter, facts: FactIndex) -> None:
        self._profile = profile
        self._writer = writer
        self._facts = facts

    async def emit(self, event: DomainEvent) -> None:
        await self.emit_many([event])

    async def emit_many(self, events: Sequence[DomainEvent]) -> None:
        kept = [e for e in events if not isinstance(e, DomainEvent) or keeps(self._profile, e.name)]
        if not kept:
            return
        facts: list[FactRecorded] = []
        for e in kept:
            validate_domain_event(e)
            if e.name == DOMAIN_EVENT_FACT_RECORDED:
                try:
                    facts.append(FactRecorded.model_validate(e.payload))
                except (ValidationError, ValueError):
                    raise _invalid("fact_recorded payload is not {key, payload_id, meta}") from None
        for f in facts:
            bound = self._facts.get(f.key)
            if bound is not None and bound != f.payload_id:
                raise _invalid("fact_recorded rebinds an already bound fact key to a different payload")
        try:
            await self._writer.append(kept)
        except MfmError as exc:  # append failures reach the handler as RunError::Storage (§9)
            raise RunError.wrap(exc) from exc
        for f in facts:
            self._facts.bind_if_unbound(f.key, f.payload_id)
