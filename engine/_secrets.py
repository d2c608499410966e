"""The secrets detector (ENGINE-SPEC §12.1).

A string looks secret when its ASCII-lower-cased form contains one of the substrings below, or
when it is a mnemonic-like phrase (12 to 24 whitespace-separated words of ASCII lowercase
letters). JSON values are scanned recursively, object keys before values.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SECRET_SUBSTRINGS", "contains_secrets", "json_contains_secrets"]

SECRET_SUBSTRINGS: tuple[str, ...] = (
    "password",
    "passphrase",
    "mnemonic",
    "private_key",
    "privatekey",
    "seed phrase",
    "seed_phrase",
    "seedphrase",
    "api_key",
    "apikey",
    "x-api-key",
    "x_api_key",
    "access_key",
    "accesskey",
    "secret_key",
    "secretkey",
    "aws_access_key_id",
    "aws_secret_access_key",
    "access_token",
    "refresh_token",
    "id_token",
    "authorization",
    "bearer ",
)

_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PATTERN = re.compile("|".join(re.escape(s) for s in SECRET_SUBSTRINGS))
_WORD = re.compile(r"[a-z]+")
# Rust's split_whitespace: Unicode White_Space. Python's str.split() also splits on
# U+001C..U+001F, which Rust does not; those are kept inside words (and then fail [a-z]+).
_NON_RUST_WS = frozenset("\x1c\x1d\x1e\x1f")


def _split_whitespace(value: str) -> list[str]:
    if not any(ch in _NON_RUST_WS for ch in value):
        return value.split()
    out: list[str] = []
    cur: list[str] = []
    for ch in value:
        if ch.isspace() and ch not in _NON_RUST_WS:
            if cur:
                out.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def _looks_like_mnemonic(value: str) -> bool:
    words = _split_whitespace(value)
    return 12 <= len(words) <= 24 and all(_WORD.fullmatch(w) for w in words)


def contains_secrets(value: str) -> bool:
    """True if the string looks like it carries a secret."""
    if _PATTERN.search(value.translate(_UPPER)):
        return True
    # 12 one-letter words need at least 23 characters.
    return len(value) >= 23 and _looks_like_mnemonic(value)


def json_contains_secrets(value: Any) -> bool:
    """Recursive scan: strings are checked; object keys before values; others never secret."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if contains_secrets(v):
                return True
        elif isinstance(v, dict):
            for k in v:
                if isinstance(k, str) and contains_secrets(k):
                    return True
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False
