"""The on-disk layout of a filesystem store and the framing of its run logs: the ONE package that knows them.

Its modules, by concern: :mod:`~engine.stores.fs.framing.layout` (folders, files, modes, temp names, the change
journal), :mod:`~engine.stores.fs.framing.records` (v1 lines and batches, v2 records: encoding and parsing),
:mod:`~engine.stores.fs.framing.runlog` (the scan of a run log, its index, damage, decoding, the doctor's check) and
:mod:`~engine.stores.fs.framing.positions` (line positions for viewers). Import the names from this package.

The store (:mod:`engine.stores.fs`), ``mfm doctor`` (:mod:`engine.doctor`) and the TUI's log index
(``mfm_tui.log_index``) read and write store files only through the names, paths and functions defined here.

Layout. Paths are relative to the store root (join them with it: ``f"{root}/{events_file(run_id)}"``)::

    store.json                    STORE_META_FILE: {"created_at", "format": STORE_FORMAT, "version": STORE_VERSION}
    changes.log                   JOURNAL_FILE: "<run_id> <new_head>\\n" per successful append (a hint)
    runs.index                    RUNS_INDEX_FILE: a cache of every run's summary (engine.stores.fs._runs_index)
    runs/<run_id>/                run_folder()
      events.jsonl                events_file(): the run log: event and blob records (format below)
      events.lock                 append_lock_file(): flock(LOCK_EX) target of appenders (readers never lock)
      events.jsonl.torn-<o>-<ms>  torn_tail_file(): a torn tail the store copied aside before truncating
      control/cancel.json         cancel_file(): the first cancel request
      control/retry-now-<h>-<n>.json  retry_now_file(): a request to cut the backoff before attempt n of a state
                                  (<h>: the first 32 hex chars of the state id's SHA-256)
      summary.json                summary_file(): a cache of the run's summary (engine.stores.fs._summary)
      lease, start.json, worker.log   lease_file(), pending_file(), WORKER_LOG_FILE: written by engine.workers
      exec.stdout, exec.stderr    EXEC_OUTPUT_FILES: what the run's exec programs print, as they print it, one
                                  "<state>#<attempt> <line>" per line (engine.workers.exec_log; secrets withheld)
      recovery.json               RECOVERY_FILE: a failed run's recovery run (engine.workers)
      verdict.json                VERDICT_FILE: a replay's verdict (engine.workers)
    artifacts/<aa>/<id>           artifact_file(): raw bytes; <aa> = the id's first two hex chars (v2: a verified copy
                                  of a run log's blob record, or a durable file for a blob written outside a run)
    artifacts/<aa>/<id>.kind      artifact_kind_file(): the ArtifactKind of a durable put (advisory; a copy has none)
    quarantine/<stamp>/...        QUARANTINE_DIR: what ``mfm doctor --repair`` moved aside (same relative paths)
    .tmp-<tag>-<pid>-<n>          temp_name(): a write in progress (or killed), in the folder of its target

Every folder is ``DIR_MODE`` (0700) and every file ``FILE_MODE`` (0600); store files are opened with
``O_NOFOLLOW`` (``RD_FLAGS`` for reads): a symlink planted in place of one is refused. Folders and files are reached
from the root's descriptor through :mod:`engine.stores.fs.safe_paths` (no symlink below the root is followed).

Format (``store.json`` ``version``; a run log's first byte also tells: ``{`` version 1, ``E``/``B`` version 2).
New stores are version 2; a version-1 store (:data:`STORE_VERSIONS`) opens, reads and keeps writing version 1
until ``mfm doctor --migrate`` converts it (each run log rewritten beside the old one, synced, renamed over it,
``store.json`` flipped last: a kill at any instant leaves logs that each read in their own format).

Version 2. ``events.jsonl`` holds one *record* per line (:func:`record`)::

    <K><M> <length> <xxh3-64, 16 hex> <body>\\n

``K`` is ``E`` (an event: the body is the envelope's wire JSON, byte for byte what version 1 writes) or ``B`` (a
blob: ``<artifact id> t <kind JSON> <bytes>`` when the bytes are UTF-8 without CR/LF, as canonical JSON is, else
``<artifact id> b <kind JSON> <base64>``, :func:`blob_body`); ``M`` is ``+`` (more records of this commit follow) or
``.`` (the commit mark: the commit's last record); ``length`` is the body's length in bytes; the checksum is
xxHash's XXH3-64 of ``<K><M> <length> `` followed by the body (:func:`parse_record` checks all of it). A commit is
ONE ``write`` (:func:`frame_commit`: its blob records, then its event records) and ONE ``fdatasync``; it is
committed when its record with the commit mark is complete, so a reader sees every commit whole or not at all. The
blob's copy under ``artifacts/`` is a cache, written from the record by the first read that needs it (never on the
commit's path) and rebuilt when bad. ``tail -f`` and ``grep`` work on the file; ``cut -d' ' -f5-`` of the ``E``
lines gives the envelopes.

Version 1. One wire-form envelope per line (:func:`encode_line` / :func:`decode_line`), line ``i`` (0-based)
holding ``seq == i + 1``; a batch of n envelopes is ONE ``write`` (:func:`frame_batch`) whose first n-1 lines end
with ``" \\n"`` (a space, insignificant JSON whitespace, before the newline) and whose last line, the commit, ends
with ``"}\\n"``. Version-1 logs hold no blobs.

Scan. :func:`scan` walks forward from the end of the committed prefix, checking each complete record (v2: framing
and checksum; both: this run's id and the next seq) and committing at each commit mark. What follows the committed
prefix is either the *uncommitted tail* (records of a commit without its mark yet, then at most an incomplete line,
or damaged lines with NO valid record after them) or *damage*: a damaged record followed by a valid one, or a
record whose checksum is valid but which is not the next event of this run (a duplicated line, another run's
event, undecodable JSON). Readers ignore the uncommitted tail (it may be a commit being written right now); a
writer holding the run's lock knows no one else is writing, so for it the tail is *torn* (a crash) and is copied
aside and truncated before the next append. Damage is never taken for a torn tail: ``RunLog.damage`` records it,
reads return what precedes it (``read_range`` says it stopped), appends are refused (``run_log_corrupt``), and
nothing is moved or truncated (``mfm doctor`` reports it). :func:`check_log` is the doctor's slower scan of a whole
file: it decodes every record and, past the first damaged one, counts the valid records that follow.

Index. :class:`RunLog` keeps the start offset of every committed event record (``offsets[seq - 1]``) and of
every committed blob record (``blobs``), so ``read_range`` from any seq is one ``pread`` of exactly the wanted
bytes, and a refresh only re-reads what was appended since.
A viewer that only needs line positions, not validated envelopes, uses :func:`committed_lines` (a buffer, e.g. the
tail of a file) and :func:`index_lines` (a whole file, in large sequential reads); :func:`last_envelope` reads only
the end of a file (is the run finished?).
"""

from __future__ import annotations

from engine.stores.fs.framing.layout import (
    APPEND_LOCK_FILE,
    ARTIFACT_NAME,
    ARTIFACTS_DIR,
    CANCEL_FILE,
    CLOEXEC,
    CONTROL_DIR,
    DIR_MODE,
    DIRECTORY,
    EVENTS_FILE,
    EXEC_OUTPUT_FILES,
    FILE_MODE,
    JOURNAL_FILE,
    KIND_SUFFIX,
    LEASE_FILE,
    NOFOLLOW,
    PENDING_FILE,
    QUARANTINE_DIR,
    RD_FLAGS,
    RECOVERY_FILE,
    RETRY_NOW_PREFIX,
    RUNS_DIR,
    RUNS_INDEX_FILE,
    STORE_FORMAT,
    STORE_META_FILE,
    STORE_VERSION,
    STORE_VERSIONS,
    SUMMARY_FILE,
    TEMP_PREFIX,
    VERDICT_FILE,
    WORKER_LOG_FILE,
    append_lock_file,
    artifact_file,
    artifact_folder,
    artifact_kind_file,
    cancel_file,
    control_folder,
    events_file,
    journal_end,
    journal_line,
    journal_runs,
    lease_file,
    pending_file,
    quarantined_tail_file,
    retry_now_file,
    retry_now_name,
    run_folder,
    store_meta,
    summary_file,
    temp_name,
    temp_writer_pid,
    torn_tail_file,
)
from engine.stores.fs.framing.positions import (
    committed_lines,
    committed_newlines,
    index_lines,
    newline_offsets,
)
from engine.stores.fs.framing.records import (
    BLOB_RECORD,
    CHUNK,
    EVENT_RECORD,
    FORMAT_V1,
    FORMAT_V2,
    blob_body,
    blob_ids,
    decode_line,
    encode_line,
    first_bad_record,
    frame_batch,
    frame_commit,
    framed_lengths,
    holds,
    line_at,
    log_format,
    parse_blob,
    parse_record,
    record,
    record_body,
    v1_to_v2,
)
from engine.stores.fs.framing.runlog import (
    Damage,
    LogCheck,
    RunLog,
    check_log,
    decode_lines,
    decode_span,
    last_envelope,
    scan,
)

__all__ = [
    "APPEND_LOCK_FILE",
    "ARTIFACTS_DIR",
    "ARTIFACT_NAME",
    "BLOB_RECORD",
    "CANCEL_FILE",
    "CHUNK",
    "CLOEXEC",
    "CONTROL_DIR",
    "DIRECTORY",
    "DIR_MODE",
    "EVENTS_FILE",
    "EVENT_RECORD",
    "EXEC_OUTPUT_FILES",
    "FILE_MODE",
    "FORMAT_V1",
    "FORMAT_V2",
    "JOURNAL_FILE",
    "KIND_SUFFIX",
    "LEASE_FILE",
    "NOFOLLOW",
    "PENDING_FILE",
    "QUARANTINE_DIR",
    "RD_FLAGS",
    "RECOVERY_FILE",
    "RETRY_NOW_PREFIX",
    "RUNS_DIR",
    "RUNS_INDEX_FILE",
    "STORE_FORMAT",
    "STORE_META_FILE",
    "STORE_VERSION",
    "STORE_VERSIONS",
    "SUMMARY_FILE",
    "TEMP_PREFIX",
    "VERDICT_FILE",
    "WORKER_LOG_FILE",
    "Damage",
    "LogCheck",
    "RunLog",
    "append_lock_file",
    "artifact_file",
    "artifact_folder",
    "artifact_kind_file",
    "blob_body",
    "blob_ids",
    "cancel_file",
    "check_log",
    "committed_lines",
    "committed_newlines",
    "control_folder",
    "decode_line",
    "decode_lines",
    "decode_span",
    "encode_line",
    "events_file",
    "first_bad_record",
    "frame_batch",
    "frame_commit",
    "framed_lengths",
    "holds",
    "index_lines",
    "journal_end",
    "journal_line",
    "journal_runs",
    "last_envelope",
    "lease_file",
    "line_at",
    "log_format",
    "newline_offsets",
    "parse_blob",
    "parse_record",
    "pending_file",
    "quarantined_tail_file",
    "record",
    "record_body",
    "retry_now_file",
    "retry_now_name",
    "run_folder",
    "scan",
    "store_meta",
    "summary_file",
    "temp_name",
    "temp_writer_pid",
    "torn_tail_file",
    "v1_to_v2",
]
