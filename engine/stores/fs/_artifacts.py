"""The filesystem artifact store (see :mod:`engine.stores.fs` for the write protocol and
:mod:`engine.stores.fs.framing` for the layout)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat

import engine.stores.fs.framing as framing
import engine.stores.fs.safe_paths as safe_paths
from engine._kinds import ArtifactKind
from engine.errors import StorageError
from engine.ids import ArtifactId, RunId
from engine.stores._base import check_artifact_id
from engine.stores.fs._core import ARTIFACT_IO, Core, read_all
from engine.stores.fs._ops import fail
from engine.stores.fs.framing import FILE_MODE, KIND_SUFFIX, RD_FLAGS

__all__ = ["FsArtifactStore"]


class FsArtifactStore:
    """Content-addressed blobs under ``STORE/artifacts/<aa>/<id>``, verified by hash on every read."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"FsArtifactStore({self._core.artifacts!r})"

    def _path(self, artifact_id: ArtifactId) -> str:
        return f"{self._core.root}/{framing.artifact_file(artifact_id)}"

    def _fan_fd(self, artifact_id: ArtifactId, *, create: bool, durable: bool = True) -> int | None:
        """A new descriptor on ``artifacts/<aa>`` (the caller closes it); ``None`` if missing and not ``create``."""
        core = self._core
        top = core.top_dir(framing.ARTIFACTS_DIR, create=create)
        if top is None:
            return None
        fan = artifact_id[:2]
        path = f"{core.root}/{framing.artifact_folder(artifact_id)}"
        if create:
            return safe_paths.make_dir(top, fan, path, core.ops, durable=durable)[0]
        try:
            return safe_paths.open_dir(top, fan, path)
        except FileNotFoundError:
            return None

    async def ids_with_prefix(self, prefix: str, limit: int) -> list[ArtifactId]:
        """The ids starting with ``prefix``: copies under ``artifacts/`` and blob records of the run logs (a blob
        committed with a run's events has no copy until something reads it)."""
        if not all(c in "0123456789abcdef" for c in prefix):
            return []
        core = self._core
        found: set[str] = set()
        top = core.top_dir(framing.ARTIFACTS_DIR, create=False)
        try:
            fans = [] if top is None else sorted(n for n in os.listdir(top) if len(n) == 2 and n.startswith(prefix[:2]))
            for fan in fans:
                assert top is not None
                try:
                    fd = safe_paths.open_dir(top, fan, f"{core.root}/{framing.ARTIFACTS_DIR}/{fan}")
                except FileNotFoundError:
                    continue
                try:
                    names = os.listdir(fd)
                finally:
                    os.close(fd)
                found.update(n for n in names if framing.ARTIFACT_NAME.fullmatch(n) and n.startswith(prefix))
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "list", f"{core.root}/{framing.ARTIFACTS_DIR}")
        with core.lock:
            for run_id in core.run_ids():
                candidates = self._record_ids(run_id, prefix)
                if not candidates:
                    continue
                log = core.refreshed(run_id)  # only committed records count: the scan checks them
                if log is not None:
                    found.update(aid for aid in candidates if aid in log.blobs)
        return sorted(ArtifactId(a) for a in found)[: max(limit, 0)]

    def _record_ids(self, run_id: RunId, prefix: str) -> set[str]:
        """Ids starting with ``prefix`` of the blob records in the run's log (by pattern: not yet checked)."""
        core = self._core
        try:
            fd = core.open_run_file(run_id, framing.EVENTS_FILE, RD_FLAGS)
        except (OSError, StorageError):
            return set()
        out: set[str] = set()
        try:
            size = os.fstat(fd).st_size
            pos, rest = 0, b""
            while pos < size:
                chunk = os.pread(fd, min(framing.CHUNK, size - pos), pos)
                if not chunk:
                    break
                pos += len(chunk)
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                out |= framing.blob_ids(data[:cut], prefix)
                rest = data[cut:]
        except OSError:
            pass
        finally:
            os.close(fd)
        return out

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
            fan = self._fan_fd(artifact_id, create=False)
            if fan is None:
                return None
            try:
                fd = safe_paths.open_file(fan, artifact_id, RD_FLAGS, path)
            finally:
                os.close(fan)
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

    def _record_kind(self, fan: int, name: str, kind: ArtifactKind) -> None:
        """Create ``<id>.kind`` in the fan folder open as ``fan`` (first kind wins). Written in place, not via a temp
        file: it is advisory, and a kind file garbled by a crash is replaced here by the next put of the blob."""
        ops = self._core.ops
        data = json.dumps(kind.to_wire(), ensure_ascii=False).encode()
        try:
            fd = ops.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=fan)
        except FileExistsError:
            if _read_kind(fan, name) is None:
                tmp = framing.temp_name("kind")
                fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=fan)
                try:
                    ops.fchmod(fd, FILE_MODE)
                    ops.write_all(fd, data)
                finally:
                    ops.close(fd)
                ops.rename(tmp, name, src_dir_fd=fan, dst_dir_fd=fan)  # our own sidecar, never a blob
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
        self.put_durable(aid, kind, data)
        return aid

    def put_durable(self, aid: str, kind: ArtifactKind, data: bytes) -> None:
        """Write ``artifacts/<aa>/<id>`` durably (temp file, fdatasync, link, fsync of the folder): a blob outside
        any run log (a manifest written before the run's first event, a version-1 run)."""
        aid = ArtifactId(aid)
        core = self._core
        directory = f"{core.root}/{framing.artifact_folder(aid)}"
        path = self._path(aid)
        if self._read_if_present(aid, path) is not None:
            return  # already stored and intact: never overwritten (a bad file is reported, not replaced)
        try:
            fan = self._fan_fd(aid, create=True)
            assert fan is not None
            try:
                self._record_kind(fan, aid + KIND_SUFFIX, kind)
                linked = core.write_new_file(fan, aid, data, sync=True)
                core.ops.fsync_dir(directory, fan)
            finally:
                os.close(fan)
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "write", path)
        if not linked:  # a concurrent put won: its bytes must be ours
            self._read_verified(aid, path)

    def write_copy(self, aid: str, data: bytes, *, keep_good: bool = True) -> None:
        """The cached copy of a blob committed to a run log, written by the first read that needs it (not synced: the
        run log is the truth; no kind file: the blob record holds the kind); ``keep_good``: a file of the right size
        is left as it is (every read checks its hash). Failures are ignored (a read-only store is read from its
        logs)."""
        with contextlib.suppress(OSError, StorageError):
            self._replace(ArtifactId(aid), data, sync=False, keep_good=keep_good)

    def _replace(self, aid: ArtifactId, data: bytes, *, sync: bool, keep_good: bool = False) -> None:
        """Put ``data`` at ``artifacts/<aa>/<id>`` through a temp file renamed over whatever is there."""
        core = self._core
        path = self._path(aid)
        fan = self._fan_fd(aid, create=True, durable=sync)
        assert fan is not None
        try:
            if keep_good:
                try:
                    st = safe_paths.stat_entry(fan, aid)
                    if stat.S_ISREG(st.st_mode) and st.st_size == len(data):
                        return  # written by an earlier commit (the hash is checked on every read)
                except FileNotFoundError:
                    pass
            try:
                tmp = framing.temp_name(aid[:16])
                fd = core.ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=fan)
                try:
                    try:
                        core.ops.fchmod(fd, FILE_MODE)
                        core.ops.write_all(fd, data)
                        if sync:
                            core.ops.fdatasync(fd)
                    finally:
                        core.ops.close(fd)
                    core.ops.rename(tmp, aid, src_dir_fd=fan, dst_dir_fd=fan)
                except BaseException:
                    with contextlib.suppress(OSError):
                        core.ops.unlink(tmp, dir_fd=fan)
                    raise
                if sync:
                    core.ops.fsync_dir(f"{core.root}/{framing.artifact_folder(aid)}", fan)
            except OSError as exc:
                fail(exc, ARTIFACT_IO, "write", path)
        finally:
            os.close(fan)

    def record(self, artifact_id: ArtifactId, *, search: bool = True) -> tuple[ArtifactKind, bytes] | None:
        """``(kind, bytes)`` of ``artifact_id`` from a committed blob record of a run log (nothing is written);
        ``None`` when no run log holds it. A record whose bytes do not hash to the id is skipped."""
        core = self._core
        found = core.find_blob(artifact_id, search=search)
        if found is None:
            return None
        run_id, offset = found
        try:
            fd = core.open_run_file(run_id, framing.EVENTS_FILE, RD_FLAGS)
        except (OSError, StorageError):
            return None
        try:
            line = b""
            size = 1 << 16
            while True:
                chunk = os.pread(fd, size, offset + len(line))
                if not chunk:
                    return None
                nl = chunk.find(b"\n")
                if nl >= 0:
                    line += chunk[:nl]
                    break
                line += chunk
                size = min(size * 4, 1 << 26)
        except OSError:
            return None
        finally:
            os.close(fd)
        parsed = framing.parse_record(line)
        if parsed is None or parsed[0] != framing.BLOB_RECORD:
            return None
        try:
            aid, kind, data = framing.parse_blob(line[parsed[2] :])
        except ValueError:
            return None
        if aid != artifact_id or hashlib.sha256(data).hexdigest() != artifact_id:
            return None
        return kind, data

    def rebuild(self, artifact_id: ArtifactId, *, search: bool = True) -> bytes | None:
        """The bytes of ``artifact_id`` from a committed blob record of a run log (:meth:`record`), its copy under
        ``artifacts/`` (re)written; ``None`` when no run log holds it."""
        found = self.record(artifact_id, search=search)
        if found is None:
            return None
        data = found[1]
        self.write_copy(artifact_id, data, keep_good=False)
        return data

    async def get(self, artifact_id: ArtifactId) -> bytes:
        aid = check_artifact_id(artifact_id)
        path = self._path(aid)
        try:
            data = self._read_if_present(aid, path)
        except StorageError as err:
            if err.code != "artifact_corruption":
                raise
            data = self.rebuild(aid)
            if data is None:
                raise
            return data
        if data is None:
            data = self.rebuild(aid)
        if data is None:
            raise StorageError.not_found("artifact_not_found", f"artifact not found: {aid}", {"artifact_id": str(aid)})
        return data

    async def exists(self, artifact_id: ArtifactId) -> bool:
        """Whether the store holds the blob: a copy whose bytes hash to the id, or a run log's blob record (which
        then rebuilds the copy). A bad copy that no run log can rebuild still exists (``get`` reports it:
        ``artifact_corruption``); a symlink planted in its place does not."""
        try:
            aid = ArtifactId(artifact_id)
        except ValueError:
            return False
        path = self._path(aid)
        try:
            fan = self._fan_fd(aid, create=False)  # a symlinked fan folder: store_symlink
            if fan is not None:
                try:
                    st = safe_paths.stat_entry(fan, aid)
                finally:
                    os.close(fan)
                if not stat.S_ISREG(st.st_mode):
                    return False  # a symlink (or anything else) planted in place of the copy
        except FileNotFoundError:
            pass
        except OSError as exc:
            fail(exc, ARTIFACT_IO, "stat", path)
        corrupt = False
        try:
            if self._read_if_present(aid, path) is not None:
                return True
        except StorageError as err:
            if err.code != "artifact_corruption":
                raise
            corrupt = True
        return self.rebuild(aid) is not None or corrupt

    async def kind_of(self, artifact_id: ArtifactId) -> ArtifactKind | None:
        """The kind recorded at the first put (its kind file), else the kind in the blob record of a run log that
        holds it; ``None`` if unknown."""
        try:
            aid = ArtifactId(artifact_id)
        except ValueError:
            return None
        try:
            fan = self._fan_fd(aid, create=False)
        except (OSError, StorageError):
            return None
        if fan is not None:
            try:
                kind = _read_kind(fan, aid + KIND_SUFFIX)
            finally:
                os.close(fan)
            if kind is not None:
                return kind
        found = self.record(aid)
        return None if found is None else found[0]


def _read_kind(fan: int, name: str) -> ArtifactKind | None:
    try:
        fd = os.open(name, RD_FLAGS, dir_fd=fan)
    except OSError:
        return None
    try:
        return ArtifactKind.from_wire(json.loads(read_all(fd)))
    except (ValueError, OSError):
        return None
    finally:
        os.close(fd)
