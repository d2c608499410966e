"""The ``mfm`` command line: the TUI's twin for scripts, CI and quick looks.

Every command talks to runs only through the engine's public API and the store; starting,
resuming, cancelling and replaying go through ``engine.workers`` (shared with the TUI).

This module holds the command group and the entry point; the commands live in private modules
(``_cli_common`` shared helpers, ``_cli_read``, ``_cli_control``, ``_cli_doctor``) and every name
is re-exported here, so ``mfm_tui.cli`` stays the one import path.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from engine.errors import ErrorCategory as ErrorCategory
from engine.errors import ErrorInfo as ErrorInfo
from engine.errors import MfmError
from engine.events import DomainEvent as DomainEvent
from engine.events import EventEnvelope as EventEnvelope
from engine.events import RunCompleted as RunCompleted
from engine.events import StateFailed as StateFailed
from engine.events import encode_envelope as encode_envelope
from engine.ids import ArtifactId as ArtifactId
from engine.ids import RunId as RunId
from engine.open_store import open_store as open_store
from engine.operations import OperationRegistry as OperationRegistry
from engine.operations import load_registry as load_registry
from engine.operations import parse_param_assignments as parse_param_assignments
from engine.operations import read_manifest as read_manifest
from engine.workers import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    exit_code_for,
)
from engine.workers import LeaseState as LeaseState
from engine.workers import cancel_run as cancel_run
from engine.workers import is_pooled as is_pooled
from engine.workers import lease_state as lease_state
from engine.workers import read_verdict as read_verdict
from engine.workers import replay_run as replay_run
from engine.workers import resume_run as resume_run
from engine.workers import start_run as start_run
from mfm_tui import __version__
from mfm_tui._cli_common import CliError as CliError
from mfm_tui._cli_common import Env
from mfm_tui._cli_common import T as T
from mfm_tui._cli_common import _dur as _dur
from mfm_tui._cli_common import _echo_json as _echo_json
from mfm_tui._cli_common import _env as _env
from mfm_tui._cli_common import _now as _now
from mfm_tui._cli_common import _print_table as _print_table
from mfm_tui._cli_common import _run as _run
from mfm_tui._cli_common import _run_dir_exists as _run_dir_exists
from mfm_tui._cli_common import _state_line as _state_line
from mfm_tui._cli_common import _status_text as _status_text
from mfm_tui._cli_common import _ts as _ts
from mfm_tui._cli_common import load_model as load_model
from mfm_tui._cli_common import resolve_run_id as resolve_run_id
from mfm_tui._cli_control import _finish as _finish
from mfm_tui._cli_control import _last_line as _last_line
from mfm_tui._cli_control import _read_params_file as _read_params_file
from mfm_tui._cli_control import _read_verdict as _read_verdict
from mfm_tui._cli_control import cancel, replay, resume, serve, start, tui, worker
from mfm_tui._cli_control import wait_for_run as wait_for_run
from mfm_tui._cli_doctor import doctor
from mfm_tui._cli_read import _STATUS_CHOICES as _STATUS_CHOICES
from mfm_tui._cli_read import _event_summary as _event_summary
from mfm_tui._cli_read import _finished as _finished
from mfm_tui._cli_read import _print_event as _print_event
from mfm_tui._cli_read import artifact, events, ops, runs, show
from mfm_tui.config import resolve_store as resolve_store
from mfm_tui.run_model import PlanShape as PlanShape
from mfm_tui.run_model import RunModel as RunModel
from mfm_tui.run_model import RunStatus as RunStatus
from mfm_tui.run_model import lease_status_of as lease_status_of

EXIT_CODES_HELP = f"""\b
Exit codes (stable):
  {EXIT_OK}  ok
  {EXIT_FAILED}  the run failed or was cancelled (with --wait), or its worker was lost
  {EXIT_USAGE}  usage or validation error (bad option, invalid parameters, ambiguous run id)
  {EXIT_NOT_FOUND}  not found (run, artifact, operation)
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
@click.option("--store", "store", metavar="PATH|URL", help="Store folder (created on first use) or postgresql://… URL.")
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
