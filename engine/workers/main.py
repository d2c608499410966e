"""The worker entry point (``python -m engine.workers``): the argument parser, ``serve`` and :func:`main` (see
:mod:`engine.workers`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from collections.abc import Sequence
from typing import cast

from engine.errors import MfmError
from engine.ids import ArtifactId, RunId
from engine.open_store import display_location, is_database_url, open_store
from engine.operations import load_registry
from engine.workers.base import EXIT_USAGE, RunFolders, WorkerError, exit_code_for, storage_full
from engine.workers.log_guard import guard_stdio
from engine.workers.run import run_worker

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfm worker", description="Execute one run (normally spawned detached).")
    p.add_argument("--store", required=True)
    p.add_argument("--ops", action="append", default=[])
    p.add_argument("--no-entry-points", action="store_true")
    p.add_argument("--cancel-poll", type=float, default=0.1)
    sub = p.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run")
    run.add_argument("--run-id", required=True)
    run.add_argument("--manifest", required=True)
    run.add_argument("--lease-fd", type=int)
    res = sub.add_parser("resume")
    res.add_argument("run_id")
    res.add_argument("--lease-fd", type=int)
    rep = sub.add_parser("replay")
    rep.add_argument("run_id")
    rep.add_argument("--replay-run-id", required=True)
    rep.add_argument("--lease-fd", type=int)
    rec = sub.add_parser("recover")
    rec.add_argument("run_id")
    rec.add_argument("--recovery-run-id", required=True)
    rec.add_argument("--lease-fd", type=int)
    srv = sub.add_parser("serve", description="Execute queued runs of a database store (any number of hosts).")
    srv.add_argument("--store", dest="serve_store", help="postgresql://… (overrides the global --store)")
    srv.add_argument("--concurrency", type=int, default=4, help="runs executed at once (default 4)")
    srv.add_argument("--host-name", default=None, help="shown as HOST by `mfm runs` (default: this host's name)")
    srv.add_argument("--lease-ttl", type=float, default=5.0, help="seconds before a silent worker's runs move on")
    srv.add_argument("--heartbeat", type=float, default=1.0, help="seconds between lease renewals")
    srv.add_argument("--poll", type=float, default=0.25, help="seconds between queue polls when idle")
    srv.add_argument("--exit-when-idle", action="store_true", help="stop once the queue is empty")
    return p


def _serve(ns: argparse.Namespace) -> int:
    location = ns.serve_store or ns.store
    if not is_database_url(location):
        raise WorkerError.new(
            "store_not_database",
            f"`worker serve` needs a postgresql:// store, not {display_location(location)!r} "
            "(filesystem stores spawn one worker per run)",
        )
    if ns.concurrency < 1:
        raise WorkerError.new("usage", "--concurrency must be at least 1")
    store = open_store(location)  # (first: without psycopg it says which extra to install)
    from engine.pool import PostgresPoolStore, serve  # the pool needs psycopg, an optional dependency

    assert isinstance(store, PostgresPoolStore)  # a postgresql:// location (checked above)
    registry = load_registry(ns.ops, entry_points=not ns.no_entry_points)
    return asyncio.run(
        serve(
            store,
            registry,
            concurrency=ns.concurrency,
            host=ns.host_name,
            ttl=ns.lease_ttl,
            heartbeat=ns.heartbeat,
            poll=ns.poll,
            cancel_poll=ns.cancel_poll,
            exit_when_idle=ns.exit_when_idle,
        )
    )


def main(argv: Sequence[str] | None = None, *, guard_output: bool = False) -> int:
    """Worker entry point: one line ``error[code]: message`` on stderr for any contract error.

    ``guard_output`` (the ``python -m engine.workers`` and ``mfm worker`` processes): descriptors 1 and 2 pass through
    the secrets guard before they reach their files (:mod:`engine.workers.log_guard`); set first, before anything
    runs that could print."""
    if guard_output:
        guard_stdio()
    ns = _parser().parse_args(argv)
    try:
        if ns.action == "serve":
            return _serve(ns)
        store = open_store(ns.store, create=True, write=True)  # a worker writes: it may create the store
        registry = load_registry(ns.ops, entry_points=not ns.no_entry_points)
        run_id = RunId(ns.run_id)
        return asyncio.run(
            run_worker(
                cast(RunFolders, store),  # a database store has no run folders: its runs go through `serve`
                registry,
                ns.action,
                run_id,
                manifest_id=ArtifactId(ns.manifest) if ns.action == "run" else None,
                replay_run_id=(
                    RunId(ns.replay_run_id)
                    if ns.action == "replay"
                    else RunId(ns.recovery_run_id)
                    if ns.action == "recover"
                    else None
                ),
                lease_fd=ns.lease_fd,
                cancel_poll_interval=ns.cancel_poll,
            )
        )
    except SystemExit:  # raised by a handler: the log tells where (its secret-looking lines are withheld)
        traceback.print_exc(file=sys.stderr)
        raise
    except MfmError as err:
        err = storage_full(err) or err
        print(err.one_line(), file=sys.stderr, flush=True)
        return exit_code_for(err)
    except OSError as exc:
        full = storage_full(exc)
        if full is None:
            raise
        print(full.one_line(), file=sys.stderr, flush=True)
        return exit_code_for(full)
    except ValueError as err:
        print(f"error[usage]: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE
