"""The ``mfm`` command line: the TUI's twin for scripts, CI and quick looks.

Every command talks to runs only through the engine's public API and the store; starting,
resuming, cancelling and replaying go through ``engine.workers`` (shared with the TUI).

This package's face holds the command group and the entry point (``mfm = "mfm_tui.cli:main"``); the commands
live in modules by concern: ``common`` (per-invocation state, run-id resolution, output helpers), ``read`` (ops,
runs, show, events, artifact), ``control`` (tui, serve, start, resume, cancel, replay, worker), ``discard`` and
``doctor``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import click

from engine.errors import MfmError
from engine.workers import (
    EXIT_CONFLICT,
    EXIT_DAMAGED,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_USAGE,
    exit_code_for,
    storage_full,
)
from mfm_tui import __version__
from mfm_tui.cli.common import Env
from mfm_tui.settings import load_settings

__all__ = ["EXIT_CODES_HELP", "cli", "main"]

EXIT_CODES_HELP = f"""\b
Examples:
  mfm                                   open the terminal UI
  mfm start demo_flaky --wait           start a run and wait for it
  mfm runs --status failed --since 1d   what failed today
\b
Exit codes (stable):
  {EXIT_OK}  ok
  {EXIT_FAILED}  the run failed or was cancelled (with --wait), or its worker was lost
  {EXIT_USAGE}  usage or validation error (bad option, invalid parameters, ambiguous run id)
  {EXIT_NOT_FOUND}  not found (run, artifact, operation, store)
  {EXIT_CONFLICT}  conflict (a live worker holds the run's lease, the run already finished or was recovered)
  {EXIT_STORAGE}  storage: the store's disk is full (storage_full)
  {EXIT_DAMAGED}  damaged data: a run log or an artifact in the store is corrupt (run_log_corrupt, ...)
\b
Errors are one line on stderr: error[code]: message (add --debug for a traceback).
Store: --store PATH, else $MFM_STORE, else $XDG_DATA_HOME/mfm/store (~/.local/share/mfm/store).
A postgresql://… URL selects the PostgreSQL store: runs are queued and executed by
`mfm worker serve` processes on any number of hosts (credentials: URL, PG* variables, ~/.pgpass)."""


# ---------------------------------------------------------------------------------------------
# The command group
# ---------------------------------------------------------------------------------------------


class _StdoutClosed(Exception):
    """The reader of our standard output went away (``mfm events --json | head -1``)."""


_COMMAND_MODULES = {
    **dict.fromkeys(("tui", "serve", "start", "resume", "cancel", "replay", "worker"), "mfm_tui.cli.control"),
    **dict.fromkeys(("ops", "runs", "show", "events", "artifact"), "mfm_tui.cli.read"),
    "discard": "mfm_tui.cli.discard",
    "doctor": "mfm_tui.cli.doctor",
}
"""Each command's module, imported when the command is run or listed: `mfm tui` loads neither the read commands
nor doctor (they cost `import mfm_tui.cli` 0.1 s before the TUI could start; issue 15)."""


class _Group(click.Group):
    """The command group; a broken pipe on stdout leaves it as :class:`_StdoutClosed`, which click does not turn
    into ``exit 1`` (it does so for an ``EPIPE`` ``OSError``). Its commands load on demand (``_COMMAND_MODULES``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMAND_MODULES:
            command: click.Command = getattr(importlib.import_module(_COMMAND_MODULES[cmd_name]), cmd_name)
            examples = _EXAMPLES[cmd_name]
            lines = "\n".join(f"  {line}" for line in examples)
            command.epilog = f"\b\nExample{'s' if len(examples) > 1 else ''}:\n{lines}"
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with _stdout_closed_on_epipe():  # --help and --version print while parsing
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _stdout_closed_on_epipe():
            return super().invoke(ctx)


@contextlib.contextmanager
def _stdout_closed_on_epipe() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
            raise _StdoutClosed from exc
        raise


@click.group(
    cls=_Group,
    invoke_without_command=True,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--store", "store", metavar="PATH|URL", help="Store folder (created by start/worker/tui) or postgresql://… URL."
)
@click.option(
    "--ops", "ops", multiple=True, metavar="MODULE", help="Also load operations from MODULE or a .py file (repeatable)."
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("--theme", default=None, help="Without a command: the TUI's theme (see `mfm tui --help`).")
@click.option("--no-mouse", is_flag=True, help="Without a command: no mouse reporting (the terminal selects text).")
@click.version_option(__version__, prog_name="mfm")
@click.pass_context
def cli(
    ctx: click.Context, store: str | None, ops: tuple[str, ...], debug: bool, theme: str | None, no_mouse: bool
) -> Any:
    """mfm: start, watch and steer durable state-machine runs.

    Without a command, opens the terminal UI (`mfm tui`). Settings: $XDG_CONFIG_HOME/mfm/config.toml.
    """
    # a .py path is made absolute so detached workers (same cwd, but still) load the same file
    ops = tuple(str(Path(m).absolute()) if m.endswith(".py") else m for m in ops)
    settings, problem = load_settings()
    ctx.obj = Env(store_option=store, ops=ops, debug=debug, settings=settings, settings_problem=problem)
    if problem is not None and ctx.invoked_subcommand not in (None, "tui", "serve"):
        click.echo(f"warning[{problem[0]}]: {problem[1]} (using the defaults)", err=True)
    if ctx.invoked_subcommand is None:
        return ctx.invoke(cast("click.Command", cli.get_command(ctx, "tui")), theme=theme, no_mouse=no_mouse)
    return None


_EXAMPLES = {
    "tui": ["mfm tui --store ~/runs", "mfm --store postgresql://mfm@db/mfm tui --read-only"],
    "serve": ["mfm serve --port 8000"],
    "ops": ["mfm ops", "mfm ops --json"],
    "start": ["mfm start demo_flaky -p fail_times=3", "mfm start demo_pipeline --wait --json"],
    "runs": ["mfm runs --status failed --since 1h", "mfm runs --op demo_big --limit 5 --json"],
    "show": ["mfm show 3f2a", "mfm show 3f2a --json"],
    "events": ["mfm events 3f2a --follow", "mfm events 3f2a --from 40 --json"],
    "artifact": ["mfm artifact 9c1e0f", "mfm artifact 9c1e0f --raw > out.bin"],
    "resume": ["mfm resume 3f2a --wait"],
    "cancel": ["mfm cancel 3f2a --reason 'wrong input'"],
    "replay": ["mfm replay 3f2a --wait"],
    "discard": ["mfm discard 3f2a"],
    "doctor": ["mfm doctor", "mfm doctor --repair"],
    "worker": ["mfm worker serve --store postgresql://mfm@db/mfm --concurrency 4"],
}
"""One or two invocations shown at the end of each command's help (``-h``)."""


# ---------------------------------------------------------------------------------------------
# Entry point: one-line errors, stable exit codes
# ---------------------------------------------------------------------------------------------


def _report(err: MfmError, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    err = storage_full(err) or err  # a full disk says so, whichever layer noticed it
    click.echo(err.one_line().replace("\n", " "), err=True)
    return exit_code_for(err)


def _run(args: list[str], debug: bool) -> int:
    try:
        rv = cli.main(args=args, prog_name="mfm", standalone_mode=False)
        return rv if isinstance(rv, int) else EXIT_OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("error[interrupted]: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error[usage]: {exc.format_message()}".replace("\n", " "), err=True)
        return EXIT_USAGE
    except MfmError as err:
        return _report(err, debug)
    except KeyboardInterrupt:
        click.echo("error[interrupted]: interrupted", err=True)
        return 130
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise _StdoutClosed from exc
        full = storage_full(exc)
        if full is not None:
            return _report(full, debug)
        if debug:
            traceback.print_exc()
        click.echo(f"error[os_error]: {exc}", err=True)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    code = EXIT_OK
    try:
        code = _run(args, debug)
        sys.stdout.flush()  # now, while a reader that went away can still be handled
    except (_StdoutClosed, BrokenPipeError):
        # Not an error: whoever reads our output has all it wanted. Point stdout at /dev/null so that the
        # interpreter's own last flush stays quiet too (the Python docs' note on SIGPIPE).
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    sys.exit(code)
