"""``TypedContextExt`` (the seed's ``read_typed`` / ``write_typed``): pydantic models, validated on read, canonical
on write (issue 16)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from engine.context import JsonContext, read_typed, write_typed
from engine.errors import ContextError
from engine.hashing import canonical_json_bytes


class Point(BaseModel):
    x: int
    y: int


class Reading(BaseModel):
    value: float


def test_write_typed_then_read_typed_round_trips() -> None:
    ctx = JsonContext()
    ctx.write_typed("p", Point(x=1, y=2))
    assert ctx.read("p") == {"x": 1, "y": 2}
    assert ctx.read_typed("p", Point) == Point(x=1, y=2)
    assert read_typed(ctx, "missing", Point) is None
    assert canonical_json_bytes(ctx.dump()) == b'{"p":{"x":1,"y":2}}'


def test_read_typed_validates() -> None:
    ctx = JsonContext({"p": {"x": "not a number", "y": 2}})
    with pytest.raises(ContextError) as exc:
        ctx.read_typed("p", Point)
    assert exc.value.code == "context_deserialize_failed"


def test_write_typed_refuses_non_canonical_values_at_write() -> None:
    """A float cannot be in a snapshot (§2.1): write_typed refuses it at once and writes nothing."""
    ctx = JsonContext()
    with pytest.raises(ContextError) as exc:
        write_typed(ctx, "r", Reading(value=1.5))
    assert exc.value.code == "context_serialize_failed"
    assert ctx.dump() == {}
    with pytest.raises(ContextError) as big:
        write_typed(ctx, "n", 2**60)
    assert big.value.code == "context_serialize_failed"
    assert ctx.dump() == {}
