"""The PostgreSQL artifact store: content-addressed blobs in ``mfm_artifacts``, re-hashed on every read."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine._kinds import ArtifactKind
from engine._wire import compact_json
from engine.errors import StorageError
from engine.hashing import artifact_id_for_bytes
from engine.ids import ArtifactId
from engine.stores._base import Blob, check_artifact_id
from engine.stores.postgres._core import Core

__all__ = ["PostgresArtifactStore", "checked_blob_row"]


class PostgresArtifactStore:
    """Content-addressed blobs in ``mfm_artifacts``, re-hashed on every read."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"PostgresArtifactStore({self._core.dsn_redacted!r}, schema={self._core.schema!r})"

    async def ids_with_prefix(self, prefix: str, limit: int) -> list[ArtifactId]:
        if not all(c in "0123456789abcdef" for c in prefix):
            return []  # (also keeps LIKE's wildcards out)
        async with self._core.conn("artifact_store_io") as conn:
            rows = await (await conn.execute(self._core.q.ids_with_prefix, [prefix + "%", max(limit, 0)])).fetchall()
        return [ArtifactId(str(r[0])) for r in rows]

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        if not isinstance(kind, ArtifactKind):
            raise StorageError.other("artifact_kind_invalid", f"not an ArtifactKind: {type(kind).__name__}")
        data = bytes(data)
        aid = artifact_id_for_bytes(data)
        async with self._core.conn("artifact_store_io") as conn:
            await conn.execute(self._core.q.put, {"id": aid, "kind": compact_json(kind.to_wire()), "data": data})
        return aid

    async def get(self, artifact_id: ArtifactId) -> bytes:
        aid = check_artifact_id(artifact_id)
        async with self._core.conn("artifact_store_io") as conn:
            row = await (await conn.execute(self._core.q.get, [aid])).fetchone()
        if row is None:
            raise StorageError.not_found("artifact_not_found", f"artifact not found: {aid}")
        data = bytes(row[0])
        if hashlib.sha256(data).hexdigest() != aid:
            raise StorageError.corruption("artifact_corruption", f"artifact {aid}: stored bytes do not match its id")
        return data

    async def exists(self, artifact_id: ArtifactId) -> bool:
        try:
            aid = ArtifactId(artifact_id)
        except ValueError:
            return False
        async with self._core.conn("artifact_store_io") as conn:
            row = await (await conn.execute(self._core.q.exists, [aid])).fetchone()
        return row is not None

    async def kind_of(self, artifact_id: ArtifactId) -> ArtifactKind | None:
        """The kind recorded at the first put, ``None`` for an unknown id."""
        aid = check_artifact_id(artifact_id)
        async with self._core.conn("artifact_store_io") as conn:
            row = await (await conn.execute(self._core.q.kind, [aid])).fetchone()
        if row is None:
            return None
        try:
            return ArtifactKind.from_wire(json.loads(row[0]))
        except ValueError as exc:
            raise StorageError.corruption("artifact_kind_corrupt", f"artifact {aid}: unreadable kind") from exc


def checked_blob_row(blob: Blob) -> dict[str, Any]:
    """The ``put`` statement's parameters for a unit of work's blob, after the checks ``put`` makes."""
    if not isinstance(blob, Blob) or not isinstance(blob.kind, ArtifactKind):
        raise StorageError.other("unit_of_work_blob_invalid", "a unit of work carries a record that is not a Blob")
    data = blob.data
    if type(blob) is Blob and blob.hashed and type(data) is bytes:
        aid = blob.artifact_id  # made by Blob.of, which hashed these very bytes: no second SHA-256 (as fs, memory)
    else:
        data = bytes(data)
        aid = artifact_id_for_bytes(data)
    if str(aid) != str(blob.artifact_id):
        raise StorageError.corruption(
            "artifact_put_id_mismatch",
            f"blob {blob.artifact_id} of kind {blob.kind} has content hash {aid}",
            {"expected": str(blob.artifact_id), "actual": str(aid)},
        )
    kind = _KIND_JSON.get(blob.kind)
    if kind is None:
        kind = compact_json(blob.kind.to_wire())
        if len(_KIND_JSON) < 64:  # the five unit kinds and a few ``Other`` names
            _KIND_JSON[blob.kind] = kind
    return {"id": aid, "kind": kind, "data": data}


_KIND_JSON: dict[ArtifactKind, str] = {}
"""The wire JSON of each kind seen, so that a unit of work does not encode it per blob."""
