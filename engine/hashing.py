"""Canonical JSON and content-addressed ids (ENGINE-SPEC §2, §0.3).

``canonical_json_bytes`` is RFC 8785 (JCS) as implemented by the ``rfc8785`` package, with this
project's restrictions: the secrets scan runs first (§12.1), every float is rejected (even
``1.0``), and so is every integer outside the I-JSON range (magnitude 2^53 and above).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any

import rfc8785

from engine._secrets import json_contains_secrets
from engine.ids import ArtifactId

__all__ = [
    "MAX_SAFE_INTEGER",
    "CanonicalJsonError",
    "CanonicalJsonErrorKind",
    "artifact_id_for_bytes",
    "artifact_id_for_json",
    "canonical_json_bytes",
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


def check_canonical_value(value: Any) -> None:
    """Raise :class:`CanonicalJsonError` unless ``value`` is secret-free, float-free JSON.

    The secrets verdict wins over floats and shape errors (§2.1 step 1).
    """
    if json_contains_secrets(value):
        raise CanonicalJsonError(CanonicalJsonErrorKind.SECRETS_NOT_ALLOWED, "value contains secret-looking content")
    problem: CanonicalJsonError | None = None
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                continue
            problem = problem or CanonicalJsonError(
                CanonicalJsonErrorKind.FLOAT_NOT_ALLOWED, "integer outside the I-JSON range (|n| < 2^53) not allowed"
            )
        elif t is float:
            raise CanonicalJsonError(
                CanonicalJsonErrorKind.FLOAT_NOT_ALLOWED, "floats are not allowed in canonical JSON"
            )
        elif t is dict:
            for k in v:
                if type(k) is not str:
                    problem = problem or CanonicalJsonError(
                        CanonicalJsonErrorKind.NOT_JSON, "object keys must be strings"
                    )
            stack.extend(v.values())
        elif t is list or t is tuple:
            stack.extend(v)
        elif isinstance(v, bool | str):
            continue
        elif isinstance(v, int):
            stack.append(int(v))
        elif isinstance(v, float):
            raise CanonicalJsonError(
                CanonicalJsonErrorKind.FLOAT_NOT_ALLOWED, "floats are not allowed in canonical JSON"
            )
        elif isinstance(v, dict):
            stack.append(dict(v))
        else:
            problem = problem or CanonicalJsonError(
                CanonicalJsonErrorKind.NOT_JSON, f"value of type {t.__name__} is not JSON"
            )
    if problem is not None:
        raise problem


def canonical_json_bytes(value: Any) -> bytes:
    """RFC 8785 canonical bytes of ``value``; secrets, floats and unsafe integers rejected."""
    check_canonical_value(value)
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:  # e.g. lone surrogates in strings
        raise CanonicalJsonError(CanonicalJsonErrorKind.NOT_JSON, f"value cannot be canonicalised: {exc}") from exc


def artifact_id_for_bytes(data: bytes) -> ArtifactId:
    """Lowercase hex SHA-256 of exactly these bytes (the kind is not hashed)."""
    return ArtifactId(hashlib.sha256(data).hexdigest())


def artifact_id_for_json(value: Any) -> ArtifactId:
    """``artifact_id_for_bytes(canonical_json_bytes(value))``."""
    return artifact_id_for_bytes(canonical_json_bytes(value))
