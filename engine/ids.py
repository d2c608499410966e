"""Stable identifier types (the seed's ``ids`` module).

Every id is a ``str`` subclass that validates on construction and on deserialisation, so an
invalid id can never reach a store path, an event or a manifest. Validation failure raises
:class:`IdValidationError` rendered as ``invalid <kind>: <value>``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, ClassVar, Self

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

__all__ = [
    "ArtifactId",
    "ContextKey",
    "ErrorCode",
    "FactKey",
    "IdValidationError",
    "OpId",
    "OpPath",
    "RunId",
    "StateId",
    "StreamId",
    "is_valid_id_segment",
]

_SEGMENT = re.compile(r"[a-z][a-z0-9_]{0,62}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class IdValidationError(ValueError):
    """An identifier failed the runtime naming contract (kind + offending value)."""

    def __init__(self, kind: str, value: object) -> None:
        self.kind = kind
        self.value = value if isinstance(value, str) else repr(value)
        shown = self.value if len(self.value) <= 200 else self.value[:200] + "…"
        super().__init__(f"invalid {kind}: {shown}")


def is_valid_id_segment(segment: str) -> bool:
    """``^[a-z][a-z0-9_]{0,62}$``, ASCII only."""
    return isinstance(segment, str) and _SEGMENT.fullmatch(segment) is not None


class _ValidatedStr(str):
    """A ``str`` that checks itself on construction; pydantic validates it the same way."""

    kind: ClassVar[str] = "id"
    __slots__ = ()

    def __new__(cls, value: object) -> Self:
        if type(value) is cls:
            return value
        if not isinstance(value, str):
            raise IdValidationError(cls.kind, value)
        if not cls._is_valid(value):
            raise IdValidationError(cls.kind, value)
        return super().__new__(cls, value)

    @classmethod
    def _is_valid(cls, value: str) -> bool:
        return True

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._pydantic_validate,
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str, return_schema=core_schema.str_schema()),
        )

    @classmethod
    def _pydantic_validate(cls, value: object) -> Self:
        return cls(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str.__repr__(self)})"

    @property
    def as_str(self) -> str:
        return str(self)


class OpId(_ValidatedStr):
    """Operation identifier: exactly one segment."""

    kind = "op_id"
    __slots__ = ()

    @classmethod
    def _is_valid(cls, value: str) -> bool:
        return is_valid_id_segment(value)


class OpPath(_ValidatedStr):
    """``<machine>.<step>(.<child>)*``: at least two parts, every part a segment."""

    kind = "op_path"
    __slots__ = ()

    @classmethod
    def _is_valid(cls, value: str) -> bool:
        parts = value.split(".")
        return len(parts) >= 2 and all(is_valid_id_segment(p) for p in parts)

    @property
    def machine(self) -> str:
        return self.split(".")[0]

    @property
    def step(self) -> str:
        return self.split(".")[1]

    @property
    def child_path(self) -> str | None:
        parts = self.split(".")
        return ".".join(parts[2:]) if len(parts) > 2 else None

    @property
    def flattened_child_path(self) -> str | None:
        child = self.child_path
        return None if child is None else child.replace(".", "__")


class StateId(_ValidatedStr):
    """``<machine>.<step>.<state_local>``: exactly three segments."""

    kind = "state_id"
    __slots__ = ()

    @classmethod
    def _is_valid(cls, value: str) -> bool:
        parts = value.split(".")
        return len(parts) == 3 and all(is_valid_id_segment(p) for p in parts)

    @property
    def machine(self) -> str:
        return self.split(".")[0]

    @property
    def step(self) -> str:
        return self.split(".")[1]

    @property
    def state_local_id(self) -> str:
        return self.split(".")[2]


class ArtifactId(_ValidatedStr):
    """Content address: 64 lowercase hex characters (SHA-256)."""

    kind = "artifact_id"
    __slots__ = ()

    @classmethod
    def _is_valid(cls, value: str) -> bool:
        return _HEX64.fullmatch(value) is not None

    @property
    def short(self) -> str:
        return self[:12]


class RunId(_ValidatedStr):
    """A run's UUID, always the lowercase hyphenated form."""

    kind = "run_id"
    __slots__ = ()

    @classmethod
    def _is_valid(cls, value: str) -> bool:
        return _UUID.fullmatch(value) is not None

    @classmethod
    def from_uuid(cls, value: uuid.UUID) -> RunId:
        return cls(str(value))

    @classmethod
    def new_v4(cls) -> RunId:
        return cls(str(uuid.uuid4()))

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(self)

    @property
    def short(self) -> str:
        return self[:8]


class StreamId(_ValidatedStr):
    """``<family>:<key>``: family a segment, key non-empty without control chars or whitespace."""

    kind = "stream_id"
    __slots__ = ()

    @classmethod
    def _is_valid(cls, value: str) -> bool:
        family, sep, key = value.partition(":")
        if not sep or not is_valid_id_segment(family) or not key:
            return False
        return not any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key)

    @classmethod
    def for_run(cls, run_id: RunId) -> StreamId:
        return cls(f"run:{run_id}")

    @property
    def family(self) -> str:
        return self.partition(":")[0]

    @property
    def key(self) -> str:
        return self.partition(":")[2]


class FactKey(_ValidatedStr):
    """Key of a recorded fact: any string (secret-scanned when recorded)."""

    kind = "fact_key"
    __slots__ = ()


class ContextKey(_ValidatedStr):
    """Key of a context entry: any string."""

    kind = "context_key"
    __slots__ = ()

    @property
    def explicit_slot(self) -> tuple[str, str] | None:
        prefix, sep, rest = self.partition(".")
        if sep and prefix in ("in", "out", "work") and rest:
            return prefix, rest
        return None


class ErrorCode(_ValidatedStr):
    """Stable machine-readable error code (unvalidated string, as in era A/B)."""

    kind = "error_code"
    __slots__ = ()
