"""Canonical JSON policy marker (the seed's ``canonical`` module).

Structured data that participates in hashing is serialised as canonical JSON: RFC 8785 (JCS)
with floats and unsafe integers rejected. The implementation is :mod:`engine.hashing`.
"""

from __future__ import annotations

from typing import Protocol

from engine.hashing import CanonicalJsonError, canonical_json_bytes

__all__ = ["CanonicalJsonError", "CanonicalJsonPolicy", "canonical_json_bytes"]


class CanonicalJsonPolicy(Protocol):
    """Marker: the implementing type hashes structured data as canonical JSON."""
