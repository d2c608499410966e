"""Run leases: flock-based liveness (never the pid), holder info, hand-over to a child, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.engine import Stores
from engine.errors import ErrorInfo, MfmError
from engine.events import EventEnvelope, RunCompleted, RunStatus, encode_envelope
from engine.ids import RunId
from engine.stores import MemoryStore
from engine.stores.fs import safe_paths
from engine.workers import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    Lease,
    LeaseState,
    WorkerError,
    exit_code_for,
    lease_state,
    run_finished,
)

RUN = RunId("0b7e1f1c-0000-4000-8000-000000000001")

_FAKE_STORE = """
from pathlib import Path
class FakeStore:
    def __init__(self, root):
        self.root = Path(root)
    def run_dir(self, run_id):
        return self.root / "runs" / str(run_id)
    def events_path(self, run_id):
        return self.run_dir(run_id) / "events.jsonl"
    def open_run_dir(self, run_id, *, create=False):
        from engine.stores.fs import safe_paths
        return safe_paths.open_below(str(self.root), f"runs/{run_id}", create=create)
"""


class _Store:
    """The part of ``FsStore`` the lease code uses (``_FAKE_STORE`` is the same for child processes)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run_dir(self, run_id: RunId) -> Path:
        return self.root / "runs" / str(run_id)

    def events_path(self, run_id: RunId) -> Path:
        return self.run_dir(run_id) / "events.jsonl"

    def open_run_dir(self, run_id: RunId, *, create: bool = False) -> int:
        return safe_paths.open_below(str(self.root), f"runs/{run_id}", create=create)

    @property
    def stores(self) -> Stores:
        return MemoryStore().stores


def _child(root: Path, body: str, *, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    code = _FAKE_STORE + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(root)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        pass_fds=pass_fds,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


_HOLD = """
import sys, time
from engine.workers import Lease
lease = Lease.acquire(FakeStore(sys.argv[1]), "0b7e1f1c-0000-4000-8000-000000000001", "test")
print("ready", flush=True)
time.sleep(60)
"""


def _completed_line(seq: int) -> bytes:
    env = EventEnvelope(run_id=RUN, seq=seq, ts_millis=1, event=RunCompleted(status=RunStatus.COMPLETED))
    return encode_envelope(env) + b"\n"


def test_no_lease_file_is_none(tmp_path: Path) -> None:
    assert lease_state(_Store(tmp_path), RUN).state is LeaseState.NONE


def test_acquire_writes_holder_and_blocks_a_second_holder(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    with Lease.acquire(store, RUN, "resume"):
        info = lease_state(store, RUN)
        assert info.state is LeaseState.HELD
        assert info.pid == os.getpid() and info.host and info.action == "resume"
        assert isinstance(info.started_at, int)
        with pytest.raises(WorkerError) as err:
            Lease.acquire(store, RUN, "resume", attempts=2)
        assert err.value.code == "lease_held" and str(os.getpid()) in err.value.message
        assert exit_code_for(err.value) == EXIT_CONFLICT
        assert oct((tmp_path / "runs" / RUN / "lease").stat().st_mode & 0o777) == "0o600"
    # released, run not finished: the worker is lost
    assert lease_state(store, RUN).state is LeaseState.STALE


async def test_worker_leases_lists_held_and_lost_runs_not_finished_ones(tmp_path: Path) -> None:
    """The workers view's source on a filesystem store: the live holder, the lost one (stale), never a finished
    run; liveness is the flock, so there is no heartbeat age."""
    from engine.workers import worker_leases

    store = _Store(tmp_path)
    lost = RunId("0b7e1f1c-0000-4000-8000-000000000002")
    done = RunId("0b7e1f1c-0000-4000-8000-000000000003")
    Lease.acquire(store, lost, "run").release()
    Lease.acquire(store, done, "run").release()
    store.events_path(done).write_bytes(_completed_line(1))
    (tmp_path / "runs" / "not-a-run").mkdir()
    with Lease.acquire(store, RUN, "resume"):
        by_run = {w.run_id: w for w in await worker_leases(store)}  # type: ignore[arg-type]
    assert set(by_run) == {RUN, lost}
    held = by_run[RUN]
    assert (held.state, held.pid, held.action, held.stale) == (LeaseState.HELD, os.getpid(), "resume", False)
    assert held.host and isinstance(held.started_at, int) and held.heartbeat_age_millis is None
    assert by_run[lost].stale and by_run[lost].pid == os.getpid()


def test_finished_run_with_free_lock_is_none(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    Lease.acquire(store, RUN, "run").release()
    events = store.events_path(RUN)
    events.write_bytes(_completed_line(1) + b'{"torn')  # a torn tail is skipped
    assert run_finished(store, RUN)
    info = lease_state(store, RUN)
    assert info.state is LeaseState.NONE and info.pid == os.getpid()


def test_killed_holder_is_stale_even_while_its_zombie_pid_answers(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    proc = _child(tmp_path, _HOLD)
    try:
        info = lease_state(store, RUN)
        assert info.state is LeaseState.HELD and info.pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        # Not reaped yet: a zombie whose pid still answers kill -0; only the lock tells the truth.
        for _ in range(500):  # the kernel releases the lock as the process dies
            if lease_state(store, RUN).state is LeaseState.STALE:
                break
            time.sleep(0.01)
        os.kill(proc.pid, 0)
        assert lease_state(store, RUN).state is LeaseState.STALE
        assert lease_state(store, RUN).pid == proc.pid
    finally:
        proc.kill()
        proc.wait()


_ADOPT = """
import sys, time
from engine.workers import Lease
fd = int(sys.argv[2])
lease = Lease.adopt(FakeStore(sys.argv[1]), "0b7e1f1c-0000-4000-8000-000000000001", fd, "resume")
print("ready", flush=True)
time.sleep(60)
"""


def test_lease_is_handed_to_a_child_without_a_gap(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    lease = Lease.acquire(store, RUN, "spawn")
    code = _FAKE_STORE + textwrap.dedent(_ADOPT)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), str(lease.fd)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        pass_fds=(lease.fd,),
    )
    lease.release()  # the child's copy of the descriptor keeps the lock
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        info = lease_state(store, RUN)
        assert info.state is LeaseState.HELD and info.pid == proc.pid and info.action == "resume"
        with pytest.raises(WorkerError):
            Lease.acquire(store, RUN, "other", attempts=1)
    finally:
        proc.kill()
        proc.wait()
    assert lease_state(store, RUN).state is LeaseState.STALE


def test_adopt_refuses_a_foreign_descriptor(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    Lease.acquire(store, RUN, "x").release()
    other = tmp_path / "other"
    other.write_text("")
    fd = os.open(other, os.O_RDWR)
    try:
        with pytest.raises(WorkerError) as err:
            Lease.adopt(store, RUN, fd, "resume")
        assert err.value.code == "lease_fd_invalid"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        ("run_not_found", EXIT_NOT_FOUND),
        ("unknown_operation", EXIT_NOT_FOUND),
        ("artifact_not_found", EXIT_NOT_FOUND),
        ("lease_held", EXIT_CONFLICT),
        ("run_already_finished", EXIT_CONFLICT),
        ("worker_lost", EXIT_FAILED),
        ("invalid_params", EXIT_USAGE),
        ("run_id_ambiguous", EXIT_USAGE),
    ],
)
def test_exit_codes(code: str, exit_code: int) -> None:
    assert exit_code_for(MfmError(ErrorInfo.new(code, "m"))) == exit_code


def test_an_unterminated_last_line_is_not_committed(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    Lease.acquire(store, RUN, "run").release()
    store.events_path(RUN).write_bytes(_completed_line(1)[:-1])  # the newline never reached the disk
    assert not run_finished(store, RUN)
    assert lease_state(store, RUN).state is LeaseState.STALE
