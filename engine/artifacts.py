"""Verified artifact put and canonical-JSON artifact read (ENGINE-SPEC §2.3).

The engine never trusts an artifact store blindly:

* :func:`verified_put_bytes` / :func:`verified_put_json` compute the expected id from the bytes,
  call ``store.put`` and raise ``StorageError`` Corruption ``artifact_put_id_mismatch`` when the
  store answers a different id.
* :func:`read_canonical_json` reads an artifact that must hold canonical JSON (manifests, context
  snapshots, replayed JSON facts) and checks, in this order: the content address, the JSON parse,
  the canonical re-encoding (floats, secrets) and byte equality with the stored bytes.

Encoding problems on the *put* side are the caller's to map (a snapshot maps secrets to
``Context(Other) secrets_detected``, a live fact to ``IoError::Other``…), so
:func:`verified_put_json` lets :class:`~engine.hashing.CanonicalJsonError` propagate unchanged.
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine._kinds import ArtifactKind
from engine._wire import parse_json
from engine.errors import StorageError
from engine.hashing import CanonicalJsonError, artifact_id_for_bytes, canonical_json_bytes
from engine.ids import ArtifactId
from engine.stores import ArtifactStore

__all__ = [
    "CODE_CONTENT_ADDRESS_MISMATCH",
    "CODE_FLOAT_NOT_ALLOWED",
    "CODE_JSON_DECODE_FAILED",
    "CODE_NOT_CANONICAL",
    "CODE_PUT_ID_MISMATCH",
    "CODE_SECRETS_DETECTED",
    "check_content_address",
    "read_canonical_json",
    "verified_put_bytes",
    "verified_put_json",
]

CODE_PUT_ID_MISMATCH = "artifact_put_id_mismatch"
CODE_CONTENT_ADDRESS_MISMATCH = "artifact_content_address_mismatch"
CODE_JSON_DECODE_FAILED = "artifact_json_decode_failed"
CODE_FLOAT_NOT_ALLOWED = "artifact_float_not_allowed"
CODE_SECRETS_DETECTED = "secrets_detected"
CODE_NOT_CANONICAL = "artifact_not_canonical"


async def verified_put_bytes(store: ArtifactStore, kind: ArtifactKind, data: bytes) -> ArtifactId:
    """``store.put(kind, data)``, checking that the store returns ``sha256(data)``.

    Raises ``StorageError`` Corruption ``artifact_put_id_mismatch`` otherwise; storage errors of
    the put itself propagate.
    """
    expected = artifact_id_for_bytes(data)
    got = await store.put(kind, data)
    if str(got) != str(expected):
        raise StorageError.corruption(
            CODE_PUT_ID_MISMATCH,
            f"artifact store returned id {got} for a {kind} artifact whose content hash is {expected}",
            {"expected": str(expected), "actual": str(got)},
        )
    return expected


async def verified_put_json(store: ArtifactStore, kind: ArtifactKind, value: Any) -> ArtifactId:
    """Canonically encode ``value`` and :func:`verified_put_bytes` it.

    Raises :class:`~engine.hashing.CanonicalJsonError` (secrets, floats, non-JSON) before anything
    is written: the caller maps it to its own contract error.
    """
    return await verified_put_bytes(store, kind, canonical_json_bytes(value))


def check_content_address(artifact_id: ArtifactId, data: bytes) -> None:
    """``sha256(data) == artifact_id`` or ``StorageError`` Corruption ``artifact_content_address_mismatch``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != str(artifact_id):
        raise StorageError.corruption(
            CODE_CONTENT_ADDRESS_MISMATCH,
            f"artifact {artifact_id} content hashes to {actual}",
            {"artifact_id": str(artifact_id), "actual": actual},
        )


async def read_canonical_json(store: ArtifactStore, artifact_id: ArtifactId) -> Any:
    """Read an artifact that must hold canonical JSON and return the parsed value (§2.3).

    1. ``store.get`` (its errors propagate, e.g. NotFound);
    2. content-address check → ``artifact_content_address_mismatch``;
    3. UTF-8 + JSON parse → ``artifact_json_decode_failed``;
    4. canonical re-encoding → ``artifact_float_not_allowed`` (floats, unsafe integers) or
       ``secrets_detected``;
    5. re-encoded bytes == stored bytes → else ``artifact_not_canonical``.

    Every failure after step 1 is ``StorageError`` Corruption. Messages never echo the content.
    """
    data = bytes(await store.get(artifact_id))
    check_content_address(artifact_id, data)
    try:
        value = parse_json(data)  # as serde_json reads it: -0 is a float, NaN is not JSON
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StorageError.corruption(
            CODE_JSON_DECODE_FAILED,
            f"artifact {artifact_id} is not valid JSON: {type(exc).__name__}",
            {"artifact_id": str(artifact_id)},
        ) from None
    try:
        canonical = canonical_json_bytes(value)
    except CanonicalJsonError as exc:
        if exc.is_secret:
            raise StorageError.corruption(
                CODE_SECRETS_DETECTED,
                f"artifact {artifact_id} contains secret-looking content",
                {"artifact_id": str(artifact_id)},
            ) from None
        if exc.is_float:
            raise StorageError.corruption(
                CODE_FLOAT_NOT_ALLOWED,
                f"artifact {artifact_id} contains a float or an integer outside the I-JSON range",
                {"artifact_id": str(artifact_id)},
            ) from None
        raise StorageError.corruption(
            CODE_NOT_CANONICAL,
            f"artifact {artifact_id} cannot be canonically re-encoded: {exc}",
            {"artifact_id": str(artifact_id)},
        ) from None
    if canonical != data:
        raise StorageError.corruption(
            CODE_NOT_CANONICAL,
            f"artifact {artifact_id} is not in canonical JSON form",
            {"artifact_id": str(artifact_id)},
        )
    return value
