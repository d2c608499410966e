"""The filesystem artifact store (see :mod:`engine.stores.fs` for the layout and the write protocol)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

from engine._kinds import ArtifactKind
from engine.errors import StorageError
from engine.ids import ArtifactId
from engine.stores._base import check_artifact_id
from engine.stores._fscore import ARTIFACT_IO, RD_FLAGS, Core, read_all
from engine.stores._fsio import fail

__all__ = ["FsArtifactStore"]


class FsArtifactStore:
    """Content-addressed blobs under ``STORE/artifacts/<aa>/<id>``, verified by hash on every read."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"FsArtifactStore({self._core.artifacts!r})"

    def _path(self, artifact_id: ArtifactId) -> str:
        return f"{self._core.artifacts}/{artifact_id[:2]}/{artifact_id}"

    def _read_verified(self, artifact_id: ArtifactId, path: str) -> bytes:
        try:
            fd = os.open(path, RD_FLAGS)
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "open", path)
        try:
            data = read_all(fd)
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "read", path)
        finally:
            os.close(fd)
        actual = hashlib.sha256(data).hexdigest()
        if actual != artifact_id:
            raise StorageError.corruption(
                "artifact_corruption",
                f"artifact {artifact_id} is corrupt: its bytes hash to {actual}",
                {"artifact_id": str(artifact_id), "path": path},
            )
        return data

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        if not isinstance(kind, ArtifactKind):
            raise StorageError.other("artifact_kind_invalid", f"not an ArtifactKind: {kind!r}"[:200])
        data = bytes(data)
        aid = ArtifactId(hashlib.sha256(data).hexdigest())
        core = self._core
        directory = f"{core.artifacts}/{aid[:2]}"
        path = f"{directory}/{aid}"
        try:
            self._read_verified(aid, path)
            return aid  # already stored and intact: never overwritten
        except StorageError as exc:
            if exc.code != "artifact_not_found":
                raise
        kind_bytes = json.dumps(kind.to_wire(), ensure_ascii=False).encode()
        try:
            core.make_dir(directory, core.artifacts)
            core.write_new_file(directory, f"{path}.kind", kind_bytes, sync=False)
            linked = core.write_new_file(directory, path, data, sync=True)
            core.ops.fsync_dir(directory)
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "write", path)
        if not linked:  # a concurrent put won: its bytes must be ours
            self._read_verified(aid, path)
        return aid

    async def get(self, artifact_id: ArtifactId) -> bytes:
        aid = check_artifact_id(artifact_id)
        return self._read_verified(aid, self._path(aid))

    async def exists(self, artifact_id: ArtifactId) -> bool:
        try:
            aid = ArtifactId(artifact_id)
        except ValueError:
            return False
        path = self._path(aid)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "stat", path)
        return stat.S_ISREG(st.st_mode)

    async def kind_of(self, artifact_id: ArtifactId) -> ArtifactKind | None:
        """The kind recorded at the first put; ``None`` if unknown (missing or unreadable kind file)."""
        try:
            aid = ArtifactId(artifact_id)
            fd = os.open(f"{self._path(aid)}.kind", RD_FLAGS)
        except (ValueError, OSError):
            return None
        try:
            return ArtifactKind.from_wire(json.loads(read_all(fd)))
        except (ValueError, OSError):
            return None
        finally:
            os.close(fd)
