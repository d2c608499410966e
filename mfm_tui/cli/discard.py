"""``mfm discard``: remove a run that never started (its worker died before ``RunStarted``)."""

from __future__ import annotations

import click

from engine.ids import RunId
from engine.workers import EXIT_OK, discard_run
from mfm_tui.cli.common import env_of, resolve_run_id, run_sync

__all__ = ["discard"]


@click.command()
@click.argument("run")
@click.pass_context
def discard(ctx: click.Context, run: str) -> int:
    """Remove RUN, a run that never started ("not started: worker lost" in `mfm runs`).

    Refused for a run that has any event (exit 4) or whose worker is alive (exit 4). On a filesystem store its
    folder (start record, lease, worker.log) is moved into STORE/quarantine/, never deleted; on a database store
    its queue row is marked discarded. `mfm resume RUN` is the other way out: it starts the run again.
    """
    env = env_of(ctx)

    async def go() -> tuple[RunId, str]:
        run_id = await resolve_run_id(env.store, run)
        return run_id, await discard_run(env.store, run_id)

    run_id, where = run_sync(go())
    click.echo(f"discarded run {run_id} (never started); moved to {where}")
    return EXIT_OK
