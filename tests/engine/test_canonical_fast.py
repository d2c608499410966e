"""``canonical_json_bytes`` is byte-identical to ``rfc8785`` (ENGINE-SPEC §0.3): its orjson fast path and its
general path (exact walk, then stdlib json or rfc8785) give the bytes, and the errors, of ``rfc8785`` behind the
reference checks, on every value.

Also: both secrets scans (the fast path's scan of the encoded output plus the mnemonic rule on the collected strings,
and the general path's one-walk scan) equal the detector of ``engine._secrets``, and the error precedence of
``check_canonical_value`` (secrets, then floats, then other problems) is unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import uuid
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine import hashing
from engine._secrets import SECRET_SUBSTRINGS, json_contains_secrets
from engine.hashing import (
    CanonicalJsonError,
    CanonicalJsonErrorKind,
    canonical_json_bytes,
    canonical_json_bytes_reference,
    check_canonical_value,
)
from engine.ids import ArtifactId

# Characters chosen to hit every escaping and ordering corner: controls, quote, backslash, DEL, the
# JavaScript line separators, Latin-1, the surrogate-adjacent BMP ranges (U+D7FF, U+E000..U+FFFF)
# and the supplementary planes.
_CORNER_CHARS = st.sampled_from(
    [
        "\x00", "\x01", "\x08", "\t", "\n", "\x0b", "\x0c", "\r", "\x1b", "\x1c", "\x1f", " ", '"', "\\", "/",
        "\x7f", "\x80", "\x85", "\xa0", "é", "ß", "\u2028", "\u2029", "\ud7ff", "\ue000", "\uf8ff", "\ufeff",
        "\ufffd", "\uffff", "\U00010000", "\U0001f600", "\U0010ffff", "a", "z", "A", "0", "_",
    ]
)  # fmt: skip
_ANY_CHAR = st.characters(codec="utf-8")  # every code point except lone surrogates
_TEXT = st.text(st.one_of(_CORNER_CHARS, _ANY_CHAR), max_size=12)
_INTS = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _TEXT)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_TEXT, children, max_size=6),
    ),
    max_leaves=40,
)


def _fast_or_error(value: Any) -> bytes | CanonicalJsonErrorKind:
    try:
        return canonical_json_bytes(value)
    except CanonicalJsonError as exc:
        return exc.kind


@settings(max_examples=1000, deadline=None)
@given(_JSON)
@example({"\ue000": 1, "\U0001f600": 2})  # code-point order differs from UTF-16 order here
@example({"a\ue000": 1, "a\U00010000": 2, "a": 3})
@example({"\x7f\u2028": '\x00\x1f\u2029\\"/'})
@example(["\ud7ff", {"\ud7ff": 0, "\uffff": 1, "\U00010000": 2}])
def test_fast_path_is_byte_identical_to_rfc8785(value: Any) -> None:
    got = _fast_or_error(value)
    if json_contains_secrets(value):
        assert got is CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED
    else:
        assert got == rfc8785.dumps(value)
        assert got == canonical_json_bytes_reference(value)


@pytest.mark.parametrize(
    "value",
    [
        {"b": [1, {"d": None, "c": True}], "a": "x", "é": -(2**53) + 1, "\U0001f600": 2**53 - 1},  # no U+E000..FFFF
        {"\ue000": ["\U0001f600"], "k": "\uffff"},  # both kinds, but only one kind among the keys of an object
        ["\x7f\u2028", "", 0, False, None, [], {}],
        "top level",
        0,
        None,
    ],
)
def test_plain_values_take_the_fast_path(value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain JSON never reaches the general path, and needs rfc8785 only for a possible key-order difference."""
    expected = canonical_json_bytes_reference(value)
    monkeypatch.setattr(hashing, "_canonical_general", _fail)
    if not hashing._orders_may_differ(orjson.dumps(value)):
        monkeypatch.setattr(hashing.rfc8785, "dumps", _fail)
    assert canonical_json_bytes(value) == expected


def _fail(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the fast path was expected")


def test_escapes_that_spell_a_secret_in_the_output_only_are_not_secrets() -> None:
    """``\\u001b`` + ``earer `` reads "bearer " in the encoded output: the exact scan of the strings decides."""
    value = {"s": "\x1bearer \x08earer ", "\x1bearer ": 1}
    assert hashing._output_may_hold_secrets(orjson.dumps(value))
    assert canonical_json_bytes(value) == rfc8785.dumps(value)


def test_key_order_difference_is_settled_by_rfc8785() -> None:
    value = {"x": [{"a\ue000": 1, "a\U00010000": 2}]}
    assert hashing._orders_may_differ(orjson.dumps(value))
    assert canonical_json_bytes(value) == '{"x":[{"a\U00010000":2,"a\ue000":1}]}'.encode()


def test_supplementary_plane_keys_sort_in_utf16_order() -> None:
    value = {"\ue000": 1, "\U0001f600": 2, "b": 3}
    assert canonical_json_bytes(value) == '{"b":3,"\U0001f600":2,"\ue000":1}'.encode()


def test_escaping_parity_corner_cases() -> None:
    s = "".join(chr(c) for c in range(0x20)) + '"\\/\x7f\u2028\u2029é\U0001f600'
    assert canonical_json_bytes({"s": s}) == rfc8785.dumps({"s": s})
    assert b"\\u001f" in canonical_json_bytes(s)  # lowercase hex
    assert "\x7f\u2028".encode() in canonical_json_bytes(s)  # raw


class _Color(enum.IntEnum):
    RED = 7


class _Name(enum.StrEnum):
    A = "alpha"


class _Dict(dict[str, Any]):
    pass


@pytest.mark.parametrize(
    "value",
    [
        {"id": ArtifactId("a" * 64)},
        {"c": _Color.RED, "n": _Name.A},
        _Dict(b=1, a=2),
        {"t": (1, "x", None)},
        "top level string",
        7,
        None,
        [],
        {},
    ],
)
def test_subclasses_and_tuples_match_reference(value: Any) -> None:
    assert canonical_json_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", ["\ud800", {"k": "x\udfff"}, {"\udc00": 1}, ["ok", "\ud83d"]])
def test_lone_surrogates_are_not_json(value: Any) -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json_bytes(value)
    assert info.value.kind is CanonicalJsonErrorKind.NOT_JSON


def test_error_precedence_secrets_then_floats_then_others() -> None:
    with pytest.raises(CanonicalJsonError) as info:
        check_canonical_value({"password": 1.5, 3: object()})
    assert info.value.is_secret
    with pytest.raises(CanonicalJsonError) as info:
        check_canonical_value([object(), 2**60, {"x": 1.0}])
    assert info.value.is_float
    with pytest.raises(CanonicalJsonError) as info:
        check_canonical_value({1: "a"})
    assert info.value.kind is CanonicalJsonErrorKind.NOT_JSON
    with pytest.raises(CanonicalJsonError) as info:
        check_canonical_value([2**53])
    assert info.value.is_float  # unsafe integers are FloatNotAllowed, as in the reference


# --- the one-walk secrets scan equals the detector --------------------------------------------------

_WORDS = st.text(st.sampled_from("abcxyz"), min_size=1, max_size=4)
_SEPS = st.sampled_from([" ", "  ", "\t", "\n", "\xa0", "\u2003", "\x1c", "\x1f", "-", "\x00"])


@st.composite
def _mnemonic_like(draw: st.DrawFn) -> str:
    words = draw(st.lists(_WORDS, min_size=10, max_size=26))
    out = [draw(st.sampled_from(["", " ", "\n"]))]
    for i, w in enumerate(words):
        if i:
            out.append(draw(_SEPS))
        out.append(w.upper() if draw(st.integers(0, 20)) == 0 else w)
    out.append(draw(st.sampled_from(["", " ", "\t"])))
    return "".join(out)


_SECRETISH = st.one_of(
    st.sampled_from(SECRET_SUBSTRINGS),
    st.sampled_from(SECRET_SUBSTRINGS).map(str.upper),
    st.sampled_from(["passwor", "api-key", "bearer", "\rrefresh_token", "\x1bearer ", "x-api_key", "İd_token"]),
)
_SCAN_TEXT = st.one_of(
    _TEXT,
    _mnemonic_like(),
    st.tuples(_TEXT, _SECRETISH, _TEXT).map("".join),
)
_SCAN_JSON = st.recursive(
    st.one_of(st.none(), _INTS, _SCAN_TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(_SCAN_TEXT, children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_SCAN_JSON)
@example(["abandon " * 11 + "about"])
@example(["abandon\x1c" * 11 + "about"])
@example({"abandon " * 12 + "about": 1})
def test_secret_scan_equals_detector(value: Any) -> None:
    expected = json_contains_secrets(value)
    try:
        check_canonical_value(value)
        found = False
    except CanonicalJsonError as exc:
        found = exc.is_secret
    assert found == expected


# --- the plain-shape walk agrees with the exact walk on every value ----------------------------------------------

_ODD_SCALARS = st.one_of(
    _SCALARS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([_Color.RED, _Name.A, ArtifactId("b" * 64), object(), b"bytes"]),
)
_ODD_JSON = st.recursive(
    _ODD_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children),
        st.dictionaries(st.one_of(_TEXT, st.integers(0, 3), st.none()), children, max_size=4),
    ),
    max_leaves=10,
)


def _outcome(check: Any, value: Any) -> Any:
    try:
        return ("ok", check(value))
    except CanonicalJsonError as exc:
        return ("error", exc.kind)


@settings(max_examples=400, deadline=None)
@given(_ODD_JSON)
def test_plain_walk_agrees_with_the_exact_walk(value: Any) -> None:
    from engine.hashing import _check, _check_general

    assert _outcome(_check, value) == _outcome(_check_general, value)


# --- canonical_json_bytes (fast path first) agrees with the reference checks + rfc8785 on every value ---------------


class _Plain(enum.Enum):
    X = 1


@dataclasses.dataclass(frozen=True)
class _Point:
    x: int = 1


class _Str(str):
    pass


# Everything orjson writes natively that the reference refuses or writes differently (floats, NaN and infinities as
# null, enums, UUIDs, dates, dataclasses, orjson fragments), what it refuses (bytes, sets, subclasses, big ints,
# lone surrogates) and what both accept (tuples).
_NASTY_SCALARS = st.one_of(
    _ODD_SCALARS,
    st.floats(),
    st.sampled_from(
        [
            math.nan,
            -math.inf,
            -0.0,
            2.0,
            _Plain.X,
            _Str("s"),
            uuid.UUID(int=7),
            datetime.date(2020, 1, 2),
            datetime.datetime(2020, 1, 2, 3, 4, 5),
            _Point(),
            orjson.Fragment(b"1"),
            {1, 2},
            "\ud800",
            2**53,
            -(2**53),
            2**64,
        ]
    ),
)
_NASTY_JSON = st.recursive(
    _NASTY_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(
            st.one_of(_TEXT, st.integers(0, 3), st.none(), st.just(_Str("k")), st.just(_Name.A)), children, max_size=4
        ),
        st.builds(_Dict, st.dictionaries(_TEXT, children, max_size=3)),
    ),
    max_leaves=10,
)


def _bytes_or_error(encode: Any, value: Any) -> Any:
    try:
        return encode(value)
    except CanonicalJsonError as exc:
        return exc.kind


@settings(max_examples=1000, deadline=None)
@given(_NASTY_JSON)
@example({"a": math.nan})  # orjson writes null
@example([uuid.UUID(int=1), _Plain.X])
@example({"password": math.inf, 1: 2})
@example({_Str("k"): 1})
def test_canonical_json_bytes_agrees_with_the_reference_on_any_value(value: Any) -> None:
    assert _bytes_or_error(canonical_json_bytes, value) == _bytes_or_error(canonical_json_bytes_reference, value)


_SCAN_PLAIN_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), _INTS, _SCAN_TEXT),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_SCAN_TEXT, children, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_SCAN_PLAIN_JSON)
@example(["\x1bearer ", "\x08earer "])  # escapes spell "bearer " in the output only
@example({"k\x0bid_token": 1})
@example({"abandon " * 11 + "about": None})
def test_fast_path_secret_scan_equals_detector(value: Any) -> None:
    got = _bytes_or_error(canonical_json_bytes, value)
    assert (got is CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED) == json_contains_secrets(value)
