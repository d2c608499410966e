"""CONFORMANCE Z/W1: a completed 2-state run's event stream, byte for byte (ENGINE-SPEC §0.2, §0.4, §4.4, §14).

The run is fixed: run id ``W1_RUN``, a ``FakeClock`` (every ``ts_millis`` is ``W1_MILLIS``), initial context
``{"greeting": "hello"}``, states ``s1`` (writes ``a = 1``) → ``s2`` (writes ``b = "two"``), ``base_config()``.
Its stream, re-encoded one envelope per line (``encode_envelope`` + ``\\n``), must equal ``tests/data/w1_stream.jsonl``.

The golden file was generated once by :func:`w1_stream_bytes` and then read and checked by hand against the spec:
seqs 1..6, ``RunStarted`` / ``StateEntered``+``StateCompleted`` ×2 / ``RunCompleted{Completed}``, externally tagged
``{"Kernel":{...}}`` events, fields in the seed's declaration order, ids as plain strings, attempt 0, each state's
base snapshot the previous checkpoint, the final snapshot that of ``s2``. To regenerate after an intended wire
change (and re-check by hand)::

    .venv/bin/python -c "import asyncio; from tests.engine.test_conformance_w1_golden import w1_stream_bytes as f; \\
        open('tests/data/w1_stream.jsonl', 'wb').write(asyncio.run(f()))"
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import rfc8785

from engine.events import (
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    decode_envelope,
    encode_envelope,
)
from engine.ids import RunId
from engine.runtime import Engine
from engine.stores import MemoryStore
from engine.testing import (
    FakeClock,
    FakeSleeper,
    WriteKey,
    base_config,
    fixed_run_ids,
    make_manifest,
    make_plan,
    read_events,
    sid,
    start_plan,
)

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "w1_stream.jsonl"
W1_RUN = RunId("1f0e2d3c-4b5a-4697-8877-a1b2c3d4e5f6")
W1_MILLIS = 1_760_000_000_000
INITIAL = {"greeting": "hello"}


def _jcs_id(value: Any) -> str:
    """Artifact id computed with the reference RFC 8785 encoder, independently of ``engine.hashing``."""
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


async def w1_envelopes() -> list[EventEnvelope]:
    ms = MemoryStore()
    engine = Engine(clock=FakeClock(W1_MILLIS), sleeper=FakeSleeper(), run_ids=fixed_run_ids(W1_RUN))
    plan = make_plan([("s1", WriteKey("a", 1)), ("s2", WriteKey("b", "two"))], [("s1", "s2")], op_id="w1")
    await start_plan(engine, ms.stores, plan, base_config(), INITIAL)
    return await read_events(ms.stores, W1_RUN)


async def w1_stream_bytes() -> bytes:
    """The W1 run's stream re-encoded: one wire-form envelope per line, each ending with ``\\n``."""
    return b"".join(encode_envelope(env) + b"\n" for env in await w1_envelopes())


async def test_w1_stream_equals_golden_file_byte_for_byte() -> None:
    golden = GOLDEN.read_bytes()
    produced = await w1_stream_bytes()
    assert produced.splitlines() == golden.splitlines()  # a readable diff first
    assert produced == golden


async def test_w1_every_envelope_round_trips() -> None:
    """decode_envelope → encode_envelope gives back each golden line; decoding gives back the run's envelopes."""
    lines = GOLDEN.read_bytes().split(b"\n")
    assert lines[-1] == b""  # newline-terminated, no blank lines
    lines = lines[:-1]
    envs = await w1_envelopes()
    assert len(lines) == len(envs) == 6
    for line, env in zip(lines, envs, strict=True):
        decoded = decode_envelope(line)
        assert decoded == env
        assert encode_envelope(decoded) == line
        assert decode_envelope(encode_envelope(decoded)) == decoded


def test_w1_golden_file_is_the_spec_trace() -> None:
    """The golden file read independently of the engine: the §14 trace of a 2-state success, with fixed fields."""
    records = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {r["run_id"] for r in records} == {str(W1_RUN)}
    assert {r["ts_millis"] for r in records} == {W1_MILLIS}
    assert [list(r) for r in records] == [["run_id", "seq", "ts_millis", "event"]] * 6
    tags = [next(iter(r["event"]["Kernel"])) for r in records]
    assert tags == ["RunStarted", "StateEntered", "StateCompleted", "StateEntered", "StateCompleted", "RunCompleted"]

    ev = [r["event"]["Kernel"][t] for r, t in zip(records, tags, strict=True)]
    initial = _jcs_id(INITIAL)
    s1 = _jcs_id({**INITIAL, "a": 1})
    s2 = _jcs_id({**INITIAL, "a": 1, "b": "two"})
    manifest = _jcs_id(make_manifest(base_config(), op_id="w1").model_dump(mode="json"))
    assert ev[0] == {"op_id": "w1", "manifest_id": manifest, "initial_snapshot_id": initial}
    assert ev[1] == {"state_id": sid("s1"), "attempt": 0, "base_snapshot_id": initial}
    assert ev[2] == {"state_id": sid("s1"), "context_snapshot_id": s1}
    assert ev[3] == {"state_id": sid("s2"), "attempt": 0, "base_snapshot_id": s1}
    assert ev[4] == {"state_id": sid("s2"), "context_snapshot_id": s2}
    assert ev[5] == {"status": "Completed", "final_snapshot_id": s2}
    for i, key in enumerate(["op_id", "state_id", "state_id", "state_id", "state_id", "status"]):
        assert next(iter(ev[i])) == key  # field order of the seed's structs


async def test_w1_typed_view_matches() -> None:
    envs = await w1_envelopes()
    kinds = [type(e.event) for e in envs]
    assert kinds == [RunStarted, StateEntered, StateCompleted, StateEntered, StateCompleted, RunCompleted]
    last = envs[-1].event
    assert isinstance(last, RunCompleted) and last.status is RunStatus.COMPLETED
