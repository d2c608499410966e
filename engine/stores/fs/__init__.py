"""The filesystem store: crash-safe, lock-light, watchable (ARCHITECTURE "Filesystem store").

Layout (every directory 0700, every file 0600, whatever the umask)::

    STORE/
      store.json                      {"created_at": ISO-8601, "format": "mfm-store", "version": 2} (1 still opens)
      changes.log                     change journal: "<run_id> <new_head>\\n" per successful append
      runs/<run_id>/events.jsonl      the run log: checksummed event and blob records (format: engine.stores.fs.framing)
      runs/<run_id>/events.lock       flock(LOCK_EX) target of appenders (readers never lock)
      runs/<run_id>/events.jsonl.torn-<offset>-<millis>   a quarantined torn tail (kept for inspection)
      runs/<run_id>/control/cancel.json                   the first cancel request (atomic, never replaced)
      runs/<run_id>/lease, worker.log                     owned by engine.workers (see FsStore.run_dir)
      artifacts/<aa>/<id>             raw bytes; <aa> = first two hex chars of the 64-char id (a blob committed with a
                                      run's events: a cached copy, written by the first read that needs it and
                                      rebuilt from its record when bad)
      artifacts/<aa>/<id>.kind        the ArtifactKind given at a durable put (wire JSON, advisory; a committed
                                      blob's kind is in its record)
      artifacts/<aa>/.tmp-*           temp files of puts in progress (or killed): ignored, harmless

Events. ``commit`` (the unit of work; ``append`` is a commit without blobs) validates the batch (``encode_batch``),
takes the run's ``flock``, brings its cached view of the file up to date (one ``fstat``; bytes appended by another
process are scanned, a torn tail left by a crash is copied aside and truncated), checks ``expected_seq`` (a damaged
log refuses: ``run_log_corrupt``), writes the blob records and the events with one ``write``, ``fdatasync``s it (and
fsyncs the run directory when the file was just created), adds a journal line and unlocks: no other file is
created, renamed or synced. A committed blob has no copy under ``artifacts/`` yet: a read by id finds its record in
the run logs (those this process has scanned, then a byte search of the others: only a log that holds the id is
scanned record by record), returns its hash-checked bytes and writes the copy (not synced: the log holds the bytes).
Concurrent appenders in different processes therefore get exactly one winner per ``expected_seq``. Readers never
lock: they see only committed batches (batch framing), so a run can be watched while it is written.

Cheap reads. Each run's committed line offsets are cached in memory (``RunLog``): ``head_seq`` costs one ``stat``
when nothing changed, ``read_range(run, seq)`` one ``pread`` of exactly the wanted lines, and a refresh scans
only the bytes appended since. ``changes.log`` lets a monitor of 10,000 runs watch ONE file:
``changes_since(cursor)`` reads it from a byte offset (the cursor). It is a hint, never fsynced: readers re-stat
the runs it names. It is not rotated (about 45 bytes per append); a cursor beyond its end (the file was removed)
reports every run.

Artifacts (same layout and codes as the reference project's filesystem artifact store): a put writes the kind
file, then the bytes to a temp file in the same directory, ``fdatasync``s, ``link``s it into place (an existing id
is never overwritten, it is verified instead) and fsyncs the directory. Every read re-hashes
(``artifact_corruption`` on mismatch). The kind file is advisory (written in place, not fsynced; one garbled by a
crash is replaced by the next put of its blob): the blob is the truth.

Blocking IO runs inline in the calling coroutine: each call is a few syscalls and at most two fsyncs, and an
event-loop thread hop would cost more than it saves. Ids are validated before any path is built, and every folder
and file below the root is opened relative to its parent's descriptor without following a symlink, and only when
its owner is this user (:mod:`engine.stores.fs.safe_paths`): a symlink planted in place of a run folder, an artifact
fan folder or a store file is refused, never followed. Opening the store writes nothing unless ``create``. Every
mutating call goes through the injectable :class:`FsOps`; every OS or parse error is translated by one function
(``translate``).

Modules. :mod:`engine.stores.fs.framing` is the only code that knows the layout above and the framing of a run log
(the doctor and the TUI's log index use it too); :mod:`engine.stores.fs.safe_paths` is the only code that walks
the store's folders (the doctor and the workers use it too); the private modules hold the rest: ``_ops`` (the
``FsOps`` seam and the error translation), ``_core`` (cached descriptors, per-run committed views, the change
journal), ``_meta`` (opening, ``store.json``), ``_events`` (:class:`FsEventStore`) and ``_artifacts``
(:class:`FsArtifactStore`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from engine.engine import Stores
from engine.ids import RunId
from engine.stores._base import check_run_id
from engine.stores.fs import framing
from engine.stores.fs._artifacts import FsArtifactStore
from engine.stores.fs._core import EVENT_IO, Core, wall_millis
from engine.stores.fs._events import FsEventStore
from engine.stores.fs._meta import is_writable, open_store
from engine.stores.fs._ops import FsOps, fail
from engine.stores.fs.framing import STORE_FORMAT, STORE_VERSION

__all__ = ["STORE_FORMAT", "STORE_VERSION", "FsArtifactStore", "FsEventStore", "FsOps", "FsStore"]


class FsStore:
    """The filesystem store at ``root``: ``.events``, ``.artifacts``, ``.stores``.

    ``create`` (the default): a missing store is created; ``create=False`` opens an existing store only
    (``store_not_found`` otherwise) and writes nothing until asked to write: a read-only store can be read.
    ``writable`` says whether this process may write it. The root folder and every folder below it must belong to
    the effective user (``store_foreign_owner``), and no symlink below the root is followed (``store_symlink``):
    see :mod:`engine.stores.fs.safe_paths`.

    ``ops`` replaces the filesystem seam (fault injection); ``now_millis`` the clock of cancel requests;
    ``max_open_runs`` bounds the cached per-run append file descriptors (two per run); ``new_version`` is the
    format of a store created here (``STORE_VERSION``; 1 makes a version-1 store, for tests and benchmarks).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        create: bool = True,
        ops: FsOps | None = None,
        now_millis: Callable[[], int] = wall_millis,
        max_open_runs: int = 64,
        new_version: int = STORE_VERSION,
    ) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self._ops = ops or FsOps()
        root_fd, self.meta = open_store(str(self.root), self._ops, create=create, version=new_version)
        version = self.meta.get("version", STORE_VERSION) if isinstance(self.meta, dict) else STORE_VERSION
        self._core = Core(str(self.root), root_fd, self._ops, now_millis, max_open_runs, int(version))
        self.artifacts = FsArtifactStore(self._core)
        self.events = FsEventStore(self._core, self.artifacts)

    @property
    def version(self) -> int:
        """The store's format version (``store.json``; ``mfm doctor --migrate`` takes a version-1 store to 2)."""
        return self._core.version

    @property
    def writable(self) -> bool:
        """Whether this process may write the store (its folder and ``runs/``); checked on each call."""
        return is_writable(self._core.root_fd())

    def __repr__(self) -> str:
        return f"FsStore({str(self.root)!r})"

    @property
    def stores(self) -> Stores:
        return Stores(events=self.events, artifacts=self.artifacts, control=self.events)

    def run_dir(self, run_id: RunId, *, create: bool = False) -> Path:
        """``STORE/runs/<run_id>`` (validated id); ``create=True`` makes it (0700, durable).

        A path, for display and for outside tools: the store's own code opens run files with :meth:`open_run_dir`.
        """
        run_id = check_run_id(run_id)
        if create:
            os.close(self.open_run_dir(run_id, create=True))
        return Path(self._core.run_dir(run_id))

    def open_run_dir(self, run_id: RunId, *, create: bool = False) -> int:
        """A descriptor on ``STORE/runs/<run_id>`` (the caller closes it), reached without following a symlink and
        owned by this user: open the run's files relative to it (``os.open(name, flags, dir_fd=fd)``).

        ``create=True`` makes the folder (0700, durable) if missing; otherwise a missing one is ``FileNotFoundError``.
        """
        run_id = check_run_id(run_id)
        try:
            return self._core.run_dir_fd(run_id, create=create)
        except FileNotFoundError:
            raise
        except OSError as exc:
            fail(exc, EVENT_IO, "create" if create else "open", self._core.run_dir(run_id))

    def events_path(self, run_id: RunId) -> Path:
        return self.run_dir(run_id) / framing.EVENTS_FILE

    @property
    def changes_path(self) -> Path:
        """The change journal a monitor watches (``watchfiles`` on this one file)."""
        return Path(self._core.journal)

    def close(self) -> None:
        """Close cached file descriptors (the store stays usable: they are reopened on demand)."""
        self._core.close()

    def __enter__(self) -> FsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None:
            core.close()
