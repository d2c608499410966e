"""State metadata: tags, side-effect kind, idempotency (the seed's ``meta`` module)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from engine._wire import Frozen, UnitOrNewtype

__all__ = ["DependencyStrategy", "Idempotency", "SideEffectKind", "StateMeta", "Tag", "standard_tags"]

Tag = str
"""Tags are plain strings compared by exact equality (serde newtype over ``String``)."""


class standard_tags:
    """The stable classification vocabulary."""

    CONFIG = "config"
    FETCH_DATA = "fetch_data"
    COMPUTE = "compute"
    EXECUTE = "execute"
    REPORT = "report"
    APPLY_SIDE_EFFECT = "apply_side_effect"
    IMPURE = "impure"


class SideEffectKind(StrEnum):
    PURE = "Pure"
    READ_ONLY_IO = "ReadOnlyIo"
    APPLY_SIDE_EFFECT = "ApplySideEffect"


class DependencyStrategy(StrEnum):
    LATEST = "Latest"
    EARLIEST = "Earliest"
    LATEST_SUCCESSFUL = "LatestSuccessful"


class Idempotency(UnitOrNewtype):
    """``"None"`` or ``{"Key": "<stable key>"}``."""

    UNITS: ClassVar[tuple[str, ...]] = ("None",)
    NEWTYPE: ClassVar[str] = "Key"
    __slots__ = ()

    NONE: ClassVar[Idempotency]

    @classmethod
    def key(cls, value: str) -> Idempotency:
        return cls("Key", value)

    @property
    def key_value(self) -> str | None:
        return self.value


Idempotency.NONE = Idempotency("None")


class StateMeta(Frozen):
    """State metadata used for policy decisions (depends_on* are planner hints only)."""

    tags: tuple[Tag, ...] = ()
    depends_on: tuple[Tag, ...] = ()
    depends_on_strategy: DependencyStrategy = DependencyStrategy.LATEST
    side_effects: SideEffectKind = SideEffectKind.PURE
    idempotency: Idempotency = Field(default_factory=lambda: Idempotency.NONE)
