"""The ``mfm`` command line: the TUI's twin for scripts, CI and quick looks.

Every command talks to runs only through the engine's public API and the store; starting,
resuming, cancelling and replaying go through ``engine.workers`` (shared with the TUI).

This package's face holds the command group and the entry point (``mfm = "mfm_tui.cli:main"``); the commands
live in modules by concern: ``common`` (per-invocation state, run-id resolution, output helpers), ``read`` (ops,
runs, show, events, artifact), ``control`` (tui, serve, start, resume, cancel, replay, worker) and ``doctor``.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from engine.errors import MfmError
from engine.workers import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    exit_code_for,
)
from mfm_tui import __version__
from mfm_tui.cli.common import Env
from mfm_tui.cli.control import cancel, replay, resume, serve, start, tui, worker
from mfm_tui.cli.doctor import doctor
from mfm_tui.cli.read import artifact, events, ops, runs, show

__all__ = ["EXIT_CODES_HELP", "cli", "main"]

EXIT_CODES_HELP = f"""\b
Exit codes (stable):
  {EXIT_OK}  ok
  {EXIT_FAILED}  the run failed or was cancelled (with --wait), or its worker was lost
  {EXIT_USAGE}  usage or validation error (bad option, invalid parameters, ambiguous run id)
  {EXIT_NOT_FOUND}  not found (run, artifact, operation, store)
  {EXIT_CONFLICT}  conflict (a live worker holds the run's lease, the run already finished)
\b
Errors are one line on stderr: error[code]: message (add --debug for a traceback).
Store: --store PATH, else $MFM_STORE, else $XDG_DATA_HOME/mfm/store (~/.local/share/mfm/store).
A postgresql://… URL selects the PostgreSQL store: runs are queued and executed by
`mfm worker serve` processes on any number of hosts (credentials: URL, PG* variables, ~/.pgpass)."""


# ---------------------------------------------------------------------------------------------
# The command group
# ---------------------------------------------------------------------------------------------


@click.group(invoke_without_command=True, epilog=EXIT_CODES_HELP)
@click.option(
    "--store", "store", metavar="PATH|URL", help="Store folder (created by start/worker/tui) or postgresql://… URL."
)
@click.option(
    "--ops", "ops", multiple=True, metavar="MODULE", help="Also load operations from MODULE or a .py file (repeatable)."
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="mfm")
@click.pass_context
def cli(ctx: click.Context, store: str | None, ops: tuple[str, ...], debug: bool) -> Any:
    """mfm: start, watch and steer durable state-machine runs.

    Without a command, opens the terminal UI (`mfm tui`).
    """
    # a .py path is made absolute so detached workers (same cwd, but still) load the same file
    ops = tuple(str(Path(m).absolute()) if m.endswith(".py") else m for m in ops)
    ctx.obj = Env(store_option=store, ops=ops, debug=debug)
    if ctx.invoked_subcommand is None:
        return ctx.invoke(tui)
    return None


for _command in (tui, serve, ops, start, runs, show, events, artifact, resume, cancel, replay, doctor, worker):
    cli.add_command(_command)


# ---------------------------------------------------------------------------------------------
# Entry point: one-line errors, stable exit codes
# ---------------------------------------------------------------------------------------------


def _report(err: MfmError, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    click.echo(err.one_line().replace("\n", " "), err=True)
    return exit_code_for(err)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    code: int
    try:
        rv = cli.main(args=args, prog_name="mfm", standalone_mode=False)
        code = rv if isinstance(rv, int) else EXIT_OK
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.Abort:
        click.echo("error[interrupted]: interrupted", err=True)
        code = 130
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error[usage]: {exc.format_message()}".replace("\n", " "), err=True)
        code = EXIT_USAGE
    except MfmError as err:
        code = _report(err, debug)
    except KeyboardInterrupt:
        click.echo("error[interrupted]: interrupted", err=True)
        code = 130
    except OSError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error[os_error]: {exc}", err=True)
        code = EXIT_USAGE
    sys.exit(code)
