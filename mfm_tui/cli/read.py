"""Read commands of ``mfm``: ops, runs, show, events and artifact (they never change a run)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any

import click

from engine.errors import MfmError
from engine.events import (
    DOMAIN_EVENT_CHILD_RUN_SPAWNED,
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    StateFailed,
    encode_envelope,
)
from engine.ids import RunId
from engine.stores import RunSummaries
from engine.workers import EXIT_DAMAGED, EXIT_OK, lease_state, list_run_ids, max_orphan_recoveries, worker_log_tail
from mfm_tui.cli.common import (
    CliError,
    duration_text,
    echo_json,
    env_of,
    format_timestamp,
    link_recoveries,
    load_model,
    now_millis,
    print_table,
    replay_source,
    resolve_artifact_id,
    resolve_run_id,
    run_sync,
    state_line,
    status_text,
)
from mfm_tui.cli.liveness import lost_worker_error, nobody_runs
from mfm_tui.run_model import (
    RunDisplayStatus,
    RunModel,
    child_summary,
    crash_loop_json,
    link_children,
    run_json,
    tree_order,
)
from mfm_tui.time_format import parse_duration

__all__ = ["artifact", "events", "ops", "runs", "show"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output, with each parameter JSON schema.")
@click.pass_context
def ops(ctx: click.Context, as_json: bool) -> int:
    """List the operations that can be started."""
    registry = env_of(ctx).registry
    operations = registry.operations()
    if as_json:
        echo_json([op.describe() for op in operations])
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


_STATUS_CHOICES = [s.value for s in RunDisplayStatus]


@click.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(_STATUS_CHOICES),
    help="Only runs in this status (repeatable).",
)
@click.option("--op", "op_ids", multiple=True, help="Only runs of this operation (repeatable).")
@click.option(
    "--since",
    "since",
    metavar="DURATION",
    help="Only runs started (or asked to start) in the last DURATION: 90s, 15m, 2h, 1d, 1h30m.",
)
@click.option("--limit", "limit", type=click.IntRange(min=1), metavar="N", help="At most N runs (the most recent).")
@click.option("--tree", is_flag=True, help="Nest child runs under their parent, with a summary of its children.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per run (status, error, host, recovered_from/by, replay_of, parent_run_id, children).",
)
@click.pass_context
def runs(
    ctx: click.Context,
    statuses: tuple[str, ...],
    op_ids: tuple[str, ...],
    since: str | None,
    limit: int | None,
    tree: bool,
    as_json: bool,
) -> int:
    """List runs, most recent first."""
    env = env_of(ctx)
    try:
        cutoff = None if since is None else now_millis() - parse_duration(since)
    except ValueError as exc:
        raise CliError.new("invalid_duration", f"--since: {exc}") from None

    async def collect() -> tuple[list[RunModel], dict[RunId, RunModel]]:
        max_orphan_recoveries()  # a bad $MFM_MAX_ORPHAN_RECOVERIES is an error even with no run to show
        out = []
        listed = await list_run_ids(env.store)  # with the runs that have no events yet (queued, never started)
        events = env.store.events
        # A store that keeps summaries (the filesystem store's runs index): one read, not every event of every run.
        summaries = (await events.run_summaries())[1] if isinstance(events, RunSummaries) else {}
        every = {
            RunId(run_id): await load_model(env, RunId(run_id), summary=summaries.get(RunId(run_id)))
            for run_id in listed
        }
        for model in every.values():  # a recovery run links back to the failed run it continues
            source = every.get(model.recovered_from) if model.recovered_from is not None else None
            if source is not None:
                source.recovered_by = model.run_id
        link_children(every)  # a child's parent (its stream does not name it) and the parent's lease
        for model in every.values():
            if statuses and model.status.value not in statuses:
                continue
            if op_ids and (model.op_id or "") not in op_ids:
                continue
            if cutoff is not None and (model.started_millis or model.requested_millis or 0) < cutoff:
                continue
            out.append(model)
        out.sort(key=lambda m: (m.started_millis or m.requested_millis or 0, str(m.run_id)), reverse=True)
        return (out[:limit] if limit is not None else out), every

    models, every = run_sync(collect())
    hosts = {m.run_id: lease_state(env.store, m.run_id).host for m in models}
    replays = {m.run_id: run_sync(replay_source(env.store, m.run_id)) for m in models} if as_json else {}
    now = now_millis()
    if as_json:
        echo_json(
            [
                {
                    "run_id": str(m.run_id),
                    "op_id": m.op_id,
                    "status": _status_value(m),
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
                    "replay_of": replays.get(m.run_id),
                    "crash_loop": crash_loop_json(m),
                    "parent_run_id": None if m.parent_run_id is None else str(m.parent_run_id),
                    "children": [str(c) for c in m.children],
                }
                for m in models
            ]
        )
        return _damaged_exit(models)
    if not models:
        click.echo("no runs yet: try `mfm start demo_flaky`")
        return EXIT_OK
    header = ("RUN", "OP", "STATUS", "STARTED", "DURATION", "STATE", "DONE", "HOST")
    rows: list[tuple[str, ...]] = [(*header, "CHILDREN") if tree else header]
    ordered = tree_order(models) if tree else [(m, 0) for m in models]
    for i, (m, depth) in enumerate(ordered):
        last_child = depth and (i + 1 == len(ordered) or ordered[i + 1][1] == 0)
        row = (
            (("└─ " if last_child else "├─ ") if depth else "") + m.short_id,
            str(m.op_id or "?"),
            status_text(m, now),
            format_timestamp(m.started_millis or m.requested_millis),
            duration_text(m.duration_millis(now)),
            state_line(m),
            f"{m.done}/{m.total}",
            hosts.get(m.run_id) or hosts.get(m.parent_run_id or m.run_id) or "-",
        )
        rows.append((*row, _children_cell(m, every)) if tree else row)
    print_table(rows)
    return _damaged_exit(models)


def _damaged_exit(models: list[RunModel]) -> int:
    """After a listing: one ``error[run_log_corrupt]`` line per damaged run on stderr, and exit 6 if there is one."""
    damaged = [m for m in models if _status_value(m) == "damaged"]
    for m in damaged:
        assert m.load_error is not None
        click.echo(f"error[{m.load_error[0]}]: run {m.run_id}: {m.load_error[1]}", err=True)
    return EXIT_DAMAGED if damaged else EXIT_OK


def _children_cell(model: RunModel, every: dict[RunId, RunModel]) -> str:
    """A parent's children: ``3 children: 2 ✓ 1 ✗`` and the worst status when it is not completed."""
    summary = child_summary(model, every)
    if not summary.total:
        return ""
    worst = summary.worst
    tail = "" if worst is None or worst is RunDisplayStatus.COMPLETED else f" (worst: {worst.label})"
    return summary.badge + tail


@click.command()
@click.argument("run")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="The run as JSON: states, attempts, lease, host, recovered_from/recovered_by/replay_of.",
)
@click.pass_context
def show(ctx: click.Context, run: str, as_json: bool) -> int:
    """Show one run: status, states, attempts, errors."""
    env = env_of(ctx)

    async def go() -> tuple[RunModel, dict[RunId, RunModel]]:
        model = await load_model(env, await resolve_run_id(env.store, run))
        if model.recovered_from is None or model.recovered_by is None:  # the links `mfm runs` shows, both ways
            await link_recoveries(env, model)
        related = {model.run_id: model}
        for child in model.children:
            if await env.store.events.head_seq(child) > 0:
                related[child] = await load_model(env, child)
        parent = await _parent_of(env, model.run_id)
        if parent is not None:
            related[parent] = await load_model(env, parent, with_plan=False)
        link_children(related)
        return model, related

    model, related = run_sync(go())
    now = now_millis()
    info = lease_state(env.store, model.run_id)
    unattended = model.status in (RunDisplayStatus.CRASH_LOOPING, RunDisplayStatus.NOT_STARTED)
    log = run_sync(worker_log_tail(env.store, model.run_id, _LOG_LINES)) if unattended else []
    if as_json:
        out = run_json(model, now)
        out["host"] = info.host
        out["recovered_from"] = None if model.recovered_from is None else str(model.recovered_from)
        out["recovered_by"] = None if model.recovered_by is None else str(model.recovered_by)
        out["replay_of"] = run_sync(replay_source(env.store, model.run_id))
        if unattended:
            out["worker_log"] = log
        echo_json(out)
        return _damaged_exit([model])  # what precedes the damage is printed; the error line says where, exit 6
    click.echo(f"run       {model.run_id}")
    click.echo(f"op        {model.op_id or '?'}")
    click.echo(f"status    {status_text(model, now)}")
    if info.action == "queued" and info.pid is None:
        click.echo("worker    queued for the worker pool")
    elif model.lease.value in ("held", "stale"):
        click.echo(f"worker    {info.state.value} (pid {info.pid} on {info.host})")
    if info.host:
        click.echo(f"host      {info.host}")
    click.echo(
        f"started   {format_timestamp(model.started_millis)}   duration {duration_text(model.duration_millis(now))}"
    )
    click.echo(f"progress  {model.done}/{model.total} states   {model.last_seq} events")
    if model.error is not None:
        click.echo(f"error     [{model.error[0]}] {model.error[1]}")
    if model.final_snapshot_id:
        click.echo(f"final     {model.final_snapshot_id}")
    if model.requested_millis is not None and model.started_millis is None:
        click.echo(f"asked     {format_timestamp(model.requested_millis)} (no RunStarted yet)")
    for line in _unattended_lines(model, log):
        click.echo(line)
    if model.parent_run_id is not None:
        parent = related[model.parent_run_id]
        click.echo(f"parent    {parent.run_id} ({parent.op_id or '?'}, {parent.status_label})")
    if model.children:
        click.echo(f"children  {child_summary(model, related).badge}")
        for ref in model.children.values():
            child = related.get(ref.run_id)
            where = "" if ref.state_id is None else f"  from {ref.state_id}"
            shown = child.status_label if child is not None else (ref.status or "unknown").lower()
            click.echo(f"  {ref.run_id}  {shown}{where}")
    click.echo("")
    rows = [("STATE", "STATUS", "ATTEMPT", "FACTS", "ERROR")]
    for sv in model.states.values():
        err = "" if sv.error is None else f"[{sv.error[0]}] {sv.error[1]}"
        status = model.state_status_text(sv)
        if sv.not_before_millis is not None and status == "retrying":
            status += f" (in {duration_text(max(0, sv.not_before_millis - now))})"
        rows.append((str(sv.state_id), status, sv.attempt_label, str(len(sv.facts)), err[:80]))
    print_table(rows)
    for note in model.anomalies:
        click.echo(f"note: {note}", err=True)
    return _damaged_exit([model])


async def _parent_of(env: Any, run_id: RunId) -> RunId | None:
    """The run whose ``child_run_spawned`` names ``run_id`` (a child's own stream does not name its parent)."""
    for other in await list_run_ids(env.store):
        if other == run_id:
            continue
        for envelope in await env.store.events.read_range(RunId(other), 1):
            ev = envelope.event
            if (
                isinstance(ev, DomainEvent)
                and ev.name == DOMAIN_EVENT_CHILD_RUN_SPAWNED
                and isinstance(ev.payload, dict)
                and ev.payload.get("child_run_id") == str(run_id)
            ):
                return RunId(other)
    return None


_LOG_LINES = 8
"""Worker log lines ``mfm show`` prints for a run nobody will carry on by itself."""


def _unattended_lines(model: RunModel, log: list[str]) -> list[str]:
    """What ``mfm show`` adds for a run that needs an operator: why, what to do, and the worker log's last lines."""
    short = model.run_id[:8]
    loop = model.crash_loop
    if model.status is RunDisplayStatus.CRASH_LOOPING and loop is not None:
        lines = [
            f"crash     {loop.recoveries} consecutive orphan recoveries at {loop.state_id} "
            f"(limit {model.crash_loop_limit}): its worker died there each time; nothing takes it over by itself",
            f"next      fix the cause, then `mfm resume {short}` (runs it again and resets the count)",
        ]
    elif model.status is RunDisplayStatus.NOT_STARTED:
        lines = [
            "why       its worker died before writing RunStarted",
            f"next      `mfm resume {short}` starts it again; `mfm discard {short}` removes it",
        ]
    else:
        return []
    lines.append("log       " + ("(last lines of its worker log)" if log else "(its worker left no log)"))
    lines += [f"  {line}" for line in log]
    return lines


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


@click.command()
@click.argument("run")
@click.option("--from", "from_seq", type=click.IntRange(min=1), default=1, help="First seq to print.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new events until the run finishes (exit 1, worker_lost, if its worker dies).",
)
@click.option("--json", "as_json", is_flag=True, help="One wire-format envelope per line.")
@click.pass_context
def events(ctx: click.Context, run: str, from_seq: int, follow: bool, as_json: bool) -> int:
    """Print a run's events."""
    env = env_of(ctx)

    async def go() -> None:
        store = env.store
        run_id = await resolve_run_id(store, run)
        nxt = from_seq
        while True:
            batch = await store.events.read_range(run_id, nxt)
            for e in batch:
                _print_event(e, as_json)
            damage = getattr(batch, "damage", None)  # the run log is damaged after these: say so, exit 6
            if isinstance(damage, MfmError):
                raise damage
            if batch:
                nxt = batch[-1].seq + 1
            if not follow or any(isinstance(e.event, RunCompleted) for e in batch):
                return
            if not batch and await _finished(store, run_id):
                return
            if not batch and await nobody_runs(store, run_id):
                # No worker will append more (it died, or the run never started): a last read, then say so and
                # how to go on, rather than follow forever.
                for e in await store.events.read_range(run_id, nxt):
                    _print_event(e, as_json)
                    if isinstance(e.event, RunCompleted):
                        return
                raise await lost_worker_error(store, run_id)
            await asyncio.sleep(0.2)

    run_sync(go())
    return EXIT_OK


async def _finished(store: Any, run_id: RunId) -> bool:
    head = await store.events.head_seq(run_id)
    if head == 0:
        return False
    last = await store.events.read_range(run_id, head, head)
    return bool(last) and isinstance(last[-1].event, RunCompleted)


@click.command()
@click.argument("artifact_id")
@click.option("--raw", is_flag=True, help="The stored bytes, unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Id, kind, size and the decoded JSON content (or null).")
@click.pass_context
def artifact(ctx: click.Context, artifact_id: str, raw: bool, as_json: bool) -> int:
    """Print an artifact (JSON pretty-printed unless --raw). ARTIFACT_ID may be a unique prefix (like run ids)."""
    env = env_of(ctx)
    aid = run_sync(resolve_artifact_id(env.store, artifact_id))
    data = run_sync(env.store.artifacts.get(aid))
    if as_json:
        kind_of = getattr(env.store.artifacts, "kind_of", None)
        kind = run_sync(kind_of(aid)) if kind_of is not None else None
        try:
            content = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            content = None
        wire_kind = None if kind is None else kind.to_wire()
        echo_json({"artifact_id": str(aid), "bytes": len(data), "kind": wire_kind, "content": content})
        return EXIT_OK
    if raw:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    try:
        echo_json(json.loads(data))
    except (ValueError, UnicodeDecodeError):
        click.echo(f"{len(data)} bytes of binary data (use --raw)")
    return EXIT_OK


def _status_value(model: RunModel) -> str:
    """The run's status; ``damaged`` when its run log is damaged (``run_log_corrupt``: read up to the damage)."""
    return "damaged" if model.damaged else model.status.value
