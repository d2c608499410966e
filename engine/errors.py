"""One error hierarchy mirroring the seed's ``errors`` module.

``ErrorInfo`` is the serialisable payload (code, category, retryable, message, details). The
seed's enums of errors become exception classes carrying a ``kind`` (the Rust variant) and an
``info``; ``to_wire()`` gives the serde encoding. OS and parse errors are translated into these
at exactly one boundary per layer (``raise StorageError.other(...) from exc``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, GetCoreSchemaHandler, JsonValue
from pydantic_core import core_schema

from engine._secrets import contains_secrets
from engine._wire import Frozen, WireJsonValue
from engine.ids import ContextKey, ErrorCode, FactKey, StateId

__all__ = [
    "CODE_MISSING_FACT_KEY",
    "ContextError",
    "ContextErrorKind",
    "ErrorCategory",
    "ErrorInfo",
    "IoError",
    "IoErrorKind",
    "MfmError",
    "RunError",
    "RunErrorKind",
    "StateError",
    "StorageError",
    "StorageErrorKind",
]

CODE_MISSING_FACT_KEY = "missing_fact_key"


class ErrorCategory(StrEnum):
    """Error category used for stable handling and policies."""

    PARSING_INPUT = "ParsingInput"
    ON_CHAIN = "OnChain"
    OFF_CHAIN = "OffChain"
    RPC = "Rpc"
    STORAGE = "Storage"
    CONTEXT = "Context"
    UNKNOWN = "Unknown"


class ErrorInfo(Frozen):
    """Structured error info (canonical-JSON compatible; must not contain secrets)."""

    code: ErrorCode
    category: ErrorCategory
    retryable: bool = Field(strict=True)
    message: str
    details: WireJsonValue | None = None

    @classmethod
    def new(
        cls,
        code: str,
        message: str,
        *,
        category: ErrorCategory = ErrorCategory.UNKNOWN,
        retryable: bool = False,
        details: JsonValue | None = None,
    ) -> ErrorInfo:
        return cls(code=ErrorCode(code), category=category, retryable=retryable, message=message, details=details)


class MfmError(Exception):
    """Base of every contract error: ``info`` holds code, category, retryable, message, details."""

    info: ErrorInfo

    def __init__(self, info: ErrorInfo) -> None:
        self.info = info
        super().__init__(info.message)

    @property
    def code(self) -> str:
        return str(self.info.code)

    @property
    def message(self) -> str:
        return self.info.message

    @property
    def retryable(self) -> bool:
        return self.info.retryable

    @property
    def variant(self) -> str:
        return type(self).__name__

    def to_wire(self) -> Any:
        return {self.variant: self.info.model_dump(mode="json")}

    def one_line(self) -> str:
        """``error[code]: message``: the form the CLI prints."""
        return f"error[{self.code}]: {self.message}"

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __repr__(self) -> str:
        kind = getattr(self, "kind", None)
        kind_s = f"{kind}, " if kind is not None else ""
        return f"{type(self).__name__}({kind_s}{self.code!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, str(self.info.code)))

    def _key(self) -> tuple[Any, ...]:
        return (getattr(self, "kind", None), self.info)


def _make(code: str, message: str, category: ErrorCategory, retryable: bool, details: JsonValue | None) -> ErrorInfo:
    return ErrorInfo.new(code, message, category=category, retryable=retryable, details=details)


class StateError(MfmError):
    """Error returned (raised) by a state handler. Persisted inside ``StateFailed``.

    Wire form: ``{"state_id": <id|null>, "info": {...}}``.
    """

    def __init__(self, info: ErrorInfo, state_id: StateId | None = None) -> None:
        super().__init__(info)
        self.state_id = state_id

    @classmethod
    def new(
        cls,
        code: str,
        message: str,
        *,
        category: ErrorCategory = ErrorCategory.UNKNOWN,
        retryable: bool = False,
        details: JsonValue | None = None,
        state_id: StateId | None = None,
    ) -> StateError:
        return cls(_make(code, message, category, retryable, details), state_id)

    def _key(self) -> tuple[Any, ...]:
        return (self.state_id, self.info)

    def to_wire(self) -> Any:
        return {
            "state_id": None if self.state_id is None else str(self.state_id),
            "info": self.info.model_dump(mode="json"),
        }

    @classmethod
    def from_wire(cls, value: Any) -> StateError:
        if isinstance(value, StateError):
            return value
        if not isinstance(value, dict) or set(value) != {"state_id", "info"}:
            raise ValueError(f"invalid StateError: {value!r}")
        sid = value["state_id"]
        return cls(ErrorInfo.model_validate(value["info"]), None if sid is None else StateId(sid))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.from_wire, serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.to_wire())
        )


class StorageErrorKind(StrEnum):
    CONCURRENCY = "Concurrency"
    NOT_FOUND = "NotFound"
    CORRUPTION = "Corruption"
    OTHER = "Other"


class StorageError(MfmError):
    """Event store / artifact store errors."""

    def __init__(self, kind: StorageErrorKind, info: ErrorInfo) -> None:
        super().__init__(info)
        self.kind = kind

    @property
    def variant(self) -> str:
        return "StorageError"

    def to_wire(self) -> Any:
        return {str(self.kind): self.info.model_dump(mode="json")}

    @classmethod
    def _of(
        cls, kind: StorageErrorKind, code: str, message: str, details: JsonValue | None, retryable: bool
    ) -> StorageError:
        return cls(kind, _make(code, message, ErrorCategory.STORAGE, retryable, details))

    @classmethod
    def concurrency(cls, code: str, message: str, details: JsonValue | None = None) -> StorageError:
        return cls._of(StorageErrorKind.CONCURRENCY, code, message, details, False)

    @classmethod
    def not_found(cls, code: str, message: str, details: JsonValue | None = None) -> StorageError:
        return cls._of(StorageErrorKind.NOT_FOUND, code, message, details, False)

    @classmethod
    def corruption(cls, code: str, message: str, details: JsonValue | None = None) -> StorageError:
        return cls._of(StorageErrorKind.CORRUPTION, code, message, details, False)

    @classmethod
    def other(
        cls, code: str, message: str, details: JsonValue | None = None, *, retryable: bool = False
    ) -> StorageError:
        return cls._of(StorageErrorKind.OTHER, code, message, details, retryable)


class IoErrorKind(StrEnum):
    MISSING_FACT_KEY = "MissingFactKey"
    MISSING_FACT = "MissingFact"
    TRANSPORT = "Transport"
    RATE_LIMITED = "RateLimited"
    OTHER = "Other"


class IoError(MfmError):
    """IO errors (live or replay). ``key`` is set for ``MissingFact``."""

    def __init__(self, kind: IoErrorKind, info: ErrorInfo, key: FactKey | None = None) -> None:
        super().__init__(info)
        self.kind = kind
        self.key = key

    @property
    def variant(self) -> str:
        return "IoError"

    def _key(self) -> tuple[Any, ...]:
        return (self.kind, self.info, self.key)

    def to_wire(self) -> Any:
        info = self.info.model_dump(mode="json")
        if self.kind is IoErrorKind.MISSING_FACT:
            return {"MissingFact": {"key": self.key, "info": info}}
        return {str(self.kind): info}

    @classmethod
    def other(
        cls,
        code: str,
        message: str,
        *,
        category: ErrorCategory = ErrorCategory.UNKNOWN,
        retryable: bool = False,
        details: JsonValue | None = None,
    ) -> IoError:
        return cls(IoErrorKind.OTHER, _make(code, message, category, retryable, details))

    @classmethod
    def transport(
        cls,
        code: str,
        message: str,
        *,
        category: ErrorCategory = ErrorCategory.UNKNOWN,
        retryable: bool = False,
        details: JsonValue | None = None,
    ) -> IoError:
        return cls(IoErrorKind.TRANSPORT, _make(code, message, category, retryable, details))

    @classmethod
    def missing_fact_key(cls, message: str = "deterministic IO call requires a fact key") -> IoError:
        return cls(
            IoErrorKind.MISSING_FACT_KEY,
            _make(CODE_MISSING_FACT_KEY, message, ErrorCategory.PARSING_INPUT, False, None),
        )

    @classmethod
    def missing_fact(cls, key: FactKey, *, retryable: bool = False) -> IoError:
        shown = "<redacted>" if contains_secrets(key) else key
        return cls(
            IoErrorKind.MISSING_FACT,
            _make("missing_fact", f"missing recorded fact: {shown}", ErrorCategory.RPC, retryable, None),
            key=FactKey(key),
        )


class ContextErrorKind(StrEnum):
    MISSING_KEY = "MissingKey"
    SERIALIZATION = "Serialization"
    OTHER = "Other"


class ContextError(MfmError):
    """Context errors. ``key`` is set for ``MissingKey``."""

    def __init__(self, kind: ContextErrorKind, info: ErrorInfo, key: ContextKey | None = None) -> None:
        super().__init__(info)
        self.kind = kind
        self.key = key

    @property
    def variant(self) -> str:
        return "ContextError"

    def to_wire(self) -> Any:
        info = self.info.model_dump(mode="json")
        if self.kind is ContextErrorKind.MISSING_KEY:
            return {"MissingKey": {"key": self.key, "info": info}}
        return {str(self.kind): info}

    @classmethod
    def serialization(cls, code: str, message: str, details: JsonValue | None = None) -> ContextError:
        return cls(ContextErrorKind.SERIALIZATION, _make(code, message, ErrorCategory.CONTEXT, False, details))

    @classmethod
    def other(cls, code: str, message: str, details: JsonValue | None = None) -> ContextError:
        return cls(ContextErrorKind.OTHER, _make(code, message, ErrorCategory.CONTEXT, False, details))


class RunErrorKind(StrEnum):
    INVALID_PLAN = "InvalidPlan"
    STORAGE = "Storage"
    CONTEXT = "Context"
    IO = "Io"
    STATE = "State"
    OTHER = "Other"


_WRAPPING_KINDS = frozenset({RunErrorKind.STORAGE, RunErrorKind.CONTEXT, RunErrorKind.IO, RunErrorKind.STATE})


class RunError(MfmError):
    """Run-level errors from the engine; wraps the inner error for Storage/Context/Io/State."""

    def __init__(self, kind: RunErrorKind, info: ErrorInfo, cause: MfmError | None = None) -> None:
        super().__init__(info)
        self.kind = kind
        self.cause = cause

    @property
    def variant(self) -> str:
        return "RunError"

    def to_wire(self) -> Any:
        # Storage/Context/Io/State hold the inner error's own serde form; InvalidPlan and Other
        # hold an ErrorInfo even when a cause is attached (e.g. a wrapped non-contract error).
        if self.cause is not None and self.kind in _WRAPPING_KINDS:
            return {str(self.kind): self.cause.to_wire()}
        return {str(self.kind): self.info.model_dump(mode="json")}

    @classmethod
    def invalid_plan(cls, code: str, message: str, details: JsonValue | None = None) -> RunError:
        return cls(RunErrorKind.INVALID_PLAN, _make(code, message, ErrorCategory.UNKNOWN, False, details))

    @classmethod
    def other(
        cls,
        code: str,
        message: str,
        *,
        category: ErrorCategory = ErrorCategory.UNKNOWN,
        details: JsonValue | None = None,
    ) -> RunError:
        return cls(RunErrorKind.OTHER, _make(code, message, category, False, details))

    @classmethod
    def wrap(cls, err: MfmError) -> RunError:
        """Wrap a storage/context/io/state error as the matching ``RunError`` variant."""
        if isinstance(err, RunError):
            return err
        kind = {
            StorageError: RunErrorKind.STORAGE,
            ContextError: RunErrorKind.CONTEXT,
            IoError: RunErrorKind.IO,
            StateError: RunErrorKind.STATE,
        }.get(type(err), RunErrorKind.OTHER)
        return cls(kind, err.info, err)
