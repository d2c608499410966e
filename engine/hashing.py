"""Canonical JSON and content-addressed ids (ENGINE-SPEC §2, §0.3).

``canonical_json_bytes`` is RFC 8785 (JCS) as implemented by the ``rfc8785`` package, with this
project's restrictions: the secrets scan runs first (§12.1), every float is rejected (even
``1.0``), and so is every integer outside the I-JSON range (magnitude 2^53 and above).

Fast path (ENGINE-SPEC §0.3), for values made only of plain ``dict`` / ``list`` / ``str`` / ``int`` / ``bool`` /
``None`` (nearly all of them). ``orjson`` (C) writes the bytes with sorted keys and refuses what needs the general
path (a key that is not exactly a ``str``, an integer outside ±(2^53 - 1), a lone surrogate). One Python walk then
checks that every value is of one of those six types (``orjson`` also writes floats, NaN as ``null``, enums, UUIDs,
dates, tuples...) and collects every key and every string long enough to be a mnemonic. Secrets: the detector's
substrings are searched in the ASCII-lower-cased output. None of them contains ``"`` or a character that JSON
escapes, so every real hit shows there; an escape can only add a false one (``\\u001b`` + ``earer ``), and any hit
sends the value down the general path, whose exact scan decides. The mnemonic rule runs on the collected strings
(on the keys only when one of them holds whitespace). ``orjson`` sorts keys by code point and RFC 8785 by UTF-16
code unit; the two orders differ only when an object mixes keys with supplementary-plane characters and keys with
U+E000..U+FFFF, so when the output holds both kinds of character (UTF-8 lead bytes 0xF0..0xF4, and 0xEE or 0xEF)
the bytes come from ``rfc8785.dumps``. Anything else takes the general path. Property tests prove the fast path,
the general path and ``rfc8785`` equal, bytes and errors (tests/engine/test_canonical_fast.py).

General path. One walk over the value checks types and integer ranges, collects
every string (keys and values) for the secrets scan, and notes whether stdlib ``json`` can produce
the RFC 8785 bytes. The walk is a tight loop for plain ``dict``/``list``/``str``/``int``/``bool``/
``None`` values; on anything else (floats, unsafe integers, tuples, subclasses, other types) the
exact general walk takes over, so errors and their precedence are those of the reference checks.
Stdlib ``json`` is safe when every object is a plain ``dict`` and no key holds a character at or
above U+D800: stdlib ``sort_keys`` orders keys by code point, RFC 8785 by UTF-16 code unit, and the
two orders differ only between U+E000..U+FFFF and supplementary-plane characters (surrogates).
String escaping is identical (``"``, ``\\``, ``\\b \\f \\n \\r \\t``, other controls as lowercase
``\\u00xx``, everything else including U+007F and U+2028 raw). Anything else, and any string that
does not encode as UTF-8 (lone surrogates), goes through ``rfc8785.dumps``. The equality of the
two paths is proven by a property test (tests/engine/test_canonical_fast.py).

The secrets scan is the detector of :mod:`engine._secrets` applied to all strings at once: the
substrings are searched in the NUL-joined, ASCII-lower-cased strings (no substring contains NUL, so
a hit lies inside one string), and the mnemonic heuristic runs only on strings a cheap regular
expression admits (12..24 words of ``[a-z]`` separated by whitespace). A property test proves it
equal to :func:`engine._secrets.json_contains_secrets`.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from typing import Any

import orjson
import rfc8785

from engine._secrets import SECRET_SUBSTRINGS, _looks_like_mnemonic, json_contains_secrets
from engine.ids import ArtifactId

__all__ = [
    "MAX_SAFE_INTEGER",
    "CanonicalJsonError",
    "CanonicalJsonErrorKind",
    "artifact_id_for_bytes",
    "artifact_id_for_json",
    "canonical_json_bytes",
    "canonical_members",
    "check_canonical_value",
]

MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalJsonErrorKind(StrEnum):
    FLOAT_NOT_ALLOWED = "FloatNotAllowed"
    SECRETS_NOT_ALLOWED = "SecretsNotAllowed"
    NOT_JSON = "NotJson"


class CanonicalJsonError(ValueError):
    """Why a value cannot be canonically encoded. Callers map it to their contract error."""

    def __init__(self, kind: CanonicalJsonErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def is_float(self) -> bool:
        return self.kind is CanonicalJsonErrorKind.FLOAT_NOT_ALLOWED

    @property
    def is_secret(self) -> bool:
        return self.kind is CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED


# Substring detection: a few short "cores", each contained in some detector substrings; only when a
# core occurs are its substrings searched. Every substring contains a core (a substring added to the
# detector without one becomes its own core), so no hit is missed.
_CORES = ("pass", "mnemonic", "key", "phrase", "token", "authorization", "bearer ")


def _core_table() -> tuple[tuple[bytes, tuple[bytes, ...]], ...]:
    table: dict[str, list[str]] = {core: [] for core in _CORES}
    for sub in SECRET_SUBSTRINGS:
        core = next((c for c in _CORES if c in sub), sub)
        table.setdefault(core, []).append(sub)
    return tuple((c.encode(), tuple(s.encode() for s in subs)) for c, subs in table.items() if subs)


_SECRET_CORES = _core_table()
# A superset of _secrets' mnemonic rule (str.split whitespace is regex \s); the exact rule follows.
_MNEMONIC_CANDIDATE = re.compile(r"\s*+[a-z]++(?:\s++[a-z]++){11,23}+\s*+")  # possessive: no backtracking
_MNEMONIC_MIN_LEN = 23  # 12 one-letter words and 11 separators
_SURROGATES_START = "\ud800"
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
_encode = _ENCODER.encode


def _strings_contain_secrets(strings: list[str]) -> bool:
    """``any(contains_secrets(s) for s in strings)``, with C-speed searches over all strings at once."""
    if not strings:
        return False
    # bytes.lower() lower-cases ASCII only, exactly like the detector (Rust's to_ascii_lowercase);
    # NUL separators: no substring contains NUL, so a hit lies inside one string.
    blob = "\x00".join(strings).encode("utf-8", "surrogatepass").lower()
    for core, subs in _SECRET_CORES:
        if core in blob and any(sub in blob for sub in subs):
            return True
    mnemonic = _MNEMONIC_CANDIDATE.fullmatch
    return any(_looks_like_mnemonic(s) for s in strings if len(s) >= _MNEMONIC_MIN_LEN and mnemonic(s))


def _float_error() -> CanonicalJsonError:
    return CanonicalJsonError(CanonicalJsonErrorKind.FLOAT_NOT_ALLOWED, "floats are not allowed in canonical JSON")


_PLAIN = 0
_SLOW_KEYS = 1
_UNUSUAL = 2


def _walk_plain(value: Any, strings: list[str]) -> int:
    """The common case in one tight pass: plain dict/list/str/int/bool/None (and str subclasses as values).

    Collects every string; returns ``_PLAIN``, ``_SLOW_KEYS`` (a key at or above U+D800: use rfc8785) or
    ``_UNUSUAL`` (anything else: floats, unsafe ints, tuples, other types, non-str keys), after which the exact
    :func:`_check_general` walk decides.
    """
    add = strings.append
    stack: list[Any] = [[value]]
    pop = stack.pop
    push = stack.append
    lo, hi = -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER
    result = _PLAIN
    while stack:
        v = pop()
        if type(v) is dict:
            for k, x in v.items():
                if type(k) is not str:
                    return _UNUSUAL
                add(k)
                if not k.isascii() and max(k) >= _SURROGATES_START:
                    result = _SLOW_KEYS
                t = type(x)
                if t is str:
                    add(x)
                elif t is int:
                    if not lo <= x <= hi:
                        return _UNUSUAL
                elif t is dict or t is list:
                    push(x)
                elif x is None or t is bool:
                    continue
                elif isinstance(x, str):
                    add(x)
                else:
                    return _UNUSUAL
        else:
            for x in v:
                t = type(x)
                if t is str:
                    add(x)
                elif t is int:
                    if not lo <= x <= hi:
                        return _UNUSUAL
                elif t is dict or t is list:
                    push(x)
                elif x is None or t is bool:
                    continue
                elif isinstance(x, str):
                    add(x)
                else:
                    return _UNUSUAL
    return result


def _check(value: Any) -> bool:
    """The single walk. Raise like :func:`check_canonical_value`; return True if stdlib json is unsafe."""
    strings: list[str] = []
    shape = _walk_plain(value, strings)
    if shape == _UNUSUAL:
        return _check_general(value)
    if _strings_contain_secrets(strings):
        raise CanonicalJsonError(CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED, "value contains secret-looking content")
    return shape == _SLOW_KEYS


def _check_general(value: Any) -> bool:
    """The exact walk for any value (subclasses, tuples, errors). Raise like :func:`check_canonical_value`;
    return True if stdlib json is unsafe."""
    strings: list[str] = []
    add = strings.append
    stack = [value]
    pop = stack.pop
    extend = stack.extend
    slow = False
    float_seen = False
    problem: CanonicalJsonError | None = None
    scan_only: list[Any] = []
    while stack:
        v = pop()
        t = type(v)
        if t is str:
            add(v)
        elif t is dict:
            for k in v:
                if type(k) is str:
                    add(k)
                    if not slow and not k.isascii() and max(k) >= _SURROGATES_START:
                        slow = True
                else:
                    if isinstance(k, str):
                        add(k)
                    problem = problem or CanonicalJsonError(
                        CanonicalJsonErrorKind.NOT_JSON, "object keys must be strings"
                    )
            extend(v.values())
        elif t is int:
            if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                problem = problem or CanonicalJsonError(
                    CanonicalJsonErrorKind.FLOAT_NOT_ALLOWED,
                    "integer outside the I-JSON range (|n| < 2^53) not allowed",
                )
        elif t is list or t is tuple:
            extend(v)
        elif v is None or t is bool:
            continue
        elif t is float:
            float_seen = True
        elif isinstance(v, str):
            add(v)
        elif isinstance(v, bool):
            continue
        elif isinstance(v, int):
            stack.append(int(v))
        elif isinstance(v, float):
            float_seen = True
        elif isinstance(v, dict):
            slow = True
            stack.append(dict(v))
        else:
            if isinstance(v, list | tuple):
                scan_only.append(v)  # not JSON here, but the detector still looks inside
            problem = problem or CanonicalJsonError(
                CanonicalJsonErrorKind.NOT_JSON, f"value of type {t.__name__} is not JSON"
            )
    if _strings_contain_secrets(strings) or (scan_only and json_contains_secrets(scan_only)):
        raise CanonicalJsonError(CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED, "value contains secret-looking content")
    if float_seen:
        raise _float_error()
    if problem is not None:
        raise problem
    return slow


def check_canonical_value(value: Any) -> None:
    """Raise :class:`CanonicalJsonError` unless ``value`` is secret-free, float-free JSON.

    The secrets verdict wins over floats and shape errors (§2.1 step 1); floats win over the
    other problems.
    """
    _check(value)


# Sorted keys; integers beyond ±(2^53 - 1) and subclasses of str/int/dict/list (e.g. str-subclass keys) are errors.
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER | orjson.OPT_PASSTHROUGH_SUBCLASS
_orjson_dumps = orjson.dumps
_SUPPLEMENTARY_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")  # UTF-8 lead bytes of U+10000..U+10FFFF
_HIGH_BMP_LEADS = (b"\xee", b"\xef")  # UTF-8 lead bytes of U+E000..U+FFFF


def _plain_strings(value: Any, keys: list[str], long_strings: list[str]) -> bool:
    """Is every value inside ``value`` exactly a dict, list, str, int, bool or None? Collects every key, and every
    string value long enough to be a mnemonic.

    Keys are not checked: ``orjson`` has already refused any key that is not exactly a ``str``.
    """
    add = long_strings.append
    extend = keys.extend
    min_len = _MNEMONIC_MIN_LEN
    stack: list[Any] = [[value]]
    pop = stack.pop
    push = stack.append
    while stack:
        v = pop()
        if type(v) is dict:
            extend(v)
            v = v.values()
        for x in v:
            t = type(x)
            if t is str:
                if len(x) >= min_len:
                    add(x)
            elif t is dict or t is list:
                push(x)
            elif t is not int and t is not bool and x is not None:
                return False
    return True


def _output_may_hold_secrets(out: bytes) -> bool:
    """Could the strings behind ``out`` (orjson's output) contain a detector substring? No false negatives."""
    blob = out.lower()
    return any(core in blob and any(sub in blob for sub in subs) for core, subs in _SECRET_CORES)


def _has_mnemonic(strings: list[str]) -> bool:
    mnemonic = _MNEMONIC_CANDIDATE.fullmatch
    return any(_looks_like_mnemonic(s) for s in strings if len(s) >= _MNEMONIC_MIN_LEN and mnemonic(s))


def _orders_may_differ(out: bytes) -> bool:
    """Could code-point key order differ from UTF-16 key order somewhere in ``out``? No false negatives."""
    if out.isascii():
        return False
    return any(b in out for b in _SUPPLEMENTARY_LEADS) and any(b in out for b in _HIGH_BMP_LEADS)


def canonical_json_bytes(value: Any) -> bytes:
    """RFC 8785 canonical bytes of ``value``; secrets, floats and unsafe integers rejected."""
    try:
        out = _orjson_dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: a non-str key, an unsafe integer, a lone surrogate, another type
        return _canonical_general(value)
    keys: list[str] = []
    long_strings: list[str] = []
    if not _plain_strings(value, keys, long_strings) or _output_may_hold_secrets(out):
        return _canonical_general(value)  # the exact walk and scan decide
    # A mnemonic holds whitespace: keys without any (nearly all of them) need no look (str.split: C speed, and a
    # superset of Rust's whitespace).
    if _has_mnemonic(long_strings) or (len("\x00".join(keys).split(maxsplit=1)) > 1 and _has_mnemonic(keys)):
        raise CanonicalJsonError(CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED, "value contains secret-looking content")
    if _orders_may_differ(out):
        return rfc8785.dumps(value)  # checked above; only rfc8785 has the UTF-16 key order
    return out


def canonical_members(value: dict[str, Any], encoded: bytes) -> dict[str, bytes] | None:
    """The members of a JSON object as canonical bytes (``"key":value``), cut from ``encoded``, its canonical bytes.

    RFC 8785 is compositional: an object's encoding is its members, sorted by key, comma-joined, in braces. Each
    member is encoded here by ``orjson`` (C speed, no checks: ``encoded`` was checked as a whole, and every check is
    about one string or one number, so it holds for each member) and the result is used only when the members,
    joined in ``encoded``'s key order, give ``encoded`` back byte for byte; else ``None``.
    """
    dumps, option = _orjson_dumps, _ORJSON_OPTIONS
    try:
        members = {k: dumps(k) + b":" + dumps(v, option=option) for k, v in value.items()}
    except TypeError:  # orjson.JSONEncodeError: what orjson cannot encode, the caller encodes member by member
        return None
    if len(encoded) != sum(map(len, members.values())) + max(len(members) - 1, 0) + 2:
        return None
    ordered = [members[k] for k in sorted(members)] if encoded.isascii() else None
    if ordered is None or b"{" + b",".join(ordered) + b"}" != encoded:
        return None
    return members


def _canonical_general(value: Any) -> bytes:
    """:func:`canonical_json_bytes` for any value: the exact walk, then stdlib ``json`` or ``rfc8785``."""
    if not _check(value):
        try:
            return _encode(value).encode("utf-8")
        except UnicodeEncodeError:
            pass  # lone surrogates: let the reference implementation report it
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:  # e.g. lone surrogates
        raise CanonicalJsonError(CanonicalJsonErrorKind.NOT_JSON, f"value cannot be canonicalised: {exc}") from exc


def canonical_json_bytes_reference(value: Any) -> bytes:
    """The same checks, always encoded by ``rfc8785`` (tests and benchmarks compare against it)."""
    _check(value)
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:
        raise CanonicalJsonError(CanonicalJsonErrorKind.NOT_JSON, f"value cannot be canonicalised: {exc}") from exc


def artifact_id_for_bytes(data: bytes) -> ArtifactId:
    """Lowercase hex SHA-256 of exactly these bytes (the kind is not hashed)."""
    return ArtifactId(hashlib.sha256(data).hexdigest())


def artifact_id_for_json(value: Any) -> ArtifactId:
    """``artifact_id_for_bytes(canonical_json_bytes(value))``."""
    return artifact_id_for_bytes(canonical_json_bytes(value))
