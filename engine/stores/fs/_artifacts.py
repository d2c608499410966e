"""The filesystem artifact store (see :mod:`engine.stores.fs` for the write protocol and
:mod:`engine.stores.fs.framing` for the layout)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import engine.stores.fs.framing as framing
from engine._kinds import ArtifactKind
from engine.errors import StorageError
from engine.ids import ArtifactId
from engine.stores._base import check_artifact_id
from engine.stores.fs._core import ARTIFACT_IO, Core, read_all, tmp_name
from engine.stores.fs._ops import fail
from engine.stores.fs.framing import FILE_MODE, RD_FLAGS

__all__ = ["FsArtifactStore"]


class FsArtifactStore:
    """Content-addressed blobs under ``STORE/artifacts/<aa>/<id>``, verified by hash on every read."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"FsArtifactStore({self._core.artifacts!r})"

    def _path(self, artifact_id: ArtifactId) -> str:
        return f"{self._core.root}/{framing.artifact_file(artifact_id)}"

    def _read_verified(self, artifact_id: ArtifactId, path: str) -> bytes:
        data = self._read_if_present(artifact_id, path)
        if data is None:
            raise StorageError.not_found(
                "artifact_not_found", f"artifact not found: {artifact_id}", {"artifact_id": str(artifact_id)}
            )
        return data

    def _read_if_present(self, artifact_id: ArtifactId, path: str) -> bytes | None:
        """The verified bytes, or ``None`` if there is no such file."""
        try:
            fd = os.open(path, RD_FLAGS)
        except FileNotFoundError:
            return None
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

    def _record_kind(self, directory: str, path: str, kind: ArtifactKind) -> None:
        """Create ``<id>.kind`` (first kind wins). Written in place, not via a temp file: it is advisory, and a
        kind file garbled by a crash is replaced here by the next put of the blob."""
        ops = self._core.ops
        data = json.dumps(kind.to_wire(), ensure_ascii=False).encode()
        try:
            fd = ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            if _read_kind(path) is None:
                tmp = tmp_name(directory, "kind")
                fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                try:
                    ops.fchmod(fd, FILE_MODE)
                    ops.write_all(fd, data)
                finally:
                    ops.close(fd)
                ops.rename(tmp, path)  # our own sidecar, never a blob
            return
        try:
            ops.fchmod(fd, FILE_MODE)
            ops.write_all(fd, data)
        finally:
            ops.close(fd)

    async def put(self, kind: ArtifactKind, data: bytes) -> ArtifactId:
        if not isinstance(kind, ArtifactKind):
            raise StorageError.other("artifact_kind_invalid", f"not an ArtifactKind: {kind!r}"[:200])
        data = bytes(data)
        aid = ArtifactId(hashlib.sha256(data).hexdigest())
        core = self._core
        directory = f"{core.root}/{framing.artifact_folder(aid)}"
        path = self._path(aid)
        if self._read_if_present(aid, path) is not None:
            return aid  # already stored and intact: never overwritten
        try:
            core.make_dir(directory, core.artifacts)
            self._record_kind(directory, f"{core.root}/{framing.artifact_kind_file(aid)}", kind)
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
        except ValueError:
            return None
        return _read_kind(f"{self._core.root}/{framing.artifact_kind_file(aid)}")


def _read_kind(path: str) -> ArtifactKind | None:
    try:
        fd = os.open(path, RD_FLAGS)
    except OSError:
        return None
    try:
        return ArtifactKind.from_wire(json.loads(read_all(fd)))
    except (ValueError, OSError):
        return None
    finally:
        os.close(fd)
