"""Control commands of ``mfm``: start, resume, cancel, replay, worker, serve and tui.

Starting, resuming, cancelling and replaying go through ``engine.workers`` (shared with the TUI).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import click

# engine.workers resolves the actions (which import the whole runtime) when first called: `mfm tui` paints its runs
# list without them (0.25 s of its start; issue 15).
import engine.workers as workers
from engine.errors import ErrorInfo, MfmError
from engine.ids import RunId
from engine.operations import parse_param_assignments, parse_params_json
from engine.workers import EXIT_FAILED, EXIT_OK, LeaseState, is_pooled, max_orphan_recoveries
from mfm_tui.cli.common import CliError, Env, echo_json, env_of, load_model, now_millis, resolve_run_id, run_sync
from mfm_tui.cli.liveness import lost_worker_error, nobody_runs
from mfm_tui.config import store_writable
from mfm_tui.run_model import RunDisplayStatus, RunModel, run_json
from mfm_tui.serve import serve as serve_app
from mfm_tui.settings import choose_theme

__all__ = ["cancel", "replay", "resume", "serve", "start", "tui", "wait_for_run", "worker"]

# ---------------------------------------------------------------------------------------------
# Waiting for a run
# ---------------------------------------------------------------------------------------------


async def wait_for_run(env: Env, run_id: RunId, *, poll: float = 0.1) -> RunModel:
    """Poll the store until ``RunCompleted``; a lost worker is an error (``worker_lost``)."""
    store = env.store
    model = RunModel(run_id)
    while True:
        model.apply(await store.events.read_range(run_id, model.last_seq + 1))
        if model.engine_status is not None:
            return model
        if await nobody_runs(store, run_id):
            model.apply(await store.events.read_range(run_id, model.last_seq + 1))
            if model.engine_status is not None:
                return model
            raise await lost_worker_error(store, run_id)
        await asyncio.sleep(poll)


def _finish(model: RunModel, as_json: bool) -> int:
    if as_json:
        echo_json(run_json(model, now_millis()))
    else:
        line = f"run {model.run_id} {model.status.label}"
        if model.error is not None:
            line += f": [{model.error[0]}] {model.error[1]}"
        click.echo(line)
    return EXIT_OK if model.status is RunDisplayStatus.COMPLETED else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--theme",
    default=None,
    help="mfm-dark (default), mfm-light, mfm-16 or mfm-ascii; else the settings file's, else "
    "mfm-ascii under NO_COLOR and mfm-16 under TERM=linux.",
)
@click.option("--read-only", is_flag=True, help="Watch only: no start, cancel, resume.")
@click.option("--no-mouse", is_flag=True, help="No mouse reporting: the terminal selects and copies text as usual.")
@click.pass_context
def tui(ctx: click.Context, theme: str | None, read_only: bool, no_mouse: bool = False) -> int:
    """Open the terminal UI."""
    env = env_of(ctx)
    # Imported here, not at the top: Textual takes ~0.3 s to import; only `mfm tui` needs it (`mfm runs` stays quick).
    from mfm_tui.app import make_app, store_lease_probe

    store = env.open_store(create=not read_only)  # a store we cannot write opens too, read-only
    if env.ops:
        env.registry  # noqa: B018 - a bad --ops module is a one-line error before the screen opens
    # Otherwise the registry loads with the first plan it gives, after the first paint: the installed operations
    # (the demos) import the whole runtime, 0.25 s before the runs list could show (issue 15).
    offered: dict[str, Any] = {
        "read_only": read_only or not store_writable(store),  # a store we cannot write: watch only
        "plan_resolver": lambda manifest: env.registry.plan_for(manifest),
        "lease_probe": store_lease_probe(store),
        "registry_loader": lambda: env.registry,
        "ops_modules": env.ops,
        "keymap": dict(env.settings.keys),
        "notices": [env.settings_problem] if env.settings_problem is not None else [],
    }
    chosen = choose_theme(theme, env.settings)
    if chosen:
        offered["theme"] = chosen
    params = inspect.signature(make_app).parameters
    kwargs = {k: v for k, v in offered.items() if k in params}
    try:
        app = make_app(store, **kwargs)
    except ValueError as exc:  # e.g. an unknown theme
        raise CliError.new("usage", str(exc)) from None
    app.run(mouse=env.settings.mouse and not no_mouse)
    return EXIT_OK


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--theme", default=None, help="mfm-dark (default), mfm-light, mfm-16 or mfm-ascii.")
@click.option("--read-only", is_flag=True, help="Watch only: no start, cancel, resume.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, theme: str | None, read_only: bool) -> int:
    """Serve the terminal UI in a web browser (textual-serve), with this interpreter."""
    env = env_of(ctx)
    serve_app(env.store_location, host=host, port=port, ops=env.ops, read_only=read_only, theme=theme, debug=env.debug)
    return EXIT_OK


def _read_params_file(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = parse_params_json(f.read())
    except OSError as exc:
        raise CliError.new("params_file_unreadable", f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CliError.new("params_file_invalid", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError.new("params_file_invalid", f"{path} must hold a JSON object")
    return value


@click.command()
@click.argument("op_id")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter (repeatable).")
@click.option("--params-file", type=str, default=None, metavar="FILE", help="Parameters as a JSON object.")
@click.option("--wait", is_flag=True, help="Wait until the run finishes (exit 1 if it fails or is cancelled).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print run_id, manifest_id and op_id as JSON (with --wait: the finished run's summary).",
)
@click.pass_context
def start(
    ctx: click.Context, op_id: str, params: tuple[str, ...], params_file: str | None, wait: bool, as_json: bool
) -> int:
    """Start OP_ID in a detached worker; print the run id."""
    env = env_of(ctx)
    registry = env.registry
    op = registry.get(op_id)
    raw = _read_params_file(params_file)
    raw.update(parse_param_assignments(op, params))
    op.validate_params(raw)  # before the store is even opened: invalid input writes nothing
    prepared = run_sync(
        workers.start_run(env.open_store(create=True, write=True), registry, op_id, raw, ops_modules=env.ops)
    )
    if not wait:
        if as_json:
            echo_json({"run_id": str(prepared.run_id), "manifest_id": str(prepared.manifest_id), "op_id": op_id})
        else:
            click.echo(str(prepared.run_id))
            click.echo(f"started {op_id}; watch it with `mfm show {prepared.run_id[:8]}`", err=True)
        return EXIT_OK
    if not as_json:
        click.echo(str(prepared.run_id))
    return _finish(run_sync(wait_for_run(env, prepared.run_id)), as_json)


@click.command()
@click.argument("run")
@click.option("--wait", is_flag=True, help="Wait until the run finishes.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print run_id and worker_pid as JSON (a failed run: its recovery run, with recovered_from); "
    "with --wait the run's summary.",
)
@click.pass_context
def resume(ctx: click.Context, run: str, wait: bool, as_json: bool) -> int:
    """Resume a run whose worker was lost (or that stopped); refuses if a worker is alive.

    A run that FAILED is final; resuming it starts a recovery run (printed) that carries its
    completed states over and continues at the failed state, once you have fixed the cause.
    """
    env = env_of(ctx)

    async def go() -> Any:
        run_id = await resolve_run_id(env.open_store(write=True), run)
        max_orphan_recoveries()  # its worker reads it too (a crash-looping run's count is reset): fail here, not there
        return await workers.resume_run(env.store, run_id, ops_modules=env.ops)

    outcome = run_sync(go())
    for note in outcome.notes:  # e.g. the previous attempt's process group it killed first
        click.echo(f"note: {note}", err=True)
    if outcome.recovery_run_id is not None:
        new_id = outcome.recovery_run_id
        if not wait:
            if as_json:
                echo_json(
                    {"run_id": str(new_id), "recovered_from": str(outcome.run_id), "worker_pid": outcome.spawned_pid}
                )
            else:
                by = (
                    "queued for the worker pool" if outcome.spawned_pid is None else f"worker pid {outcome.spawned_pid}"
                )
                click.echo(
                    f"run {outcome.run_id} failed; recovering it as run {new_id} (completed states carried over; {by})"
                )
                click.echo(str(new_id))
            return EXIT_OK
        click.echo(f"recovering failed run {outcome.run_id} as {new_id}", err=True)
        return _finish(run_sync(wait_for_run(env, new_id)), as_json)
    if outcome.finished:  # completed or cancelled: a conflict (a failed run got a recovery run above)
        model = run_sync(load_model(env, outcome.run_id, with_plan=False))
        if model.load_error is not None and model.load_error[0] == "run_log_corrupt":  # its log is damaged: exit 6
            raise MfmError(ErrorInfo.new(*model.load_error))
        raise MfmError(
            ErrorInfo.new(
                "run_already_finished",
                f"run {outcome.run_id} already finished ({model.status.label}); nothing to resume",
            )
        )
    if not wait:
        if as_json:
            echo_json({"run_id": str(outcome.run_id), "worker_pid": outcome.spawned_pid})
        elif outcome.spawned_pid is None:
            click.echo(f"resuming run {outcome.run_id} (queued for the worker pool)")
        else:
            click.echo(f"resuming run {outcome.run_id} (worker pid {outcome.spawned_pid})")
        return EXIT_OK
    return _finish(run_sync(wait_for_run(env, outcome.run_id)), as_json)


@click.command()
@click.argument("run")
@click.option("--reason", default="cancelled by operator", help="Recorded with the request.")
@click.pass_context
def cancel(ctx: click.Context, run: str, reason: str) -> int:
    """Ask a run to stop (its worker cancels within a second)."""
    env = env_of(ctx)

    async def go() -> tuple[RunId, bool, list[RunId]]:
        run_id = await resolve_run_id(env.open_store(write=True), run)
        children = await workers.cancel_children(env.store, run_id)
        return run_id, await workers.cancel_run(env.store, run_id, reason, ops_modules=env.ops), children

    run_id, spawned, children = run_sync(go())
    extra = " (no live worker: a worker was started to close it)" if spawned else ""
    if spawned and is_pooled(env.store):
        extra = " (no worker held it: queued for the worker pool to close it)"
    click.echo(f"cancel requested for run {run_id}{extra}")
    if children:
        shown = ", ".join(str(c)[:8] for c in children)
        click.echo(f"and for its {len(children)} running child run{'s' if len(children) != 1 else ''}: {shown}")
    return EXIT_OK


@click.command()
@click.argument("run")
@click.option("--wait", is_flag=True, help="Wait for the verdict.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print source_run_id and replay_run_id as JSON; with --wait the verdict."
)
@click.pass_context
def replay(ctx: click.Context, run: str, wait: bool, as_json: bool) -> int:
    """Replay a run from its recorded facts as a new run and compare the outcome."""
    env = env_of(ctx)

    async def go() -> tuple[RunId, RunId]:
        run_id = await resolve_run_id(env.open_store(write=True), run)
        return run_id, await workers.replay_run(env.store, run_id, ops_modules=env.ops)

    source, replay_id = run_sync(go())
    if not wait:
        if as_json:
            echo_json({"source_run_id": str(source), "replay_run_id": str(replay_id)})
        else:
            click.echo(str(replay_id))
            click.echo(f"replaying {source} as run {replay_id}; `mfm replay {source[:8]} --wait` waits", err=True)
        return EXIT_OK
    model = run_sync(wait_for_run(env, replay_id))
    verdict = _wait_for_verdict(env, replay_id)
    # A parent's replay is served from its recorded facts (§16): no child runs again inside it. The verdict for the
    # tree also replays each child (a run of its own) and holds only if every replay is deterministic.
    children = list(run_sync(load_model(env, source, with_plan=False)).children)
    child_verdicts: list[tuple[RunId, RunModel, dict[str, Any]]] = []
    for child in children:
        child_replay = run_sync(workers.replay_run(env.store, child, ops_modules=env.ops))
        child_model = run_sync(wait_for_run(env, child_replay))
        child_verdicts.append((child, child_model, _wait_for_verdict(env, child_replay)))
    tree_ok = verdict["verdict"] == "deterministic" and all(
        v["verdict"] == "deterministic" for _, _, v in child_verdicts
    )
    if as_json:
        if children:
            verdict = {**verdict, "children": [v for _, _, v in child_verdicts]}
            verdict["tree_verdict"] = "deterministic" if tree_ok else "diverged"
        echo_json(verdict)
    else:
        click.echo(f"replay of {source} as {replay_id}: {_verdict_text(verdict)} ({model.status.label})")
        for child, child_model, child_verdict in child_verdicts:
            click.echo(
                f"  child {child} as {child_verdict['replay_run_id']}: {_verdict_text(child_verdict)}"
                f" ({child_model.status.label})"
            )
        if children:
            noun = "child" if len(children) == 1 else "children"
            click.echo(
                f"tree: {'deterministic' if tree_ok else 'diverged'} (parent + {len(children)} {noun}; the parent's"
                " replay re-executed no child)"
            )
    return EXIT_OK if tree_ok else EXIT_FAILED


def _verdict_text(verdict: dict[str, Any]) -> str:
    text = str(verdict["verdict"])
    if verdict.get("diverged_state"):
        text += f" at {verdict['diverged_state']}"
    return text


def _wait_for_verdict(env: Env, replay_id: RunId, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        value = run_sync(workers.read_verdict(env.store, replay_id))
        if value is not None:
            return value
        if time.monotonic() > deadline or workers.lease_state(env.store, replay_id).state is not LeaseState.HELD:
            value = run_sync(workers.read_verdict(env.store, replay_id))
            if value is not None:
                return value
            raise MfmError(ErrorInfo.new("worker_failed", f"the replay worker wrote no verdict for run {replay_id}"))
        time.sleep(0.05)


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(ctx: click.Context, args: tuple[str, ...]) -> int:
    """Execute one run in this process: `mfm worker run|resume|replay …` (normally spawned detached).

    On a database store: `mfm worker serve --store postgresql://… [--concurrency N] [--host-name NAME]`
    executes queued runs until stopped (SIGTERM hands its runs over to the other workers)."""
    env = env_of(ctx)
    argv = ["--store", str(env.store_location)]
    for module in env.ops:
        argv += ["--ops", module]
    return workers.main([*argv, *args], guard_output=True)  # its output passes the secrets guard
