"""Run configuration and the run manifest (the seed's ``config`` module)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field, PlainSerializer, PlainValidator, model_serializer

from engine._wire import Frozen, UnitOrNewtype, Variant, WireJsonValue, tagged_union_schema
from engine.ids import OpId
from engine.meta import Tag

__all__ = [
    "BackoffPolicy",
    "BuildProvenance",
    "ContextCheckpointing",
    "Duration",
    "EventProfile",
    "ExecutionMode",
    "Exponential",
    "FanOutJoin",
    "Fixed",
    "IoMode",
    "RetryPolicy",
    "RunConfig",
    "RunManifest",
    "Sequential",
    "default_nix_flake_allowlist",
]


class Duration(Frozen):
    """Rust ``std::time::Duration``: ``{"secs": u64, "nanos": u32}``."""

    secs: int = Field(ge=0, le=2**64 - 1, strict=True)
    nanos: int = Field(ge=0, lt=1_000_000_000, strict=True)

    @classmethod
    def from_millis(cls, ms: int) -> Duration:
        return cls(secs=ms // 1000, nanos=(ms % 1000) * 1_000_000)

    @classmethod
    def from_secs(cls, secs: int) -> Duration:
        return cls(secs=secs, nanos=0)

    @property
    def total_nanos(self) -> int:
        return self.secs * 1_000_000_000 + self.nanos

    @property
    def total_millis(self) -> int:
        return self.total_nanos // 1_000_000

    @property
    def total_seconds(self) -> float:
        return self.total_nanos / 1e9


class IoMode(StrEnum):
    LIVE = "Live"
    REPLAY = "Replay"


class EventProfile(UnitOrNewtype):
    UNITS: ClassVar[tuple[str, ...]] = ("Minimal", "Normal", "Verbose")
    NEWTYPE: ClassVar[str] = "Custom"
    __slots__ = ()
    MINIMAL: ClassVar[EventProfile]
    NORMAL: ClassVar[EventProfile]
    VERBOSE: ClassVar[EventProfile]

    @classmethod
    def custom(cls, value: str) -> EventProfile:
        return cls("Custom", value)


EventProfile.MINIMAL = EventProfile("Minimal")
EventProfile.NORMAL = EventProfile("Normal")
EventProfile.VERBOSE = EventProfile("Verbose")


class ContextCheckpointing(UnitOrNewtype):
    UNITS: ClassVar[tuple[str, ...]] = ("AfterEveryState",)
    NEWTYPE: ClassVar[str] = "Custom"
    __slots__ = ()
    AFTER_EVERY_STATE: ClassVar[ContextCheckpointing]

    @classmethod
    def custom(cls, value: str) -> ContextCheckpointing:
        return cls("Custom", value)


ContextCheckpointing.AFTER_EVERY_STATE = ContextCheckpointing("AfterEveryState")


class Fixed(Variant):
    """Retry after the same delay every time."""

    delay: Duration

    def delay_after(self, attempt: int) -> Duration:
        return self.delay


class Exponential(Variant):
    """``base_delay × 2^min(attempt, 31)`` (saturating), capped at ``max_delay``."""

    base_delay: Duration
    max_delay: Duration

    def delay_after(self, attempt: int) -> Duration:
        factor = 1 << min(max(attempt, 0), 31)
        nanos = min(self.base_delay.total_nanos * factor, 2**64 - 1)
        nanos = min(nanos, self.max_delay.total_nanos)
        return Duration(secs=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


_backoff_decode, _backoff_encode = tagged_union_schema((Fixed, Exponential), "BackoffPolicy")
BackoffPolicy = Annotated[Fixed | Exponential, PlainValidator(_backoff_decode), PlainSerializer(_backoff_encode)]


class RetryPolicy(Frozen):
    """``max_attempts`` counts every attempt including the first (0 and 1: never retry)."""

    max_attempts: int = Field(ge=0, le=2**32 - 1, strict=True)
    backoff: BackoffPolicy

    def backoff_after(self, failed_attempt: int) -> Duration:
        """The delay before the attempt following ``failed_attempt`` (0-based)."""
        return self.backoff.delay_after(failed_attempt)


class Sequential(Variant):
    """Run one ready state at a time."""


class FanOutJoin(Variant):
    """Run up to ``max_concurrency`` ready states at once (ENGINE-SPEC §0.5)."""

    max_concurrency: int = Field(ge=0, le=2**32 - 1, strict=True)


_mode_decode, _mode_encode = tagged_union_schema((Sequential, FanOutJoin), "ExecutionMode")
ExecutionMode = Annotated[Sequential | FanOutJoin, PlainValidator(_mode_decode), PlainSerializer(_mode_encode)]


def default_nix_flake_allowlist() -> list[str]:
    return ["github:willyrgf/mfm"]


class RunConfig(Frozen):
    """Run-level execution configuration.

    ``exec_allowlist`` is this project's addition (ENGINE-SPEC §0.8): program path prefixes the
    exec transport admits for this run. It is omitted from the wire form when unset, so a
    seed-shaped config round-trips byte for byte.
    """

    io_mode: IoMode = IoMode.LIVE
    retry_policy: RetryPolicy
    event_profile: EventProfile = Field(default_factory=lambda: EventProfile.NORMAL)
    execution_mode: ExecutionMode = Field(default_factory=Sequential)
    context_checkpointing: ContextCheckpointing = Field(default_factory=lambda: ContextCheckpointing.AFTER_EVERY_STATE)
    replay_missing_fact_retryable: bool = Field(default=False, strict=True)
    skip_tags: tuple[Tag, ...] = ()
    nix_flake_allowlist: tuple[str, ...] = Field(default_factory=lambda: tuple(default_nix_flake_allowlist()))
    exec_allowlist: tuple[str, ...] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_extensions(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("exec_allowlist") is None:
            data.pop("exec_allowlist", None)
        return data


class BuildProvenance(Frozen):
    git_commit: str | None = None
    cargo_lock_hash: str | None = None
    flake_lock_hash: str | None = None
    rustc_version: str | None = None
    target_triple: str | None = None
    env_allowlist: tuple[str, ...] = ()


class RunManifest(Frozen):
    """The run manifest, stored as a canonical JSON ``Manifest`` artifact before ``start``."""

    op_id: OpId
    op_version: str
    input_params: WireJsonValue
    run_config: RunConfig
    build: BuildProvenance = Field(default_factory=BuildProvenance)

    def to_json_value(self) -> Any:
        return self.model_dump(mode="json")
