"""Spawning detached workers: ``python -m engine.workers …`` in its own session, logging to
``runs/<id>/worker.log``, with the run's lease handed over (see :mod:`engine.workers`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from engine._workers_base import RunFolders, WorkerError
from engine._workers_lease import Lease
from engine.ids import RunId

__all__ = ["spawn_worker"]

_children: list[subprocess.Popen[bytes]] = []


def _reap_children() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def _store_root(store: RunFolders) -> Path:
    root = getattr(store, "root", None)
    if root is None:
        raise WorkerError.new("store_not_filesystem", "workers need a filesystem store (engine.stores.fs.FsStore)")
    return Path(root).absolute()


def spawn_worker(
    store: RunFolders,
    action: str,
    run_id: RunId,
    *,
    args: Sequence[str] = (),
    ops_modules: Sequence[str] = (),
    lease: Lease | None = None,
    python: str | None = None,
) -> int:
    """Start ``python -m engine.workers … <action> …`` detached; return its pid.

    With ``lease``, the locked descriptor is handed to the child (``--lease-fd``) and closed here,
    so the lease passes from this process to the worker without a gap.
    """
    _reap_children()
    root = _store_root(store)
    cmd = [python or sys.executable, "-m", "engine.workers", "--store", str(root)]
    for module in ops_modules:
        cmd += ["--ops", module]
    cmd += [action, *args]
    pass_fds: tuple[int, ...] = ()
    if lease is not None:
        cmd += ["--lease-fd", str(lease.fd)]
        pass_fds = (lease.fd,)
    run_dir = Path(store.run_dir(run_id))
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_fd = os.open(
        run_dir / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
        )
    finally:
        os.close(log_fd)
        if lease is not None:
            lease.release()
    _children.append(proc)
    return proc.pid
