"""The ``mfm`` command line."""

from __future__ import annotations

import click

from mfm_tui import __version__


@click.group(invoke_without_command=True)
@click.version_option(__version__, prog_name="mfm")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """mfm: watch and steer durable state-machine runs."""


def main() -> None:
    cli()
