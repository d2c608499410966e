"""CONFORMANCE.md section B: canonical JSON and hashing (ENGINE-SPEC §2, §0.3).

Includes the engine's verified put / canonical artifact read helpers (``engine.artifacts``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._kinds import ArtifactKind
from engine.artifacts import (
    check_content_address,
    read_canonical_json,
    verified_put_bytes,
    verified_put_json,
)
from engine.context import JsonContext
from engine.errors import ErrorCategory, StorageError, StorageErrorKind
from engine.hashing import (
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    CanonicalJsonErrorKind,
    artifact_id_for_bytes,
    artifact_id_for_json,
    canonical_json_bytes,
)
from engine.ids import ArtifactId
from engine.stores.memory import MemoryArtifactStore

MNEMONIC_12 = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


# -- B7 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
        ({"arr": [True, None, 3], "obj": {"y": 2, "x": 1}}, b'{"arr":[true,null,3],"obj":{"x":1,"y":2}}'),
        ({"s": "a\nb"}, b'{"s":"a\\nb"}'),
    ],
)
def test_b7_key_ordering_and_nesting(value: Any, expected: bytes) -> None:
    assert canonical_json_bytes(value) == expected


def test_b7_string_escapes_match_serde_json() -> None:
    """Short escapes for \\b \\f \\n \\r \\t, lowercase \\u00xx for other controls, the rest raw."""
    value = {"s": '\b\f\n\r\t\x00\x1f"\\/\x7f\u2028é😀'}
    expected = '{"s":"\\b\\f\\n\\r\\t\\u0000\\u001f\\"\\\\/\x7f\u2028é😀"}'.encode()
    assert canonical_json_bytes(value) == expected


def test_b7_scalars_and_empty_containers() -> None:
    assert canonical_json_bytes(None) == b"null"
    assert canonical_json_bytes(True) == b"true"
    assert canonical_json_bytes(False) == b"false"
    assert canonical_json_bytes(0) == b"0"
    assert canonical_json_bytes(-17) == b"-17"
    assert canonical_json_bytes({}) == b"{}"
    assert canonical_json_bytes([]) == b"[]"
    assert canonical_json_bytes("") == b'""'
    assert canonical_json_bytes([{"b": [], "a": {}}]) == b'[{"a":{},"b":[]}]'


def test_b7_key_order_is_utf16_code_units_per_project_decision() -> None:
    """§0.3: RFC 8785 orders keys by UTF-16 code units, so U+1F600 (D83D DE00) sorts before U+E000.

    The reference runtime (code-point order) would put U+E000 first; this project follows RFC 8785.
    """
    assert canonical_json_bytes({"\ue000": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ue000":1}'.encode()
    # Below the surrogate range both orders agree.
    assert canonical_json_bytes({"é": 1, "z": 2, "Z": 3, "ä": 4}) == '{"Z":3,"z":2,"ä":4,"é":1}'.encode()


def test_b7_tuples_encode_as_arrays() -> None:
    assert canonical_json_bytes({"t": (1, "x")}) == b'{"t":[1,"x"]}'


@pytest.mark.parametrize("bad", [{1: "x"}, {"a": {1, 2}}, {"a": b"bytes"}, object()])
def test_b7_non_json_values_rejected(bad: Any) -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json_bytes(bad)
    assert info.value.kind is CanonicalJsonErrorKind.NOT_JSON


def test_b7_lone_surrogate_rejected() -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json_bytes({"a": "\ud800"})
    assert info.value.kind is CanonicalJsonErrorKind.NOT_JSON


# A reference encoder written from the rules (not from rfc8785), used as a property oracle.
def _reference(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(f"{_reference(k)}:{_reference(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_reference(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


_scalars = st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text(max_size=8)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(_json)
def test_b7_property_matches_reference_encoder_and_is_stable(value: Any) -> None:
    try:
        encoded = canonical_json_bytes(value)
    except CanonicalJsonError as exc:
        # Generated text can look like a secret (e.g. contains "apikey") or hold a lone surrogate.
        assert exc.kind in (CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED, CanonicalJsonErrorKind.NOT_JSON)
        return
    assert encoded == _reference(value).encode("utf-8")
    assert canonical_json_bytes(json.loads(encoded)) == encoded


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.integers(-5, 5), max_size=6), st.randoms())
def test_b7_property_insertion_order_is_irrelevant(value: dict[str, int], rnd: Any) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    try:
        expected = canonical_json_bytes(value)
    except CanonicalJsonError:
        return
    assert canonical_json_bytes(shuffled) == expected


# -- B8 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"x": 1.5}, [1.0, 2], 2.0, {"a": [{"b": -0.0}]}, float("nan"), float("inf")])
def test_b8_floats_rejected(value: Any) -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json_bytes(value)
    assert info.value.kind is CanonicalJsonErrorKind.FLOAT_NOT_ALLOWED
    assert info.value.is_float


def test_b8_integer_range_follows_project_decision() -> None:
    """B8 with this project's override.

    CONFORMANCE B8 says "[derived] -2^63 and 2^64-1 accepted" (the reference runtime's i64/u64 range).
    ENGINE-SPEC §0.3 overrides it: integers outside the I-JSON safe range (|n| >= 2^53) are rejected as
    FloatNotAllowed, because RFC 8785 encodes numbers as IEEE doubles.
    """
    assert canonical_json_bytes(2**53 - 1) == b"9007199254740991"
    assert canonical_json_bytes(-(2**53 - 1)) == b"-9007199254740991"
    for bad in (2**53, -(2**53), 2**64, 2**64 - 1, -(2**63), 2**200):
        with pytest.raises(CanonicalJsonError) as info:
            canonical_json_bytes({"n": [bad]})
        assert info.value.kind is CanonicalJsonErrorKind.FLOAT_NOT_ALLOWED, bad


def test_b8_bool_is_not_a_number() -> None:
    assert canonical_json_bytes([True, False, 1, 0]) == b"[true,false,1,0]"


# -- B9 ---------------------------------------------------------------------------------------


def test_b9_mnemonic_rejected_as_secret() -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json_bytes({"mnemonic": MNEMONIC_12})
    assert info.value.kind is CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED
    assert info.value.is_secret
    # The phrase alone, under an innocent key, is caught by the heuristic.
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json_bytes({"words": MNEMONIC_12})
    assert info.value.is_secret


def test_b9_secret_scan_runs_before_float_check() -> None:
    """B9 [derived]: {"password": 1.5} → SecretsNotAllowed (secret scan first)."""
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json_bytes({"password": 1.5})
    assert info.value.kind is CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json_bytes([2**60, {"x": "Bearer abc"}])
    assert info.value.kind is CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED


def test_b9_artifact_id_for_json_propagates_the_same_errors() -> None:
    with pytest.raises(CanonicalJsonError) as info:
        artifact_id_for_json({"api_key": "x"})
    assert info.value.is_secret
    with pytest.raises(CanonicalJsonError) as info:
        artifact_id_for_json({"x": 0.5})
    assert info.value.is_float


# -- B10 --------------------------------------------------------------------------------------


def test_b10_sha256_vector() -> None:
    aid = artifact_id_for_bytes(b"hello")
    assert aid == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert len(aid) == 64 and aid == aid.lower()
    assert isinstance(aid, ArtifactId)


def test_b10_artifact_id_for_json_hashes_the_canonical_bytes() -> None:
    value = {"b": 1, "a": [True]}
    assert artifact_id_for_json(value) == hashlib.sha256(b'{"a":[true],"b":1}').hexdigest()


async def test_b10_kind_is_not_hashed() -> None:
    store = MemoryArtifactStore()
    a = await store.put(ArtifactKind.MANIFEST, b"{}")
    b = await store.put(ArtifactKind.other("x"), b"{}")
    assert a == b == artifact_id_for_bytes(b"{}")


# -- B11 --------------------------------------------------------------------------------------


async def test_b11_snapshot_determinism() -> None:
    ctx_a = JsonContext()
    ctx_a.write("b", 2)
    ctx_a.write("a", 1)
    ctx_b = JsonContext()
    ctx_b.write("a", 1)
    ctx_b.write("b", 2)
    assert list(ctx_a.dump()) == ["b", "a"]  # insertion order differs...
    assert canonical_json_bytes(ctx_a.dump()) == canonical_json_bytes(ctx_b.dump()) == b'{"a":1,"b":2}'
    assert artifact_id_for_json(ctx_a.dump()) == artifact_id_for_json(ctx_b.dump())
    store = MemoryArtifactStore()
    id_a = await verified_put_json(store, ArtifactKind.CONTEXT_SNAPSHOT, ctx_a.dump())
    id_b = await verified_put_json(store, ArtifactKind.CONTEXT_SNAPSHOT, ctx_b.dump())
    assert id_a == id_b == artifact_id_for_bytes(b'{"a":1,"b":2}')
    assert await store.get(id_a) == b'{"a":1,"b":2}'


def test_b11_delete_then_rewrite_gives_the_same_snapshot() -> None:
    ctx = JsonContext({"a": 1, "b": 2})
    ctx.delete("a")
    ctx.write("a", 1)
    assert artifact_id_for_json(ctx.dump()) == artifact_id_for_bytes(b'{"a":1,"b":2}')


# -- B12 --------------------------------------------------------------------------------------


class LyingStore(MemoryArtifactStore):
    """Returns "f"*64 for every put (B12)."""

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        await super().put(kind, data)
        return ArtifactId("f" * 64)


class BytesStore:
    """Serves fixed bytes under fixed ids (B13): the engine must check what a store returns."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        aid = artifact_id_for_bytes(data)
        self.blobs[aid] = data
        return aid

    async def get(self, artifact_id: ArtifactId) -> bytes:
        try:
            return self.blobs[artifact_id]
        except KeyError:
            raise StorageError.not_found("artifact_not_found", f"artifact not found: {artifact_id}") from None

    async def exists(self, artifact_id: ArtifactId) -> bool:
        return artifact_id in self.blobs


async def test_b12_verified_put_detects_wrong_id() -> None:
    store = LyingStore()
    with pytest.raises(StorageError) as info:
        await verified_put_json(store, ArtifactKind.CONTEXT_SNAPSHOT, {"x": 1})
    err = info.value
    assert err.kind is StorageErrorKind.CORRUPTION
    assert err.code == "artifact_put_id_mismatch"
    assert err.info.category is ErrorCategory.STORAGE
    assert not err.retryable
    assert err.info.details == {"expected": artifact_id_for_bytes(b'{"x":1}'), "actual": "f" * 64}
    with pytest.raises(StorageError) as info:
        await verified_put_bytes(store, ArtifactKind.FACT_PAYLOAD, b"raw")
    assert info.value.code == "artifact_put_id_mismatch"


async def test_b12_verified_put_returns_the_content_id() -> None:
    store = MemoryArtifactStore()
    aid = await verified_put_json(store, ArtifactKind.MANIFEST, {"b": [1], "a": None})
    assert aid == artifact_id_for_bytes(b'{"a":null,"b":[1]}')
    assert store.kinds[aid] == ArtifactKind.MANIFEST
    assert await verified_put_bytes(store, ArtifactKind.OUTPUT, b"hello") == artifact_id_for_bytes(b"hello")


async def test_b12_verified_put_json_refuses_bad_values_before_writing() -> None:
    store = MemoryArtifactStore()
    with pytest.raises(CanonicalJsonError) as info:
        await verified_put_json(store, ArtifactKind.CONTEXT_SNAPSHOT, {"private_key": "k"})
    assert info.value.is_secret
    with pytest.raises(CanonicalJsonError) as info:
        await verified_put_json(store, ArtifactKind.CONTEXT_SNAPSHOT, {"x": 0.5})
    assert info.value.is_float
    assert store.all_bytes() == []


async def test_b12_storage_errors_of_put_propagate() -> None:
    class FailingStore(BytesStore):
        async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
            raise StorageError.other("disk_full", "no space left")

    with pytest.raises(StorageError) as info:
        await verified_put_json(FailingStore({}), ArtifactKind.OUTPUT, {})
    assert info.value.code == "disk_full"


# -- B13 --------------------------------------------------------------------------------------


def _own(data: bytes) -> tuple[str, bytes]:
    return artifact_id_for_bytes(data), data


@pytest.mark.parametrize(
    ("stored", "code"),
    [
        ((artifact_id_for_bytes(b'{"a":1}'), b'{"a":2}'), "artifact_content_address_mismatch"),
        (_own(b'{"b":2,"a":1}'), "artifact_not_canonical"),
        (_own(b'{ "a": 1 }'), "artifact_not_canonical"),
        (_own(b'{"a":1.25}'), "artifact_float_not_allowed"),
        (_own(b'{"private_key":"do-not-persist"}'), "secrets_detected"),
        # derived cases
        (_own(b'{"a":1}\n'), "artifact_not_canonical"),
        (_own(b'{"a":1,"a":1}'), "artifact_not_canonical"),
        (_own(b'{"a":"\\u00e9"}'), "artifact_not_canonical"),
        (_own(b'{"a":-0}'), "artifact_float_not_allowed"),  # serde_json reads -0 as a float
        (_own(b"[0,-0]"), "artifact_float_not_allowed"),
        (_own(b"-0"), "artifact_float_not_allowed"),
        (_own(b'{"a":"\\ud800"}'), "artifact_not_canonical"),
        (_own(b'{"a":9007199254740992}'), "artifact_float_not_allowed"),
        (_own(b'{"a":1e400}'), "artifact_float_not_allowed"),
        (_own(b'{"password":1.5}'), "secrets_detected"),
        (_own(b'{"a":1'), "artifact_json_decode_failed"),
        (_own(b'{"a":NaN}'), "artifact_json_decode_failed"),
        (_own(b'\xff{"a":1}'), "artifact_json_decode_failed"),
        (_own(b""), "artifact_json_decode_failed"),
        (_own(b'{"a":1} {"b":2}'), "artifact_json_decode_failed"),
    ],
)
async def test_b13_canonical_artifact_read_rejects(stored: tuple[str, bytes], code: str) -> None:
    aid, data = stored
    store = BytesStore({aid: data})
    with pytest.raises(StorageError) as info:
        await read_canonical_json(store, ArtifactId(aid))
    err = info.value
    assert err.kind is StorageErrorKind.CORRUPTION, err
    assert err.code == code
    assert err.info.category is ErrorCategory.STORAGE
    assert "do-not-persist" not in err.message and "do-not-persist" not in json.dumps(err.info.details)


async def test_b13_negative_zero_is_a_float_but_the_string_is_not() -> None:
    """serde_json reads the number ``-0`` as a float (rejected above); ``"-0"`` and ``-0.5e0``-free text stay JSON."""
    aid, data = _own(b'{"-0":["-0",0,-1]}')
    assert await read_canonical_json(BytesStore({aid: data}), ArtifactId(aid)) == {"-0": ["-0", 0, -1]}


async def test_b13_canonical_manifest_read_returns_value() -> None:
    store = MemoryArtifactStore()
    aid = await store.put(ArtifactKind.MANIFEST, b'{"a":1,"b":2}')
    assert await read_canonical_json(store, aid) == {"a": 1, "b": 2}
    aid2 = await verified_put_json(store, ArtifactKind.CONTEXT_SNAPSHOT, {"z": [None, "é", {"y": True}], "a": -3})
    assert await read_canonical_json(store, aid2) == {"a": -3, "z": [None, "é", {"y": True}]}


async def test_b13_missing_artifact_propagates_not_found() -> None:
    with pytest.raises(StorageError) as info:
        await read_canonical_json(MemoryArtifactStore(), ArtifactId("0" * 64))
    assert info.value.kind is StorageErrorKind.NOT_FOUND


def test_b13_content_address_check() -> None:
    check_content_address(artifact_id_for_bytes(b"hello"), b"hello")
    with pytest.raises(StorageError) as info:
        check_content_address(artifact_id_for_bytes(b"hello"), b"hellO")
    assert info.value.code == "artifact_content_address_mismatch"
