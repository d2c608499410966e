"""The filesystem store: crash-safe, lock-light, watchable (ARCHITECTURE "Filesystem store").

Layout (every directory 0700, every file 0600, whatever the umask)::

    STORE/
      store.json                      {"created_at": ISO-8601, "format": "mfm-store", "version": 1}
      changes.log                     change journal: "<run_id> <new_head>\\n" per successful append
      runs/<run_id>/events.jsonl      the run's envelopes, one wire-form line each (framing: engine.stores.fs.framing)
      runs/<run_id>/events.lock       flock(LOCK_EX) target of appenders (readers never lock)
      runs/<run_id>/events.jsonl.torn-<offset>-<millis>   a quarantined torn tail (kept for inspection)
      runs/<run_id>/control/cancel.json                   the first cancel request (atomic, never replaced)
      runs/<run_id>/lease, worker.log                     owned by engine.workers (see FsStore.run_dir)
      artifacts/<aa>/<id>             raw bytes; <aa> = first two hex chars of the 64-char id
      artifacts/<aa>/<id>.kind        the ArtifactKind given at the first put (wire JSON, advisory)
      artifacts/<aa>/.tmp-*           temp files of puts in progress (or killed): ignored, harmless

Events. ``append`` validates the batch (``encode_batch``), takes the run's ``flock``, brings its cached view of
the file up to date (one ``fstat``; bytes appended by another process are scanned, a torn tail left by a crash is
copied aside and truncated), checks ``expected_seq``, writes the whole batch with one ``write``, ``fdatasync``s it
(and fsyncs the run directory when the file was just created), then adds a journal line and unlocks. Concurrent
appenders in different processes therefore get exactly one winner per ``expected_seq``. Readers never lock: they
see only committed batches (batch framing), so a run can be watched while it is written.

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
event-loop thread hop would cost more than it saves. Ids are validated before any path is built, and every
file is opened with ``O_NOFOLLOW`` (a symlink planted in place of a store file is refused). Every mutating call
goes through the injectable :class:`FsOps`; every OS or parse error is translated by one function (``translate``).

Modules. :mod:`engine.stores.fs.framing` is the only code that knows the layout above and the framing of a run log
(the doctor and the TUI's log index use it too); the private modules hold the rest: ``_ops`` (the ``FsOps`` seam
and the error translation), ``_core`` (cached descriptors, per-run committed views, the change journal), ``_meta``
(``store.json``), ``_events`` (:class:`FsEventStore`) and ``_artifacts`` (:class:`FsArtifactStore`).
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
from engine.stores.fs._meta import open_store
from engine.stores.fs._ops import FsOps, fail
from engine.stores.fs.framing import STORE_FORMAT, STORE_VERSION

__all__ = ["STORE_FORMAT", "STORE_VERSION", "FsArtifactStore", "FsEventStore", "FsOps", "FsStore"]


class FsStore:
    """The filesystem store at ``root`` (created on first use): ``.events``, ``.artifacts``, ``.stores``.

    ``ops`` replaces the filesystem seam (fault injection); ``now_millis`` the clock of cancel requests;
    ``max_open_runs`` bounds the cached per-run append file descriptors (two per run).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        ops: FsOps | None = None,
        now_millis: Callable[[], int] = wall_millis,
        max_open_runs: int = 64,
    ) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self._ops = ops or FsOps()
        self.meta = open_store(str(self.root), self._ops)
        self._core = Core(str(self.root), self._ops, now_millis, max_open_runs)
        self.events = FsEventStore(self._core)
        self.artifacts = FsArtifactStore(self._core)

    def __repr__(self) -> str:
        return f"FsStore({str(self.root)!r})"

    @property
    def stores(self) -> Stores:
        return Stores(events=self.events, artifacts=self.artifacts, control=self.events)

    def run_dir(self, run_id: RunId, *, create: bool = False) -> Path:
        """``STORE/runs/<run_id>`` (validated id); ``create=True`` makes it (0700, durable)."""
        run_id = check_run_id(run_id)
        path = self._core.run_dir(run_id)
        if create:
            try:
                self._core.make_dir(path, self._core.runs)
            except OSError as exc:
                fail(exc, EVENT_IO, "create", path)
        return Path(path)

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
