"""Security of the filesystem store, the command line and the exec transport.

- every store folder is 0700 and every store file 0600 (whatever the umask), including the files the workers and
  the CLI write (lease, worker.log, cancel request, replay verdict);
- ids crafted for path traversal (``..``, absolute paths, NUL, overlong, separators, uppercase) are refused by every
  store entry point and by the CLI before any path is built: no new path appears anywhere under the test folder;
- a symlink planted where an artifact, an event file or a cancel request should be is refused, never followed (the
  file it points to is neither read as store data nor written);
- the exec transport's default allowlist admits nothing outside ``/nix/store/``, and a path is resolved (symlinks,
  ``..``) before it is checked, by whole path components.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine._kinds import ArtifactKind
from engine.errors import IoError, MfmError, StorageError
from engine.events import DomainEvent, EventEnvelope, RunStarted
from engine.exec_transport import ExecTransportFactory, path_is_under
from engine.hashing import artifact_id_for_bytes
from engine.ids import OpId, RunId
from engine.stores.fs import FsStore

EVIL_IDS: list[Any] = [
    "..",
    "../..",
    "../../etc/passwd",
    "/etc/passwd",
    "/tmp",
    "runs/../../x",
    "a/../../b",
    "\x00",
    "00000000-0000-4000-8000-000000000000\x00/../x",
    "00000000-0000-4000-8000-000000000000/..",
    "00000000-0000-4000-8000-000000000000/../../escape",
    "00000000-0000-4000-8000-00000000000G",
    "00000000-0000-4000-8000-00000000000A",  # uppercase: not the canonical form
    "x" * 5000,
    "." * 300,
    "~",
    "",
    " 00000000-0000-4000-8000-000000000000",
    "00000000-0000-4000-8000-000000000000\n",
    "..\\..\\windows",
    "%2e%2e%2f",
    b"..",
    None,
    42,
]
EVIL_ARTIFACT_IDS: list[Any] = [
    *EVIL_IDS,
    "../" + "a" * 61,
    "/" + "a" * 63,
    "A" * 64,
    "a" * 63,
    "a" * 65,
    "a" * 62 + "/.",
    "a" * 63 + "\x00",
]


def tree(root: Path) -> set[str]:
    """Every path (files, folders, links) under ``root``."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


async def fs_with_a_run(tmp_path: Path) -> tuple[FsStore, RunId]:
    store = FsStore(tmp_path / "deep" / "store")
    run_id = RunId("00000000-0000-4000-8000-000000000000")
    await store.events.append(
        run_id, 0, [EventEnvelope(run_id=run_id, seq=1, ts_millis=1, event=DomainEvent(name="n", payload={}))]
    )
    await store.artifacts.put(ArtifactKind.OUTPUT, b"x")
    return store, run_id


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_store_path_is_owner_only_even_under_a_lax_umask(tmp_path: Path) -> None:
    """A real run, a replay and a cancel through the CLI, with umask 000: folders 0700, files 0600."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k not in ("MFM_STORE", "XDG_DATA_HOME")}
    env["HOME"] = str(tmp_path)

    def mfm(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "mfm_tui", "--store", str(store), "--ops", "engine.demo_ops", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, preexec_fn=lambda: os.umask(0))

    started = mfm("start", "demo_pipeline", "--wait", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    replayed = mfm("replay", run_id[:8], "--wait")
    assert replayed.returncode == 0, replayed.stderr
    slow = mfm("start", "demo_big", "-p", "states=50", "-p", "delay_ms=50", "--json")
    assert slow.returncode == 0, slow.stderr
    slow_id = json.loads(slow.stdout)["run_id"]
    cancelled = mfm("cancel", slow_id)
    assert cancelled.returncode == 0, cancelled.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # waiting for an outside process, not a timing assertion
        shown = mfm("show", slow_id, "--json")
        if shown.returncode == 0 and json.loads(shown.stdout)["status"] == "cancelled":
            break
        time.sleep(0.2)
    assert json.loads(shown.stdout)["status"] == "cancelled", shown.stdout
    while time.monotonic() < deadline:  # every worker gone: one still closing its run writes files (a summary's
        listed = mfm("runs", "--json")  # temp file) that the walk below could see appear and vanish (flaky)
        if listed.returncode == 0 and all(r["lease"] != "held" for r in json.loads(listed.stdout)):
            break
        time.sleep(0.2)
    assert all(r["lease"] != "held" for r in json.loads(listed.stdout)), listed.stdout
    names = set()
    for path in [store, *store.rglob("*")]:
        st = os.lstat(path)
        names.add(path.name)
        assert not stat.S_ISLNK(st.st_mode), path
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        assert stat.S_IMODE(st.st_mode) == want, f"{path.relative_to(tmp_path)}: {stat.S_IMODE(st.st_mode):o}"
    assert {"store.json", "events.jsonl", "lease", "worker.log", "verdict.json", "cancel.json"} <= names


# ---------------------------------------------------------------------------------------------
# Crafted ids never touch the filesystem
# ---------------------------------------------------------------------------------------------


async def test_crafted_run_ids_never_touch_the_filesystem(tmp_path: Path) -> None:
    store, good = await fs_with_a_run(tmp_path)
    before = tree(tmp_path)
    refused = 0
    for bad in EVIL_IDS:
        env = EventEnvelope(run_id=good, seq=1, ts_millis=1, event=DomainEvent(name="n", payload={}))
        calls: list[Any] = [
            store.events.head_seq(bad),
            store.events.append(bad, 0, [env]),
            store.events.read_range(bad, 1),
            store.events.request_cancel(bad, "x"),
            store.events.cancel_request(bad),
        ]
        for call in calls:
            with pytest.raises(StorageError) as info:
                await call
            assert info.value.code == "invalid_run_id", (bad, info.value.one_line())
            refused += 1
        with pytest.raises(StorageError):
            store.run_dir(bad, create=True)
        refused += 1
    assert tree(tmp_path) == before
    assert refused == len(EVIL_IDS) * 6


async def test_crafted_artifact_ids_never_touch_the_filesystem(tmp_path: Path) -> None:
    store, _ = await fs_with_a_run(tmp_path)
    outside = tmp_path / "deep" / ("a" * 64)
    outside.write_bytes(b"outside the store")
    before = tree(tmp_path)
    for bad in EVIL_ARTIFACT_IDS:
        with pytest.raises(StorageError) as info:
            await store.artifacts.get(bad)
        assert info.value.code == "artifact_not_found", (bad, info.value.one_line())
        assert await store.artifacts.exists(bad) is False
        assert await store.artifacts.kind_of(bad) is None
    assert tree(tmp_path) == before


CRAFTED_CLI = [
    ["show", "../../etc"],
    ["show", "/etc/passwd"],
    ["events", "..", "--json"],
    ["resume", "../x"],
    ["cancel", "/tmp"],
    ["replay", "a/../../b"],
    ["artifact", "../" + "a" * 61],
    ["artifact", "/etc/passwd"],
    ["doctor", "../.."],
    ["doctor", "/"],
    ["start", "../../evil_op"],
]


def test_cli_refuses_crafted_ids_without_touching_the_filesystem(tmp_path: Path) -> None:
    store = tmp_path / "store"
    FsStore(store).close()
    before = tree(tmp_path)
    for args in CRAFTED_CLI:
        res = subprocess.run(
            [sys.executable, "-m", "mfm_tui", "--store", str(store), "--ops", "engine.demo_ops", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode in (2, 3), (args, res.returncode, res.stderr)
        assert "Traceback" not in res.stderr + res.stdout
        assert res.stderr.startswith("error["), (args, res.stderr)
        assert tree(tmp_path) == before, args


# ---------------------------------------------------------------------------------------------
# Planted symlinks are refused, not followed
# ---------------------------------------------------------------------------------------------


async def test_symlink_in_place_of_an_artifact_is_refused(tmp_path: Path) -> None:
    store, _ = await fs_with_a_run(tmp_path)
    secret = tmp_path / "outside.txt"
    secret.write_bytes(b"hello")
    aid = artifact_id_for_bytes(b"hello")
    fan = store.root / "artifacts" / aid[:2]
    fan.mkdir(mode=0o700, exist_ok=True)
    (fan / aid).symlink_to(secret)
    with pytest.raises(StorageError) as info:
        await store.artifacts.get(aid)
    assert "symlink" in info.value.message
    assert await store.artifacts.exists(aid) is False
    with pytest.raises(StorageError):
        await store.artifacts.put(ArtifactKind.OUTPUT, b"hello")  # never "verifies" through the link
    assert secret.read_bytes() == b"hello"
    assert (fan / aid).is_symlink()


async def test_symlink_in_place_of_an_event_file_is_refused(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    run_id = RunId("00000000-0000-4000-8000-000000000001")
    outside = tmp_path / "outside.jsonl"
    fake = EventEnvelope(run_id=run_id, seq=1, ts_millis=1, event=DomainEvent(name="planted", payload={}))
    outside.write_bytes(fake.to_json().encode() + b"\n")
    original = outside.read_bytes()
    run_dir = store.run_dir(run_id, create=True)
    (run_dir / "events.jsonl").symlink_to(outside)
    with pytest.raises(StorageError) as info:
        await store.events.read_range(run_id, 1)
    assert "symlink" in info.value.message or info.value.code == "event_store_io"
    with pytest.raises(StorageError):
        await store.events.head_seq(run_id)
    with pytest.raises(StorageError):
        await store.events.append(run_id, 0, [fake])
    assert run_id not in await store.events.list_runs()
    assert outside.read_bytes() == original


async def test_symlink_in_place_of_a_cancel_request_is_refused(tmp_path: Path) -> None:
    store, run_id = await fs_with_a_run(tmp_path)
    outside = tmp_path / "cancel.json"
    outside.write_text(json.dumps({"reason": "planted", "requested_at_millis": 1, "run_id": run_id}))
    control = store.run_dir(run_id) / "control"
    control.mkdir(mode=0o700)
    (control / "cancel.json").symlink_to(outside)
    with pytest.raises(StorageError):
        await store.events.cancel_request(run_id)
    with pytest.raises(StorageError):
        await store.events.request_cancel(run_id, "real")
    assert json.loads(outside.read_text())["reason"] == "planted"


def test_symlink_in_place_of_worker_files_is_not_followed(tmp_path: Path) -> None:
    """The worker log and the lease are opened with O_NOFOLLOW: a planted link makes the action fail."""
    from engine.workers import Lease, WorkerError

    store = FsStore(tmp_path / "store")
    run_id = RunId("00000000-0000-4000-8000-000000000002")
    run_dir = store.run_dir(run_id, create=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (run_dir / "lease").symlink_to(victim)
    with pytest.raises((OSError, WorkerError, MfmError)):
        Lease.acquire(store, run_id, "run")
    assert victim.read_bytes() == b"keep me"


# ---------------------------------------------------------------------------------------------
# Planted symlinked folders and folders of other users are refused: nothing is written through them
# ---------------------------------------------------------------------------------------------


def _mfm(store: Path, *args: str, home: Path, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MFM_STORE", "XDG_DATA_HOME")}
    env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "mfm_tui", "--store", str(store), "--ops", "engine.demo_ops", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def _refused(res: subprocess.CompletedProcess[str], code: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error[{code}]: "), res.stderr


def _plant(link: Path, outside: Path) -> None:
    """Replace the folder ``link`` by a symlink to ``outside`` (an empty folder outside the store)."""
    if link.exists():
        shutil.rmtree(link)
    outside.mkdir(mode=0o700)
    link.symlink_to(outside, target_is_directory=True)


def _note(run_id: RunId, seq: int) -> EventEnvelope:
    return EventEnvelope(run_id=run_id, seq=seq, ts_millis=seq, event=DomainEvent(name="n", payload={}))


async def test_symlinked_run_folder_is_refused_by_the_store_and_the_workers(tmp_path: Path) -> None:
    """``runs/<id>`` planted as a symlink: append, cancel, the lease, start.json and the worker log are refused."""
    from engine.workers import DetachedLauncher, Lease, write_pending

    store, run_id = await fs_with_a_run(tmp_path)
    outside = tmp_path / "outside"
    _plant(store.root / "runs" / run_id, outside)
    for call in (
        lambda: store.events.append(run_id, 1, [_note(run_id, 2)]),
        lambda: store.events.append(run_id, 0, [_note(run_id, 1)]),
        lambda: store.events.request_cancel(run_id, "via a symlink"),
        lambda: store.events.cancel_request(run_id),
        lambda: store.events.head_seq(run_id),
        lambda: store.events.read_range(run_id, 1),
    ):
        with pytest.raises(StorageError) as info:
            await call()
        assert info.value.code == "store_symlink", info.value.one_line()
    assert run_id not in await FsStore(store.root).events.list_runs()
    for sync_call in (
        lambda: Lease.acquire(store, run_id, "run"),
        lambda: write_pending(store, run_id, artifact_id_for_bytes(b"m")),
        lambda: store.run_dir(run_id, create=True),
    ):
        with pytest.raises(StorageError) as info:
            sync_call()
        assert info.value.code == "store_symlink"
    with pytest.raises(StorageError) as info:
        await DetachedLauncher(store).launch("resume", run_id)
    assert info.value.code == "store_symlink"
    assert list(outside.iterdir()) == []


def test_symlinked_run_folder_is_refused_by_the_command_line(tmp_path: Path) -> None:
    """The same through ``mfm``: cancel, resume (which would start a worker) and a worker started by hand."""
    store = tmp_path / "store"
    started = _mfm(store, "start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", "--json", home=tmp_path)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    outside = tmp_path / "outside"
    _plant(store / "runs" / run_id, outside)
    _refused(_mfm(store, "cancel", run_id, home=tmp_path), "store_symlink")
    _refused(_mfm(store, "resume", run_id, home=tmp_path), "store_symlink")
    _refused(_mfm(store, "show", run_id, home=tmp_path), "store_symlink")
    worker = _mfm(store, "worker", "resume", run_id, home=tmp_path)
    assert worker.returncode == 2 and "error[store_symlink]" in worker.stderr, worker.stderr
    assert list(outside.iterdir()) == []


async def test_symlinked_control_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsStore(root)
    run_id = RunId("00000000-0000-4000-8000-0000000000c0")  # unfinished, no worker
    zero = artifact_id_for_bytes(b"")
    started = RunStarted(op_id=OpId("demo_big"), manifest_id=zero, initial_snapshot_id=zero)
    await store.events.append(run_id, 0, [EventEnvelope(run_id=run_id, seq=1, ts_millis=1, event=started)])
    outside = tmp_path / "outside"
    _plant(root / "runs" / run_id / "control", outside)
    for call in (lambda: store.events.request_cancel(run_id, "x"), lambda: store.events.cancel_request(run_id)):
        with pytest.raises(StorageError) as info:
            await call()
        assert info.value.code == "store_symlink"
    _refused(_mfm(root, "cancel", run_id, home=tmp_path), "store_symlink")
    assert list(outside.iterdir()) == []


async def test_symlinked_artifact_folder_receives_nothing(tmp_path: Path) -> None:
    store, _ = await fs_with_a_run(tmp_path)
    data = b"a new blob"
    aid = artifact_id_for_bytes(data)
    outside = tmp_path / "outside"
    _plant(store.root / "artifacts" / aid[:2], outside)
    with pytest.raises(StorageError) as info:
        await store.artifacts.put(ArtifactKind.OUTPUT, data)
    assert info.value.code == "store_symlink"
    with pytest.raises(StorageError) as info:
        await store.artifacts.get(aid)
    assert info.value.code == "store_symlink"
    with pytest.raises(StorageError):
        await store.artifacts.exists(aid)
    assert await store.artifacts.kind_of(aid) is None
    assert list(outside.iterdir()) == []


def _damage_for_repair(store: Path, run_id: str) -> bytes:
    """A torn tail and a leftover temp file of a dead writer (both repairable); the event file's bytes."""
    events = store / "runs" / run_id / "events.jsonl"
    with events.open("ab") as f:
        f.write(b'{"run_id":"torn')
    temp = store / "runs" / run_id / ".tmp-x-999999999-0"
    temp.write_bytes(b"temp")
    temp.chmod(0o600)
    return events.read_bytes()


def test_doctor_repair_refuses_a_symlinked_quarantine(tmp_path: Path) -> None:
    store = tmp_path / "store"
    started = _mfm(store, "start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", "--json", home=tmp_path)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    damaged = _damage_for_repair(store, run_id)
    outside = tmp_path / "outside"
    _plant(store / "quarantine", outside)
    _refused(_mfm(store, "doctor", "--repair", home=tmp_path), "store_symlink")
    assert list(outside.iterdir()) == []
    assert (store / "runs" / run_id / "events.jsonl").read_bytes() == damaged  # nothing truncated
    checked = _mfm(store, "doctor", "--json", home=tmp_path)
    assert "symlink_in_store" in {f["code"] for f in json.loads(checked.stdout)["findings"]}


def test_doctor_repair_makes_quarantine_folders_0700_under_umask_0(tmp_path: Path) -> None:
    store = tmp_path / "store"
    started = _mfm(store, "start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", "--json", home=tmp_path)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    _damage_for_repair(store, run_id)
    repaired = _mfm(store, "doctor", "--repair", "--json", home=tmp_path, umask=0)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    moved = json.loads(repaired.stdout)["moved"]
    assert {m["what"] for m in moved} == {"torn_tail", "temp_file"}
    quarantine = store / "quarantine"
    folders = [quarantine, *(p for p in quarantine.rglob("*") if p.is_dir())]
    assert len(folders) >= 4  # quarantine/<stamp>/runs/<id>
    for path in [*folders, *(p for p in quarantine.rglob("*") if p.is_file())]:
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.lstat().st_mode) == want, f"{path}: {stat.S_IMODE(path.lstat().st_mode):o}"


def test_a_store_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """As ssh refuses a ~/.ssh of someone else: the store (or a folder in it) owned by another uid is refused, even
    for root (the owner must run the command)."""
    store = tmp_path / "store"
    started = _mfm(store, "start", "demo_big", "-p", "states=1", "-p", "delay_ms=0", "--wait", "--json", home=tmp_path)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    if os.geteuid() != 0:  # cannot give a folder away: a folder of root's stands for it
        with pytest.raises(StorageError) as info:
            FsStore("/", create=False)
        assert info.value.code == "store_foreign_owner"
        return
    run_dir = store / "runs" / run_id
    os.chown(run_dir, 65534, 65534)  # one run folder planted by another user
    before = tree(store)
    with pytest.raises(StorageError) as info:
        asyncio.run(FsStore(store).events.append(RunId(run_id), 10, [_note(RunId(run_id), 11)]))
    assert info.value.code == "store_foreign_owner" and str(run_dir) in info.value.message
    _refused(_mfm(store, "cancel", run_id, home=tmp_path), "store_foreign_owner")
    listed = _mfm(store, "runs", "--json", home=tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # not listed
    doctor = _mfm(store, "doctor", "--json", home=tmp_path)
    assert "foreign_owner" in {f["code"] for f in json.loads(doctor.stdout)["findings"]}
    os.chown(run_dir, 0, 0)
    for p in [store, *store.rglob("*")]:
        os.chown(p, 65534, 65534, follow_symlinks=False)  # the whole store given to nobody
    for args in (("runs",), ("show", run_id), ("start", "demo_big"), ("tui", "--read-only")):
        _refused(_mfm(store, *args, home=tmp_path), "store_foreign_owner")
    with pytest.raises(StorageError) as info:
        FsStore(store)
    assert info.value.code == "store_foreign_owner"
    assert tree(store) == before


# ---------------------------------------------------------------------------------------------
# Exec transport allowlist
# ---------------------------------------------------------------------------------------------


def _request(program: str) -> dict[str, Any]:
    return {"kind": "run_program_v1", "program_path": program, "argv": [], "timeout_ms": 10_000}


@pytest.mark.parametrize("program", ["/bin/sh", "/usr/bin/env", "/bin/true", sys.executable])
async def test_default_allowlist_admits_nothing_outside_nix_store(program: str) -> None:
    transport = ExecTransportFactory().standalone()
    assert transport.allowlist == ("/nix/store/",)
    with pytest.raises(IoError) as info:
        await transport.call("exec", _request(program))
    assert info.value.code == "exec_program_not_allowed"


async def test_paths_are_resolved_before_the_allowlist_check(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    ok = allowed / "ok.sh"
    ok.write_text("#!/bin/sh\nprintf '{\"ok\":true}'\n")
    ok.chmod(0o700)
    (allowed / "link_to_sh").symlink_to("/bin/sh")
    sibling = tmp_path / "allowedfoo"
    sibling.mkdir()
    twin = sibling / "ok.sh"
    twin.write_text(ok.read_text())
    twin.chmod(0o700)
    transport = ExecTransportFactory([str(allowed) + "/"]).standalone()
    runner = ExecTransportFactory([str(allowed) + "/", os.path.realpath("/bin/sh")]).standalone()  # + its interpreter
    assert await runner.call("exec", _request(str(ok))) == {"ok": True}  # the positive control
    refused = {
        "symlink out of the allowed folder": str(allowed / "link_to_sh"),
        "dot-dot out of the allowed folder": f"{allowed}/../allowedfoo/ok.sh",
        "dot-dot to a system program": f"{allowed}/../../../../../../bin/sh",
        "sibling sharing the prefix string": str(twin),
    }
    for why, program in refused.items():
        with pytest.raises(IoError) as info:
            await transport.call("exec", _request(program))
        assert info.value.code == "exec_program_not_allowed", why
        assert "canonical_path" in (info.value.info.details or {})
    assert not path_is_under("/nix/storefoo/x", "/nix/store/")
    assert not path_is_under("/nix/store/x", "nix/store")  # a relative prefix admits nothing
    assert path_is_under("/nix/store/abc/bin/app", "/nix/store/")
