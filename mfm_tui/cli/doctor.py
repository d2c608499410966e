"""``mfm doctor``: check (and with --repair, quarantine) a filesystem store."""

from __future__ import annotations

from typing import Any

import click

from engine.doctor import check_store, migrate_store, repair_store, resolve_runs
from engine.errors import MfmError
from engine.workers import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK
from mfm_tui.cli.common import echo_json, env_of

__all__ = ["doctor"]


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option(
    "--repair",
    is_flag=True,
    help="Move torn tails, temp files and failed starts' run folders into STORE/quarantine/ "
    "(deletes only a run folder whose files are all empty).",
)
@click.option(
    "--migrate",
    is_flag=True,
    help="Convert a version-1 store to version 2 (checksummed run logs), crash-safe; then check it.",
)
@click.pass_context
def doctor(ctx: click.Context, runs: tuple[str, ...], as_json: bool, repair: bool, migrate: bool) -> int:
    """Check the store (or only RUNS) without changing it: event files, attempt envelopes, artifacts, leases.

    Exit 0 when clean, 1 when something is wrong (each finding has a code), 3 when the store or a run is not found.
    """
    root = env_of(ctx).store_path
    if migrate:
        return _migrate(root, as_json)
    try:
        run_ids = resolve_runs(root, runs) if runs else None
        report = check_store(root, run_ids)
    except MfmError as err:
        if err.code == "store_not_found":
            click.echo(err.one_line(), err=True)
            return EXIT_NOT_FOUND
        raise
    remaining = report
    if repair and any(f.repairable for f in report.findings):
        repair_store(root, report)
        remaining = check_store(root, run_ids)
    if as_json:
        out = report.to_json()
        if repair:
            out["after_repair"] = remaining.to_json()
        echo_json(out)
    else:
        click.echo(
            f"store {root}: {report.runs_checked} run(s), {report.events_checked} event(s), "
            f"{report.artifacts_checked} artifact(s) checked"
        )
        for finding in report.findings:
            click.echo(finding.one_line())
        for moved in report.moved:
            if moved.removed:
                click.echo(f"removed {moved.source} ({moved.what}: no file in it held data)")
            else:
                click.echo(f"moved {moved.source} ({moved.what}, {moved.size} bytes) -> {moved.destination}")
        if remaining.ok:
            click.echo("no problems found" if report.ok else "no problems remain")
        else:
            errors = len(remaining.errors)
            fixable = sum(f.repairable for f in remaining.findings)
            hint = f"; `mfm doctor --repair` moves {fixable} of them into quarantine/" if fixable and not repair else ""
            click.echo(
                f"{len(remaining.findings)} problem(s): {errors} error(s), "
                f"{len(remaining.findings) - errors} warning(s){hint}"
            )
    return EXIT_OK if remaining.ok else EXIT_FAILED


def _migrate(root: Any, as_json: bool) -> int:
    try:
        done = migrate_store(root)
    except FileNotFoundError:
        click.echo(f"error[store_not_found]: no store at {root}", err=True)
        return EXIT_NOT_FOUND
    if as_json:
        echo_json(done.to_json())
    else:
        click.echo(
            f"store {root}: version {done.version_before} -> {done.version_after}; "
            f"{len(done.converted)} run log(s) converted, {done.already} already version 2"
        )
        for run_id, why in done.blocked:
            click.echo(f"left as it is: run {run_id}: {why}")
        if done.blocked:
            click.echo("the store stays version 1 until these logs are repaired (`mfm doctor --repair`, then again)")
    return EXIT_OK if not done.blocked else EXIT_FAILED
