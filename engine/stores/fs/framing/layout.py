"""The store's layout: the folders and files of a filesystem store, their modes and open flags, temp names, the
change journal's lines and ``store.json`` (see :mod:`engine.stores.fs.framing`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re

# -- the store's files ---------------------------------------------------------------------------------------------

STORE_FORMAT = "mfm-store"
STORE_VERSION = 2
STORE_VERSIONS = (1, 2)
"""The store versions this program opens (``store.json``); new stores are ``STORE_VERSION``."""
STORE_META_FILE = "store.json"
JOURNAL_FILE = "changes.log"
RUNS_DIR = "runs"
ARTIFACTS_DIR = "artifacts"
QUARANTINE_DIR = "quarantine"
EVENTS_FILE = "events.jsonl"
APPEND_LOCK_FILE = "events.lock"
LEASE_FILE = "lease"
PENDING_FILE = "start.json"
WORKER_LOG_FILE = "worker.log"
EXEC_OUTPUT_FILES = {"stdout": "exec.stdout", "stderr": "exec.stderr"}
RECOVERY_FILE = "recovery.json"
VERDICT_FILE = "verdict.json"
CONTROL_DIR = "control"
CANCEL_FILE = "cancel.json"
RETRY_NOW_PREFIX = "retry-now-"
SUMMARY_FILE = "summary.json"
RUNS_INDEX_FILE = "runs.index"
KIND_SUFFIX = ".kind"
TEMP_PREFIX = ".tmp-"
ARTIFACT_NAME = re.compile(r"[0-9a-f]{64}")
"""The name of an artifact file: its 64-hex content address."""

FILE_MODE = 0o600
DIR_MODE = 0o700
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
RD_FLAGS = os.O_RDONLY | NOFOLLOW | CLOEXEC
"""``os.open`` flags of every read of a store file (a symlink is refused, the fd never leaks into a child)."""

_tmp_counter = itertools.count()
_TMP_PID = re.compile(r"^\.tmp-.*-(\d+)-\d+$|^\..*\.(\d+)$")
"""Temp names that carry their writer's pid: the store's ``.tmp-<tag>-<pid>-<n>``, the workers' ``.<name>.<pid>``."""


def run_folder(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}"


def events_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{EVENTS_FILE}"


def append_lock_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{APPEND_LOCK_FILE}"


def lease_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{LEASE_FILE}"


def pending_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{PENDING_FILE}"


def control_folder(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{CONTROL_DIR}"


def cancel_file(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{CONTROL_DIR}/{CANCEL_FILE}"


def retry_now_name(state_id: str, attempt: int) -> str:
    """The control file name of a retry-now request (the state id is hashed: it never becomes a path)."""
    digest = hashlib.sha256(str(state_id).encode()).hexdigest()[:32]
    return f"{RETRY_NOW_PREFIX}{digest}-{int(attempt)}.json"


def retry_now_file(run_id: str, state_id: str, attempt: int) -> str:
    return f"{RUNS_DIR}/{run_id}/{CONTROL_DIR}/{retry_now_name(state_id, attempt)}"


def summary_file(run_id: str) -> str:
    """The run's summary cache (``engine.run_summary``): rewritten whole, never synced, rebuilt when stale."""
    return f"{RUNS_DIR}/{run_id}/{SUMMARY_FILE}"


def torn_tail_file(run_id: str, start: int, millis: int) -> str:
    """Where the store copies a torn tail starting at byte ``start`` before truncating the run log."""
    return f"{RUNS_DIR}/{run_id}/{EVENTS_FILE}.torn-{start}-{millis}"


def quarantined_tail_file(run_id: str, committed_end: int) -> str:
    """Where ``mfm doctor --repair`` puts a torn tail, relative to its quarantine folder."""
    return f"{RUNS_DIR}/{run_id}/{EVENTS_FILE}.tail-at-{committed_end}"


def artifact_folder(artifact_id: str) -> str:
    return f"{ARTIFACTS_DIR}/{artifact_id[:2]}"


def artifact_file(artifact_id: str) -> str:
    return f"{ARTIFACTS_DIR}/{artifact_id[:2]}/{artifact_id}"


def artifact_kind_file(artifact_id: str) -> str:
    return f"{ARTIFACTS_DIR}/{artifact_id[:2]}/{artifact_id}{KIND_SUFFIX}"


def temp_name(tag: str) -> str:
    """A temp file name ``.tmp-<tag>-<pid>-<n>`` (never a valid id, so never read as data)."""
    return f"{TEMP_PREFIX}{tag}-{os.getpid()}-{next(_tmp_counter)}"


def temp_writer_pid(name: str) -> int | None:
    """The pid of the process writing temp file ``name`` (store or workers naming), ``None`` if it carries none."""
    m = _TMP_PID.match(name)
    if m is None:
        return None
    return int(m.group(1) or m.group(2))


# -- the change journal --------------------------------------------------------------------------------------------


def journal_line(run_id: str, head: int) -> bytes:
    return f"{run_id} {head}\n".encode()


def journal_runs(data: bytes) -> tuple[int, list[str]]:
    """The bytes of ``data`` up to its last complete journal line, and the run named by each of those lines."""
    complete = data.rfind(b"\n") + 1
    return complete, [line.partition(b" ")[0].decode("ascii", "replace") for line in data[:complete].splitlines()]


def journal_end(fd: int, size: int) -> int:
    """Offset just past the last complete line of the journal (size 0 → 0)."""
    tail = os.pread(fd, min(size, 4096), max(0, size - 4096))
    return size - len(tail) + tail.rfind(b"\n") + 1


def store_meta(version: int, created_at: str) -> bytes:
    """The bytes of ``store.json``."""
    return json.dumps({"created_at": created_at, "format": STORE_FORMAT, "version": version}, sort_keys=True).encode()
