"""The CLI to match the TUI (issue 14): ``-h``, examples and ``--json`` help everywhere, ``mfm runs --limit --since
--status --op``, artifact id prefixes, and ``show --json`` with the links ``runs --json`` carries."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import click
import pytest
from cli_helpers import Mfm, Result

from engine._kinds import ArtifactKind
from engine.events import DomainEvent, EventEnvelope, RunCompleted, RunStarted, RunStatus
from engine.ids import ArtifactId, OpId, RunId
from mfm_tui.cli import cli

ZERO = ArtifactId("0" * 64)
HOUR = 3_600_000


def _one_error(res: Result, code: int, error_code: str) -> str:
    assert res.code == code, (res.code, res.out, res.err)
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(f"error[{error_code}]: "), res.err_lines[0]
    assert "Traceback" not in res.err
    return res.err_lines[0]


def _seed(
    store: Path, runs: list[tuple[str, str, int, RunStatus | None]], recovered: dict[str, str] | None = None
) -> None:
    """Runs with a RunStarted at ``ts`` (and a RunCompleted when a status is given), written through the store."""
    from engine.stores.fs import FsStore

    async def go() -> None:
        fs = FsStore(store)
        for rid, op, ts, status in runs:
            events = [RunStarted(op_id=OpId(op), manifest_id=ZERO, initial_snapshot_id=ZERO)]
            if recovered and rid in recovered:
                events.append(DomainEvent(name="recovered_from", payload={"source_run_id": recovered[rid]}))
            if status is not None:
                events.append(RunCompleted(status=status, final_snapshot_id=ZERO))
            envs = [
                EventEnvelope(run_id=RunId(rid), seq=i + 1, ts_millis=ts + i, event=ev) for i, ev in enumerate(events)
            ]
            await fs.events.append(RunId(rid), 0, envs)
        fs.close()

    asyncio.run(go())


def _names() -> list[str]:
    return cli.list_commands(click.Context(cli))


def _commands() -> list[tuple[str, click.Command]]:  # (the group loads its command modules on demand)
    ctx = click.Context(cli)
    return [(name, cmd) for name in _names() if (cmd := cli.get_command(ctx, name)) is not None]


# -- help ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _names())
def test_every_command_takes_dash_h_and_shows_an_example(mfm: Mfm, name: str) -> None:
    res = mfm(name, "-h")
    assert res.code == 0, res.err
    assert "usage" in res.out.lower()
    if name != "worker":  # (argparse prints the worker's own help; its example is in `mfm -h`)
        assert "Example" in res.out and "  mfm " in res.out.split("Example", 1)[1]
        assert res.out == mfm(name, "--help").out


def test_the_group_takes_dash_h_with_examples(mfm: Mfm) -> None:
    res = mfm("-h")
    assert res.code == 0 and "Examples:" in res.out and "mfm runs --status failed" in res.out


def test_every_json_option_has_help_text() -> None:
    found = 0
    for name, cmd in _commands():
        for param in cmd.params:
            if isinstance(param, click.Option) and "--json" in param.opts:
                found += 1
                assert param.help, f"mfm {name} --json has no help"
    assert found >= 8


# -- runs --limit --since --status --op ---------------------------------------------------------------------------

A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"
C = "cccccccc-0000-4000-8000-000000000003"
D = "dddddddd-0000-4000-8000-000000000004"


def _seed_four(mfm: Mfm) -> None:
    now = int(time.time() * 1000)
    _seed(
        mfm.store,
        [
            (A, "demo_big", now - 50 * HOUR, RunStatus.COMPLETED),  # two days ago
            (B, "demo_flaky", now - 3 * HOUR, RunStatus.FAILED),
            (C, "demo_big", now - HOUR // 2, RunStatus.FAILED),
            (D, "demo_big", now - HOUR // 4, RunStatus.COMPLETED),
        ],
    )


def _ids(res: Result) -> list[str]:
    assert res.code == 0, res.err
    return [r["run_id"] for r in res.json()]


def test_runs_since_limit_status_op(mfm: Mfm) -> None:
    _seed_four(mfm)
    assert _ids(mfm("runs", "--json")) == [D, C, B, A]
    assert _ids(mfm("runs", "--since", "1h", "--json")) == [D, C]
    assert _ids(mfm("runs", "--since", "1d", "--json")) == [D, C, B]
    assert _ids(mfm("runs", "--since", "2h30m", "--json")) == [D, C]
    assert _ids(mfm("runs", "--limit", "2", "--json")) == [D, C]
    assert _ids(mfm("runs", "--status", "failed", "--json")) == [C, B]
    assert _ids(mfm("runs", "--status", "failed", "--status", "completed", "--limit", "3", "--json")) == [D, C, B]
    assert _ids(mfm("runs", "--op", "demo_big", "--since", "1w", "--json")) == [D, C, A]
    assert _ids(mfm("runs", "--op", "demo_big", "--status", "failed", "--json")) == [C]
    table = mfm("runs", "--limit", "1")
    assert table.code == 0 and D[:8] in table.out and C[:8] not in table.out


def test_runs_bad_since_and_limit_are_usage_errors(mfm: Mfm) -> None:
    _seed_four(mfm)
    line = _one_error(mfm("runs", "--since", "yesterday"), 2, "invalid_duration")
    assert "yesterday" in line and "1h30m" in line
    _one_error(mfm("runs", "--since", "5"), 2, "invalid_duration")
    _one_error(mfm("runs", "--limit", "0"), 2, "usage")
    _one_error(mfm("runs", "--status", "bogus"), 2, "usage")


# -- show --json links --------------------------------------------------------------------------------------------


def test_show_json_carries_recovery_and_replay_links(mfm: Mfm) -> None:
    now = int(time.time() * 1000)
    _seed(mfm.store, [(A, "demo_big", now - HOUR, RunStatus.FAILED), (B, "demo_big", now, None)], recovered={B: A})
    failed = mfm("show", A[:8], "--json")
    assert failed.code == 0, failed.err
    assert (failed.json()["recovered_by"], failed.json()["recovered_from"], failed.json()["replay_of"]) == (
        B,
        None,
        None,
    )
    recovery = mfm("show", B[:8], "--json").json()
    assert (recovery["recovered_from"], recovery["recovered_by"]) == (A, None)
    listed = {r["run_id"]: r for r in mfm("runs", "--json").json()}
    for key in ("recovered_from", "recovered_by", "replay_of"):
        assert listed[A][key] == failed.json()[key]
        assert listed[B][key] == recovery[key]


def test_show_and_runs_json_name_the_replayed_run(mfm: Mfm) -> None:
    res = mfm("start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", "--json")
    assert res.code == 0, res.err
    source = res.json()["run_id"]
    replay = mfm("replay", source[:8], "--wait", "--json")
    assert replay.code == 0, replay.err
    replay_id = replay.json()["replay_run_id"]
    assert mfm("show", replay_id[:8], "--json").json()["replay_of"] == source
    assert mfm("show", source[:8], "--json").json()["replay_of"] is None
    listed = {r["run_id"]: r for r in mfm("runs", "--json").json()}
    assert listed[replay_id]["replay_of"] == source and listed[source]["replay_of"] is None


# -- artifact prefixes --------------------------------------------------------------------------------------------


def _put_artifacts(store: Path) -> tuple[ArtifactId, ArtifactId, ArtifactId]:
    """Three artifacts: two whose ids share their first three hex digits, and one more."""
    from engine.stores.fs import FsStore

    by_prefix: dict[str, bytes] = {}
    pair: tuple[bytes, bytes] | None = None
    n = 0
    while pair is None:
        data = json.dumps({"n": n}).encode()
        key = hashlib.sha256(data).hexdigest()[:3]
        if key in by_prefix:
            pair = (by_prefix[key], data)
        by_prefix[key] = data
        n += 1
    other = json.dumps({"other": True}).encode()

    async def go() -> tuple[ArtifactId, ArtifactId, ArtifactId]:
        fs = FsStore(store)
        ids = [await fs.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, d) for d in (*pair, other)]
        fs.close()
        return ids[0], ids[1], ids[2]

    return asyncio.run(go())


def test_artifact_ids_take_unique_prefixes(mfm: Mfm) -> None:
    first, second, other = _put_artifacts(mfm.store)
    shared = first[:3]
    assert second.startswith(shared) and not other.startswith(shared)
    res = mfm("artifact", first[:8], "--json")
    assert res.code == 0, res.err
    assert res.json()["artifact_id"] == first
    assert mfm("artifact", other[:4].upper()).json() == {"other": True}
    line = _one_error(mfm("artifact", shared), 2, "artifact_id_ambiguous")
    assert first[:12] in line and second[:12] in line
    unknown = next(
        p for p in (f"{i:04x}" for i in range(65536)) if not any(a.startswith(p) for a in (first, second, other))
    )
    _one_error(mfm("artifact", unknown), 3, "artifact_not_found")
    _one_error(mfm("artifact", "xyz"), 2, "invalid_artifact_id")
    _one_error(mfm("artifact", "a" * 65), 2, "invalid_artifact_id")
