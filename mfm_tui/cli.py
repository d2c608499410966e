"""The ``mfm`` command line: the TUI's twin for scripts, CI and quick looks.

Every command talks to runs only through the engine's public API and the store; starting,
resuming, cancelling and replaying go through ``engine.workers`` (shared with the TUI).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import time
import traceback
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.events import DomainEvent, EventEnvelope, RunCompleted, StateFailed, encode_envelope
from engine.ids import ArtifactId, RunId
from engine.operations import OperationRegistry, load_registry, parse_param_assignments, read_manifest
from engine.workers import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    LeaseState,
    cancel_run,
    exit_code_for,
    is_pooled,
    lease_state,
    open_store,
    read_verdict,
    replay_run,
    resume_run,
    start_run,
)
from mfm_tui import __version__
from mfm_tui.config import resolve_store
from mfm_tui.run_model import PlanShape, RunModel, RunStatus, lease_status_of

T = TypeVar("T")

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


class CliError(MfmError):
    @classmethod
    def new(cls, code: str, message: str) -> CliError:
        return cls(ErrorInfo.new(code, message, category=ErrorCategory.PARSING_INPUT))


@dataclass
class Env:
    """Per-invocation state shared by the commands (``ctx.obj``)."""

    store_option: str | None
    ops: tuple[str, ...]
    debug: bool
    _store: Any = None
    _registry: OperationRegistry | None = None
    plan_shapes: dict[str, PlanShape] = field(default_factory=dict)

    @property
    def store_location(self) -> Path | str:
        """The store folder, or a ``postgresql://`` URL."""
        return resolve_store(self.store_option)

    @property
    def store_path(self) -> Path:
        location = self.store_location
        if not isinstance(location, Path):
            raise CliError.new("store_not_filesystem", "this command needs a filesystem store, not a database URL")
        return location

    @property
    def store(self) -> Any:
        if self._store is None:
            self._store = open_store(self.store_location)
        return self._store

    @property
    def registry(self) -> OperationRegistry:
        if self._registry is None:
            self._registry = load_registry(self.ops)
        return self._registry


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _ts(millis: int | None) -> str:
    if millis is None:
        return "-"
    return datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _dur(millis: int | None) -> str:
    if millis is None:
        return "-"
    s = millis / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _now() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# Runs: prefix resolution and view models
# ---------------------------------------------------------------------------------------------


async def resolve_run_id(store: Any, text: str) -> RunId:
    """A full run id or a unique prefix of one (as git does)."""
    prefix = text.strip().lower()
    if not prefix:
        raise CliError.new("usage", "a run id (or a prefix of one) is required")
    try:
        full = RunId(prefix)
    except ValueError:
        full = None
    if full is not None and (await store.events.head_seq(full) > 0 or _run_dir_exists(store, full)):
        return full  # (a run whose worker has not written RunStarted yet has a folder already)
    if full is not None and is_pooled(store) and await store.queue.get(full) is not None:
        return full  # (queued on a database store, not started by a worker yet)
    runs = sorted(str(r) for r in await store.events.list_runs())
    matches = [r for r in runs if r.startswith(prefix)]
    if not matches:
        raise MfmError(ErrorInfo.new("run_not_found", f"no run matches {text!r}"))
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:8]) + (" …" if len(matches) > 8 else "")
        raise CliError.new("run_id_ambiguous", f"{text!r} matches {len(matches)} runs: {shown}")
    return RunId(matches[0])


def _run_dir_exists(store: Any, run_id: RunId) -> bool:
    run_dir = getattr(store, "run_dir", None)
    return run_dir is not None and Path(run_dir(run_id)).is_dir()


async def load_model(env: Env, run_id: RunId, *, with_plan: bool = True) -> RunModel:
    """The run's events folded by ``run_model`` with its manifest, plan shape (states not entered
    yet count in the totals), lease and cancel request."""
    store = env.store
    envelopes = await store.events.read_range(run_id, 1)
    model = RunModel(run_id)
    model.apply(envelopes)
    manifest_id = model.manifest_id
    if manifest_id is None and is_pooled(store):  # queued, not started by a worker yet: its queue row knows it
        row = await store.queue.get(run_id)
        manifest_id = None if row is None or row.manifest_id is None else ArtifactId(row.manifest_id)
    if manifest_id is not None:
        try:
            manifest = await read_manifest(store.artifacts, manifest_id)
            model.set_manifest(manifest)
            if with_plan:
                shape = env.plan_shapes.get(manifest_id)
                if shape is None:
                    shape = env.plan_shapes[manifest_id] = PlanShape.from_plan(env.registry.plan_for(manifest))
                model.set_plan(shape)
        except MfmError as err:
            model.anomalies.append(f"manifest/plan unavailable: {err.one_line()}")
    model.set_lease(lease_status_of(lease_state(store, run_id)))
    model.set_cancel_requested(await store.events.cancel_request(run_id) is not None)
    return model


def _state_line(model: RunModel) -> str:
    if model.recovered_by is not None:
        return f"recovered as {model.recovered_by[:8]}"
    sv = model.current_state
    if sv is None:
        return "-"
    text = sv.short_name
    if sv.error is not None and sv.error[0]:
        text += f" [{sv.error[0]}]"
    return text


def _status_text(model: RunModel, now: int) -> str:
    status = model.status
    retry = model.retry_target
    if status is RunStatus.RETRYING and retry is not None:
        remaining = retry.remaining_millis(now)
        tail = f" in {_dur(remaining)}" if remaining is not None else ""
        return f"retrying {retry.next_attempt_number}/{retry.max_attempts or '?'}{tail}"
    return status.label


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
        lease = lease_state(store, run_id)
        # On a database store a lost worker's run is taken over by the pool: only a run nobody will pick up is lost.
        pooled = is_pooled(store)
        if (lease.state is LeaseState.NONE) if pooled else (lease.state is not LeaseState.HELD):
            model.apply(await store.events.read_range(run_id, model.last_seq + 1))
            if model.engine_status is not None:
                return model
            if pooled:
                row = await store.queue.get(run_id)
                why = "not queued" if row is None else f"{row.outcome or 'stopped'}: {row.last_error or 'no error'}"
                raise MfmError(
                    ErrorInfo.new(
                        "worker_lost",
                        f"the worker pool stopped run {run_id} without finishing it ({why[:300]}); "
                        f"`mfm resume {run_id[:8]}` queues it again",
                    )
                )
            log = Path(store.run_dir(run_id)) / "worker.log"
            raise MfmError(
                ErrorInfo.new(
                    "worker_lost",
                    f"the worker of run {run_id} exited without finishing it ({_last_line(log)}); "
                    f"see {log}, then `mfm resume {run_id[:8]}`",
                )
            )
        await asyncio.sleep(poll)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no worker log"
    return lines[-1][:300] if lines else "empty worker log"


def _finish(model: RunModel, as_json: bool) -> int:
    if as_json:
        _echo_json(model.to_json(_now()))
    else:
        line = f"run {model.run_id} {model.status.label}"
        if model.error is not None:
            line += f": [{model.error[0]}] {model.error[1]}"
        click.echo(line)
    return EXIT_OK if model.status is RunStatus.COMPLETED else EXIT_FAILED


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


def _env(ctx: click.Context) -> Env:
    obj = ctx.find_root().obj
    assert isinstance(obj, Env)
    return obj


@cli.command()
@click.option("--theme", default=None, help="mfm-dark (default), mfm-light, mfm-16 or mfm-ascii.")
@click.option("--read-only", is_flag=True, help="Watch only: no start, cancel, resume.")
@click.pass_context
def tui(ctx: click.Context, theme: str | None, read_only: bool) -> int:
    """Open the terminal UI."""
    env = _env(ctx)
    from mfm_tui.app import make_app

    store = env.store
    registry = env.registry
    from mfm_tui.commands import store_writable

    offered: dict[str, Any] = {
        "read_only": read_only or not store_writable(store),  # a store we cannot write: watch only
        "plan_resolver": registry.plan_resolver(),
        "lease_probe": lambda run_id: lease_status_of(lease_state(store, run_id)),
        "registry": registry,
        "ops_modules": env.ops,
    }
    if theme:
        offered["theme"] = theme
    params = inspect.signature(make_app).parameters
    kwargs = {k: v for k, v in offered.items() if k in params}
    try:
        app = make_app(store, **kwargs)
    except ValueError as exc:  # e.g. an unknown theme
        raise CliError.new("usage", str(exc)) from None
    app.run()
    return EXIT_OK


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--theme", default=None, help="mfm-dark (default), mfm-light, mfm-16 or mfm-ascii.")
@click.option("--read-only", is_flag=True, help="Watch only: no start, cancel, resume.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, theme: str | None, read_only: bool) -> int:
    """Serve the terminal UI in a web browser (textual-serve), with this interpreter."""
    from mfm_tui.serve import serve as serve_app

    env = _env(ctx)
    serve_app(env.store_location, host=host, port=port, ops=env.ops, read_only=read_only, theme=theme, debug=env.debug)
    return EXIT_OK


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output, with each parameter JSON schema.")
@click.pass_context
def ops(ctx: click.Context, as_json: bool) -> int:
    """List the operations that can be started."""
    registry = _env(ctx).registry
    operations = registry.operations()
    if as_json:
        _echo_json([op.describe() for op in operations])
    else:
        if not operations:
            click.echo("no operations found (install a package with `mfm.operations` entry points or use --ops)")
        width = max((len(op.op_id) for op in operations), default=0)
        for op in operations:
            click.echo(f"{op.op_id:<{width}}  v{op.version}  {op.summary}")
            for name, fld in op.params_model.model_fields.items():
                default = "" if fld.is_required() else f" = {json.dumps(fld.get_default(call_default_factory=True))}"
                req = " (required)" if fld.is_required() else ""
                click.echo(f"{'':<{width}}    -p {name}{default}{req}")
    for problem in registry.load_errors:
        click.echo(f"warning: {problem}", err=True)
    return EXIT_OK


def _read_params_file(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as exc:
        raise CliError.new("params_file_unreadable", f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CliError.new("params_file_invalid", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError.new("params_file_invalid", f"{path} must hold a JSON object")
    return value


@cli.command()
@click.argument("op_id")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter (repeatable).")
@click.option("--params-file", type=str, default=None, metavar="FILE", help="Parameters as a JSON object.")
@click.option("--wait", is_flag=True, help="Wait until the run finishes (exit 1 if it fails or is cancelled).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def start(
    ctx: click.Context, op_id: str, params: tuple[str, ...], params_file: str | None, wait: bool, as_json: bool
) -> int:
    """Start OP_ID in a detached worker; print the run id."""
    env = _env(ctx)
    registry = env.registry
    op = registry.get(op_id)
    raw = _read_params_file(params_file)
    raw.update(parse_param_assignments(op, params))
    op.validate_params(raw)  # before the store is even opened: invalid input writes nothing
    prepared = _run(start_run(env.store, registry, op_id, raw, ops_modules=env.ops))
    if not wait:
        if as_json:
            _echo_json({"run_id": str(prepared.run_id), "manifest_id": str(prepared.manifest_id), "op_id": op_id})
        else:
            click.echo(str(prepared.run_id))
            click.echo(f"started {op_id}; watch it with `mfm show {prepared.run_id[:8]}`", err=True)
        return EXIT_OK
    if not as_json:
        click.echo(str(prepared.run_id))
    return _finish(_run(wait_for_run(env, prepared.run_id)), as_json)


_STATUS_CHOICES = [s.value for s in RunStatus]


@cli.command()
@click.option("--status", "statuses", multiple=True, type=click.Choice(_STATUS_CHOICES), help="Repeatable.")
@click.option("--op", "op_ids", multiple=True, help="Only runs of this operation (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs(ctx: click.Context, statuses: tuple[str, ...], op_ids: tuple[str, ...], as_json: bool) -> int:
    """List runs, most recent first."""
    env = _env(ctx)

    async def collect() -> list[RunModel]:
        out = []
        listed = list(await env.store.events.list_runs())
        if is_pooled(env.store):  # queued runs have no events yet
            listed += [r for r in await env.store.queue.waiting() if r not in set(listed)]
        every = {RunId(run_id): await load_model(env, RunId(run_id)) for run_id in listed}
        for model in every.values():  # a recovery run links back to the failed run it continues
            source = every.get(model.recovered_from) if model.recovered_from is not None else None
            if source is not None:
                source.recovered_by = model.run_id
        for model in every.values():
            if statuses and model.status.value not in statuses:
                continue
            if op_ids and (model.op_id or "") not in op_ids:
                continue
            out.append(model)
        out.sort(key=lambda m: (m.started_millis or 0, str(m.run_id)), reverse=True)
        return out

    models = _run(collect())
    hosts = {m.run_id: lease_state(env.store, m.run_id).host for m in models}
    now = _now()
    if as_json:
        _echo_json(
            [
                {
                    "run_id": str(m.run_id),
                    "op_id": m.op_id,
                    "status": m.status.value,
                    "started_millis": m.started_millis,
                    "ended_millis": m.ended_millis,
                    "duration_millis": m.duration_millis(now),
                    "current_state": None if m.current_state is None else str(m.current_state.state_id),
                    "error": None if m.error is None else {"code": m.error[0], "message": m.error[1]},
                    "done": m.done,
                    "total": m.total,
                    "lease": m.lease.value,
                    "host": hosts.get(m.run_id),
                    "recovered_from": None if m.recovered_from is None else str(m.recovered_from),
                    "recovered_by": None if m.recovered_by is None else str(m.recovered_by),
                }
                for m in models
            ]
        )
        return EXIT_OK
    if not models:
        click.echo("no runs yet: try `mfm start demo_flaky`")
        return EXIT_OK
    rows = [("RUN", "OP", "STATUS", "STARTED", "DURATION", "STATE", "DONE", "HOST")]
    for m in models:
        rows.append(
            (
                m.short_id,
                str(m.op_id or "?"),
                _status_text(m, now),
                _ts(m.started_millis),
                _dur(m.duration_millis(now)),
                _state_line(m),
                f"{m.done}/{m.total}",
                hosts.get(m.run_id) or "-",
            )
        )
    _print_table(rows)
    return EXIT_OK


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@cli.command()
@click.argument("run")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, run: str, as_json: bool) -> int:
    """Show one run: status, states, attempts, errors."""
    env = _env(ctx)

    async def go() -> RunModel:
        return await load_model(env, await resolve_run_id(env.store, run))

    model = _run(go())
    now = _now()
    info = lease_state(env.store, model.run_id)
    if as_json:
        out = model.to_json(now)
        out["host"] = info.host
        _echo_json(out)
        return EXIT_OK
    click.echo(f"run       {model.run_id}")
    click.echo(f"op        {model.op_id or '?'}")
    click.echo(f"status    {_status_text(model, now)}")
    if info.action == "queued" and info.pid is None:
        click.echo("worker    queued for the worker pool")
    elif model.lease.value in ("held", "stale"):
        click.echo(f"worker    {info.state.value} (pid {info.pid} on {info.host})")
    if info.host:
        click.echo(f"host      {info.host}")
    click.echo(f"started   {_ts(model.started_millis)}   duration {_dur(model.duration_millis(now))}")
    click.echo(f"progress  {model.done}/{model.total} states   {model.last_seq} events")
    if model.error is not None:
        click.echo(f"error     [{model.error[0]}] {model.error[1]}")
    if model.final_snapshot_id:
        click.echo(f"final     {model.final_snapshot_id}")
    click.echo("")
    rows = [("STATE", "STATUS", "ATTEMPT", "FACTS", "ERROR")]
    for sv in model.states.values():
        err = "" if sv.error is None else f"[{sv.error[0]}] {sv.error[1]}"
        status = sv.status.value
        if sv.not_before_millis is not None and sv.status.value == "retrying":
            status += f" (in {_dur(max(0, sv.not_before_millis - now))})"
        rows.append((str(sv.state_id), status, sv.attempt_label, str(len(sv.facts)), err[:80]))
    _print_table(rows)
    for note in model.anomalies:
        click.echo(f"note: {note}", err=True)
    return EXIT_OK


def _event_summary(env: EventEnvelope) -> str:
    ev = env.event
    if isinstance(ev, DomainEvent):
        text = json.dumps(ev.payload, sort_keys=True, ensure_ascii=False)
        return text if len(text) <= 100 else text[:99] + "…"
    if isinstance(ev, StateFailed):
        kind = "retryable" if ev.error.retryable else "final"
        return f"{ev.state_id} [{ev.error.code}] {ev.error.message} ({kind})"
    if isinstance(ev, RunCompleted):
        return f"{ev.status.value} final={ev.final_snapshot_id or '-'}"
    data = ev.model_dump(mode="json")
    return " ".join(f"{k}={v}" for k, v in data.items())


def _print_event(env: EventEnvelope, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(encode_envelope(env).decode("utf-8") + "\n")
        sys.stdout.flush()
    else:
        ts = "-" if env.ts_millis is None else datetime.fromtimestamp(env.ts_millis / 1000).strftime("%H:%M:%S.%f")[:-3]
        click.echo(f"{env.seq:>6}  {ts}  {env.kind:<16}  {_event_summary(env)}")


@cli.command()
@click.argument("run")
@click.option("--from", "from_seq", type=click.IntRange(min=1), default=1, help="First seq to print.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run finishes.")
@click.option("--json", "as_json", is_flag=True, help="One wire-format envelope per line.")
@click.pass_context
def events(ctx: click.Context, run: str, from_seq: int, follow: bool, as_json: bool) -> int:
    """Print a run's events."""
    env = _env(ctx)

    async def go() -> None:
        store = env.store
        run_id = await resolve_run_id(store, run)
        nxt = from_seq
        while True:
            batch = await store.events.read_range(run_id, nxt)
            for e in batch:
                _print_event(e, as_json)
            if batch:
                nxt = batch[-1].seq + 1
            if not follow or any(isinstance(e.event, RunCompleted) for e in batch):
                return
            if not batch and await _finished(store, run_id):
                return
            await asyncio.sleep(0.2)

    _run(go())
    return EXIT_OK


async def _finished(store: Any, run_id: RunId) -> bool:
    head = await store.events.head_seq(run_id)
    if head == 0:
        return False
    last = await store.events.read_range(run_id, head, head)
    return bool(last) and isinstance(last[-1].event, RunCompleted)


@cli.command()
@click.argument("artifact_id")
@click.option("--raw", is_flag=True, help="The stored bytes, unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Id, kind, size and the decoded JSON content (or null).")
@click.pass_context
def artifact(ctx: click.Context, artifact_id: str, raw: bool, as_json: bool) -> int:
    """Print an artifact (JSON pretty-printed unless --raw)."""
    env = _env(ctx)
    try:
        aid = ArtifactId(artifact_id.strip().lower())
    except ValueError:
        raise CliError.new("invalid_artifact_id", f"{artifact_id!r} is not an artifact id (64 hex digits)") from None
    data = _run(env.store.artifacts.get(aid))
    if as_json:
        kind_of = getattr(env.store.artifacts, "kind_of", None)
        kind = _run(kind_of(aid)) if kind_of is not None else None
        try:
            content = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            content = None
        wire_kind = None if kind is None else kind.to_wire()
        _echo_json({"artifact_id": str(aid), "bytes": len(data), "kind": wire_kind, "content": content})
        return EXIT_OK
    if raw:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    try:
        _echo_json(json.loads(data))
    except (ValueError, UnicodeDecodeError):
        click.echo(f"{len(data)} bytes of binary data (use --raw)")
    return EXIT_OK


@cli.command()
@click.argument("run")
@click.option("--wait", is_flag=True, help="Wait until the run finishes.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def resume(ctx: click.Context, run: str, wait: bool, as_json: bool) -> int:
    """Resume a run whose worker was lost (or that stopped); refuses if a worker is alive.

    A run that FAILED is final; resuming it starts a recovery run (printed) that carries its
    completed states over and continues at the failed state, once you have fixed the cause.
    """
    env = _env(ctx)

    async def go() -> Any:
        run_id = await resolve_run_id(env.store, run)
        return await resume_run(env.store, run_id, ops_modules=env.ops)

    outcome = _run(go())
    if outcome.recovery_run_id is not None:
        new_id = outcome.recovery_run_id
        if not wait:
            if as_json:
                _echo_json(
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
        return _finish(_run(wait_for_run(env, new_id)), as_json)
    if outcome.finished:
        model = _run(load_model(env, outcome.run_id, with_plan=False))
        if not as_json:
            note = f"run {outcome.run_id} already finished ({model.status.label}); nothing to resume"
            click.echo(note, err=True)
        return _finish(model, as_json) if wait or as_json else EXIT_OK
    if not wait:
        if as_json:
            _echo_json({"run_id": str(outcome.run_id), "worker_pid": outcome.spawned_pid})
        elif outcome.spawned_pid is None:
            click.echo(f"resuming run {outcome.run_id} (queued for the worker pool)")
        else:
            click.echo(f"resuming run {outcome.run_id} (worker pid {outcome.spawned_pid})")
        return EXIT_OK
    return _finish(_run(wait_for_run(env, outcome.run_id)), as_json)


@cli.command()
@click.argument("run")
@click.option("--reason", default="cancelled by operator", help="Recorded with the request.")
@click.pass_context
def cancel(ctx: click.Context, run: str, reason: str) -> int:
    """Ask a run to stop (its worker cancels within a second)."""
    env = _env(ctx)

    async def go() -> tuple[RunId, bool]:
        run_id = await resolve_run_id(env.store, run)
        return run_id, await cancel_run(env.store, run_id, reason, ops_modules=env.ops)

    run_id, spawned = _run(go())
    extra = " (no live worker: a worker was started to close it)" if spawned else ""
    if spawned and is_pooled(env.store):
        extra = " (no worker held it: queued for the worker pool to close it)"
    click.echo(f"cancel requested for run {run_id}{extra}")
    return EXIT_OK


@cli.command()
@click.argument("run")
@click.option("--wait", is_flag=True, help="Wait for the verdict.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def replay(ctx: click.Context, run: str, wait: bool, as_json: bool) -> int:
    """Replay a run from its recorded facts as a new run and compare the outcome."""
    env = _env(ctx)

    async def go() -> tuple[RunId, RunId]:
        run_id = await resolve_run_id(env.store, run)
        return run_id, await replay_run(env.store, run_id, ops_modules=env.ops)

    source, replay_id = _run(go())
    if not wait:
        if as_json:
            _echo_json({"source_run_id": str(source), "replay_run_id": str(replay_id)})
        else:
            click.echo(str(replay_id))
            click.echo(f"replaying {source} as run {replay_id}; `mfm replay {source[:8]} --wait` waits", err=True)
        return EXIT_OK
    model = _run(wait_for_run(env, replay_id))
    verdict = _read_verdict(env, replay_id)
    if as_json:
        _echo_json(verdict)
    else:
        text = verdict["verdict"]
        if verdict.get("diverged_state"):
            text += f" at {verdict['diverged_state']}"
        click.echo(f"replay of {source} as {replay_id}: {text} ({model.status.label})")
    return EXIT_OK if verdict["verdict"] == "deterministic" else EXIT_FAILED


def _read_verdict(env: Env, replay_id: RunId, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        value = _run(read_verdict(env.store, replay_id))
        if value is not None:
            return value
        if time.monotonic() > deadline or lease_state(env.store, replay_id).state is not LeaseState.HELD:
            value = _run(read_verdict(env.store, replay_id))
            if value is not None:
                return value
            raise MfmError(ErrorInfo.new("worker_failed", f"the replay worker wrote no verdict for run {replay_id}"))
        time.sleep(0.05)


@cli.command()
@click.argument("runs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--repair", is_flag=True, help="Move torn tails and temp files into STORE/quarantine/ (never deletes).")
@click.pass_context
def doctor(ctx: click.Context, runs: tuple[str, ...], as_json: bool, repair: bool) -> int:
    """Check the store (or only RUNS) without changing it: event files, attempt envelopes, artifacts, leases.

    Exit 0 when clean, 1 when something is wrong (each finding has a code), 3 when the store or a run is not found.
    """
    from engine.doctor import check_store, repair_store, resolve_runs

    root = _env(ctx).store_path
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
        _echo_json(out)
    else:
        click.echo(
            f"store {root}: {report.runs_checked} run(s), {report.events_checked} event(s), "
            f"{report.artifacts_checked} artifact(s) checked"
        )
        for finding in report.findings:
            click.echo(finding.one_line())
        for moved in report.moved:
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


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(ctx: click.Context, args: tuple[str, ...]) -> int:
    """Execute one run in this process: `mfm worker run|resume|replay …` (normally spawned detached).

    On a database store: `mfm worker serve --store postgresql://… [--concurrency N] [--host-name NAME]`
    executes queued runs until stopped (SIGTERM hands its runs over to the other workers)."""
    from engine.workers import main as worker_main

    env = _env(ctx)
    argv = ["--store", str(env.store_location)]
    for module in env.ops:
        argv += ["--ops", module]
    return worker_main([*argv, *args])


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
