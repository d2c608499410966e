"""``ArtifactKind`` lives here so that ``events`` and ``stores`` can both import it."""

from __future__ import annotations

from typing import ClassVar

from engine._wire import UnitOrNewtype

__all__ = ["ArtifactKind"]


class ArtifactKind(UnitOrNewtype):
    """``"Manifest"``, ``"ContextSnapshot"``, ``"FactPayload"``, ``"SecretPayload"``, ``"Output"``
    or ``{"Other": "<name>"}``."""

    UNITS: ClassVar[tuple[str, ...]] = ("Manifest", "ContextSnapshot", "FactPayload", "SecretPayload", "Output")
    NEWTYPE: ClassVar[str] = "Other"
    __slots__ = ()

    MANIFEST: ClassVar[ArtifactKind]
    CONTEXT_SNAPSHOT: ClassVar[ArtifactKind]
    FACT_PAYLOAD: ClassVar[ArtifactKind]
    SECRET_PAYLOAD: ClassVar[ArtifactKind]
    OUTPUT: ClassVar[ArtifactKind]

    @classmethod
    def other(cls, name: str) -> ArtifactKind:
        return cls("Other", name)


ArtifactKind.MANIFEST = ArtifactKind("Manifest")
ArtifactKind.CONTEXT_SNAPSHOT = ArtifactKind("ContextSnapshot")
ArtifactKind.FACT_PAYLOAD = ArtifactKind("FactPayload")
ArtifactKind.SECRET_PAYLOAD = ArtifactKind("SecretPayload")
ArtifactKind.OUTPUT = ArtifactKind("Output")
