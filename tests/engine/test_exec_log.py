"""The exec log (engine.workers.exec_log): a run's exec programs' stdout and stderr as they print it, in the run's
folder, one labelled line at a time, secrets withheld; and the demo pipeline that makes it reachable."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from engine.exec_transport import ExecTransportFactory
from engine.ids import RunId, StateId
from engine.operations import load_registry
from engine.stores.fs import FsStore
from engine.testing import base_config
from engine.transport import TransportContext
from engine.workers import start_run
from engine.workers.exec_log import exec_log_tap

RUN = RunId("0b7e1f1c-0000-4000-8000-00000000e0e0")


def _context(store: FsStore, state: str, attempt: int) -> TransportContext:
    return TransportContext(
        stores=store.stores,
        run_id=RUN,
        state_id=StateId(f"demo.main.{state}"),
        attempt=attempt,
        run_config=base_config(),
    )


def test_lines_are_labelled_buffered_until_complete_and_secrets_are_withheld(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    (tmp_path / "store" / "runs" / RUN).mkdir(parents=True)
    tap = exec_log_tap(store)(_context(store, "fetch", 0))
    other = exec_log_tap(store)(_context(store, "item_2", 1))
    assert tap is not None and other is not None
    tap("stderr", b"starting\nhalf a ")
    other("stderr", b"from item 2\n")
    tap("stderr", b"line\napi_key=hunter2\nno newline at the end")
    err = tmp_path / "store" / "runs" / RUN / "exec.stderr"
    assert err.read_text().splitlines() == [
        "fetch#1 starting",
        "item_2#2 from item 2",
        "fetch#1 half a line",
        "fetch#1 [line withheld: it looks like it carries a secret]",
    ]
    tap("stderr", b"")  # the stream ended: the rest is written
    assert err.read_text().splitlines()[-1] == "fetch#1 no newline at the end"
    tap("stdout", b'{"a": 1}\n')
    assert (tmp_path / "store" / "runs" / RUN / "exec.stdout").read_text() == 'fetch#1 {"a": 1}\n'
    assert oct(err.stat().st_mode & 0o777) == "0o600"


def test_the_exec_transport_taps_a_real_program(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    (tmp_path / "store" / "runs" / RUN).mkdir(parents=True)
    factory = ExecTransportFactory(allowlist=["/bin/", "/usr/bin/"], output_tap=exec_log_tap(store))
    transport = factory.make(_context(store, "fetch", 2))
    request = {"kind": "run_program_v1", "program_path": "/bin/sh", "argv": ["-c", "echo progress >&2; echo '[1, 2]'"]}
    assert asyncio.run(transport.call("exec:test", request)) == [1, 2]
    folder = tmp_path / "store" / "runs" / RUN
    assert (folder / "exec.stderr").read_text() == "fetch#3 progress\n"
    assert (folder / "exec.stdout").read_text() == "fetch#3 [1, 2]\n"


def test_the_demo_pipeline_leaves_exec_stdout_and_stderr_in_its_run_folder(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    prepared = asyncio.run(start_run(store, load_registry(), "demo_pipeline", {"words": ["ab", "cde"]}))
    folder = tmp_path / "store" / "runs" / prepared.run_id
    deadline = time.monotonic() + 120  # a wait for the detached worker, not a timing assertion
    while not ((folder / "exec.stderr").exists() and "fetch: done" in (folder / "exec.stderr").read_text()):
        assert time.monotonic() < deadline, "the worker never wrote its exec log"
        time.sleep(0.05)
    assert (folder / "exec.stderr").read_text().splitlines() == [
        "fetch#1 fetch: measuring 2 word(s) after 0s",
        "fetch#1 fetch: ab has 2 letters",
        "fetch#1 fetch: cde has 3 letters",
        "fetch#1 fetch: done",
    ]
    assert (folder / "exec.stdout").read_text().startswith('fetch#1 {"kernel":')
