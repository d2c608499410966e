"""Serde-style wire encoding helpers (ENGINE-SPEC §4.4).

The seed's Rust enums are serialised by serde's default *externally tagged* representation:
unit variants are plain strings (``"Live"``), newtype variants are single-key objects
(``{"Other": "x"}``) and struct variants are single-key objects holding the fields
(``{"FanOutJoin": {"max_concurrency": 2}}``). This module gives Python classes that encoding.

A free-form JSON value (the seed's ``serde_json::Value``: domain-event payloads, error details, input parameters,
IO requests and responses, fact and artifact meta) is written with every object's keys sorted, at every level,
because serde_json's default map is a ``BTreeMap<String, Value>``: keys compare as UTF-8 bytes, which is code-point
order (Python's ``sorted`` on ``str``), not RFC 8785's UTF-16 order. :data:`WireJsonValue` is that field type.

JSON text from the wire or from artifacts is read as serde_json reads it (:func:`parse_json`): ``-0`` is the float
``-0.0`` (serde_json turns a negative zero integer into a float, so every place that rejects floats rejects it),
``NaN`` / ``Infinity`` are not JSON, and bytes must be UTF-8.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, JsonValue, PlainSerializer
from pydantic_core import core_schema

__all__ = [
    "Frozen",
    "UnitOrNewtype",
    "Variant",
    "WireJsonValue",
    "compact_json",
    "construct",
    "copy_json",
    "parse_json",
    "sorted_json",
    "tagged_union_schema",
]


class Frozen(BaseModel):
    """Base of every serialised record: immutable, strict about unknown shapes."""

    # defer_build: each model's validator is built when first used, not at import (~60-90 ms of CPU of the TUI's
    # start, whose first paint validates none; issue 15).
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


def compact_json(value: Any) -> str:
    """serde_json's compact output: no whitespace, non-ASCII raw, fields in given order."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")  # json accepts NaN / Infinity / -Infinity; serde_json does not


def _int_or_negative_zero(text: str) -> Any:
    return -0.0 if text == "-0" else int(text)


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
_decode_negative_zero = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_int_or_negative_zero).decode


def parse_json(data: bytes | str) -> Any:
    """Parse JSON text as serde_json does: ``-0`` → ``-0.0`` (a float), NaN / Infinity rejected, bytes as UTF-8.

    Raises ``ValueError`` (``json.JSONDecodeError`` or ``UnicodeDecodeError``) for anything that is not JSON.
    """
    text = data if isinstance(data, str) else data.decode("utf-8")
    # A number token -0 contains "-0"; only then is the slower integer hook needed.
    return _decode_negative_zero(text) if "-0" in text else _decode(text)


_LEAVES = frozenset((str, int, bool, float, type(None)))


def sorted_json(value: Any) -> Any:
    """``value`` as serde_json holds a ``Value``: every object's keys in code-point order, at every level.

    Arrays keep their order (a tuple becomes a list). An object with a key that is not a string keeps its order: it
    is not JSON, and the canonical checks reject it with their own error.
    """
    if type(value) in _LEAVES:
        return value
    if isinstance(value, dict):
        try:
            items = sorted(value.items())  # keys are unique: values are never compared
        except TypeError:
            items = list(value.items())
        return {k: v if type(v) in _LEAVES else sorted_json(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [x if type(x) in _LEAVES else sorted_json(x) for x in value]
    return value


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON-shaped value (dicts, lists, scalars), as ``copy.deepcopy`` makes it, several times
    faster: no memo, every container rebuilt by a comprehension. Anything else inside (a tuple, an object, a
    structure deeper than the recursion limit or with a cycle) is left to ``copy.deepcopy``. Unlike
    ``copy.deepcopy`` it does not keep aliasing: a list reachable twice is copied twice (JSON has no aliases)."""
    try:
        return _copy_json(value)
    except RecursionError:
        return copy.deepcopy(value)


def _copy_json(value: Any) -> Any:
    t = type(value)
    if t is dict:
        return {k: v if type(v) in _LEAVES else _copy_json(v) for k, v in value.items()}
    if t is list:
        return [v if type(v) in _LEAVES else _copy_json(v) for v in value]
    if t in _LEAVES:
        return value
    return copy.deepcopy(value)


WireJsonValue = Annotated[JsonValue, PlainSerializer(sorted_json)]
"""A ``serde_json::Value`` field: validated as any JSON value, written with sorted keys (:func:`sorted_json`)."""


class Variant(Frozen):
    """One variant of an externally tagged enum.

    ``__tag__`` defaults to the class name. A variant without fields is a *unit* variant and
    encodes as its tag string; otherwise it encodes as ``{tag: {fields}}``.
    """

    __tag__: ClassVar[str] = ""

    @classmethod
    def tag(cls) -> str:
        return cls.__tag__ or cls.__name__

    @classmethod
    def is_unit(cls) -> bool:
        return not cls.model_fields

    def to_wire(self) -> Any:
        if self.is_unit():
            return self.tag()
        return {self.tag(): self.model_dump(mode="json")}


def tagged_union_schema(
    variants: tuple[type[Variant], ...], kind: str
) -> tuple[Callable[[Any], Variant], Callable[[Variant], Any]]:
    """Build (decode, encode) functions for a union of :class:`Variant` classes."""
    by_tag = {v.tag(): v for v in variants}

    def decode(value: Any) -> Variant:
        if isinstance(value, variants):
            return value
        if isinstance(value, str):
            cls = by_tag.get(value)
            if cls is not None and cls.is_unit():
                return cls()
        elif isinstance(value, dict) and len(value) == 1:
            ((tag, body),) = value.items()
            cls = by_tag.get(tag)
            if cls is not None and not cls.is_unit():
                return cls.model_validate(body)
        raise ValueError(f"invalid {kind}: {value!r}")

    def encode(value: Variant) -> Any:
        return value.to_wire()

    return decode, encode


def union_core_schema(variants: tuple[type[Variant], ...], kind: str) -> core_schema.CoreSchema:
    decode, encode = tagged_union_schema(variants, kind)
    return core_schema.no_info_plain_validator_function(
        decode, serialization=core_schema.plain_serializer_function_ser_schema(encode)
    )


class UnitOrNewtype:
    """An enum whose variants are units or a single string-carrying newtype variant.

    Examples: ``ArtifactKind`` (``"Manifest"`` … ``{"Other": "x"}``), ``EventProfile``
    (``"Minimal"`` … ``{"Custom": "x"}``), ``Idempotency`` (``"None"`` / ``{"Key": "k"}``).
    """

    UNITS: ClassVar[tuple[str, ...]] = ()
    NEWTYPE: ClassVar[str] = ""
    __slots__ = ("tag", "value")

    tag: str
    value: str | None

    def __init__(self, tag: str, value: str | None = None) -> None:
        if value is None and tag not in self.UNITS:
            raise ValueError(f"invalid {type(self).__name__}: {tag!r}")
        if value is not None and (tag != self.NEWTYPE or not isinstance(value, str)):
            raise ValueError(f"invalid {type(self).__name__}: {tag!r}")
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "value", value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (self.tag, self.value) == (other.tag, other.value)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.tag, self.value))

    def __repr__(self) -> str:
        if self.value is None:
            return f"{type(self).__name__}.{self.tag}"
        return f"{type(self).__name__}.{self.NEWTYPE}({self.value!r})"

    def __str__(self) -> str:
        return self.tag if self.value is None else f"{self.NEWTYPE}({self.value})"

    @property
    def is_newtype(self) -> bool:
        return self.value is not None

    def to_wire(self) -> Any:
        return self.tag if self.value is None else {self.NEWTYPE: self.value}

    @classmethod
    def from_wire(cls, value: Any) -> Self:
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value in cls.UNITS:
            return cls(value)
        if isinstance(value, dict) and len(value) == 1:
            ((tag, body),) = value.items()
            if tag == cls.NEWTYPE and isinstance(body, str):
                return cls(tag, body)
        raise ValueError(f"invalid {cls.__name__}: {value!r}")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.from_wire, serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.to_wire())
        )


_M = TypeVar("_M", bound=BaseModel)


def construct(cls: type[_M], /, **fields: Any) -> _M:
    """Build an engine-made record without validation (every field given, values already valid).

    ``model_construct`` walks defaults and aliases; on the hot path (two envelopes per state) the
    plain attribute setup below costs a third as much. Equality, ``model_dump`` and serialisation
    behave exactly as for a validated instance (tests/engine/test_runtime_writer.py).
    """
    obj = _new(cls)  # BaseModel has no __new__ of its own
    _set_dict(obj, fields)
    _set_fields_set(obj, set(fields))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


_new = object.__new__
# BaseModel's own slots, set through their descriptors: what ``object.__setattr__`` ends up calling, without the
# attribute lookup along each model's MRO (a quarter of construct's cost; four records per state).
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
