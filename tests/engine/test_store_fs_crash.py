"""The filesystem store under SIGKILL and under appenders in separate processes.

Children are real processes (forked, so they start in milliseconds), killed with SIGKILL at random points of
their work. A child reports each acknowledged append or put on a pipe *after* the call returned and *before* it
goes on, so the parent knows exactly what must have survived.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

from engine._kinds import ArtifactKind
from engine.errors import StorageError, StorageErrorKind
from engine.ids import ArtifactId, RunId
from engine.stores.fs import FsStore
from tests.engine.store_contract import domain, env, new_run

KILLS = 30
T = TypeVar("T")


def _sync(coro: Coroutine[Any, Any, T]) -> T:
    """Drive an FsStore coroutine to completion without an event loop (it never suspends: its IO is inline).

    Used in forked children, which inherit the parent's "running loop" marker and cannot start a loop.
    """
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise RuntimeError("an FsStore coroutine suspended")


def _fork(target: Callable[[int], None]) -> tuple[int, int]:
    """Run ``target(write_fd)`` in a forked child; return ``(pid, read_fd)``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_fd)
        status = 0
        try:
            target(write_fd)
        except BaseException:
            status = 1
        os._exit(status)
    os.close(write_fd)
    return pid, read_fd


class _Lines:
    """Line reader over a pipe fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def next(self) -> str | None:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def rest(self) -> list[str]:
        out = []
        while (line := self.next()) is not None:
            out.append(line)
        os.close(self.fd)
        return out


def _crashing_writer(root: Path, run: RunId, seed: int) -> Callable[[int], None]:
    def work(ack: int) -> None:
        rng = random.Random(seed)
        store = FsStore(root)
        head = _sync(store.events.head_seq(run))
        while True:
            n = rng.randint(1, 6)
            batch = [env(run, head + 1 + i) for i in range(n)]
            head = _sync(store.events.append(run, head, batch))
            os.write(ack, f"E {head}\n".encode())
            if rng.random() < 0.6:
                data = rng.randbytes(rng.randint(0, 40_000))
                aid = _sync(store.artifacts.put(ArtifactKind.OUTPUT, data))
                os.write(ack, f"A {aid}\n".encode())

    return work


async def test_sigkill_during_appends_and_puts_loses_nothing_acknowledged(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FsStore(root)
    run = new_run()
    rng = random.Random(20240611)
    acked_head = 0
    acked_artifacts: set[str] = set()
    for kill in range(KILLS):
        pid, fd = _fork(_crashing_writer(root, run, seed=kill))
        lines = _Lines(fd)
        acks: list[str] = []
        for _ in range(rng.randint(1, 12)):  # let it run a random while, then kill it mid-work
            line = lines.next()
            if line is None:
                break
            acks.append(line)
        # A random instant inside the child's next operations (real time is the point here: no clock to fake).
        time.sleep(rng.uniform(0, 0.004))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the child died on its own"
        for line in acks + lines.rest():
            tag, _, value = line.partition(" ")
            if tag == "E":
                acked_head = max(acked_head, int(value))
            else:
                acked_artifacts.add(value)
        store = FsStore(root)
        events = await store.events.read_range(run, 0)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), f"kill {kill}: not contiguous"
        assert events == [env(run, s) for s in range(1, len(events) + 1)]
        assert len(events) >= acked_head, f"kill {kill}: acknowledged seq {acked_head} lost"
        assert await store.events.head_seq(run) == len(events)
        for aid in acked_artifacts:
            await store.artifacts.get(ArtifactId(aid))  # present and hash-verified
        store.close()
    assert acked_head > KILLS
    # every linked blob (acknowledged or not) is complete; leftover temp files do not matter
    store = FsStore(root)
    blobs = [p for p in (root / "artifacts").rglob("*") if p.is_file() and len(p.name) == 64]
    assert len(blobs) >= len(acked_artifacts)
    for p in blobs:
        await store.artifacts.get(ArtifactId(p.name))
    # and the stream goes on
    head = await store.events.head_seq(run)
    assert await store.events.append(run, head, [env(run, head + 1)]) == head + 1


def _competing_appender(root: Path, run: RunId, name: str, start_fd: int, last_seq: int) -> Callable[[int], None]:
    def work(ack: int) -> None:
        store = FsStore(root)
        os.read(start_fd, 2)  # everyone starts together
        while True:
            head = _sync(store.events.head_seq(run))
            if head >= last_seq:
                return
            try:
                new = _sync(store.events.append(run, head, [domain(run, head + 1, {"by": name})]))
            except StorageError as exc:
                if exc.kind is not StorageErrorKind.CONCURRENCY:
                    raise
                os.write(ack, f"L {head + 1}\n".encode())
                continue
            os.write(ack, f"W {new}\n".encode())

    return work


async def test_appenders_in_separate_processes_get_exactly_one_winner_per_seq(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FsStore(root)
    run = new_run()
    last_seq = 120
    start_r, start_w = os.pipe()
    names = ["p0", "p1", "p2"]
    children = [_fork(_competing_appender(root, run, name, start_r, last_seq)) for name in names]
    os.write(start_w, b"go" * len(names))
    wins: dict[int, list[str]] = {}
    losses: list[tuple[int, str]] = []
    for name, (pid, fd) in zip(names, children, strict=True):
        for line in _Lines(fd).rest():
            tag, _, value = line.partition(" ")
            if tag == "W":
                wins.setdefault(int(value), []).append(name)
            else:
                losses.append((int(value), name))
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"{name} failed"
    os.close(start_r)
    os.close(start_w)
    assert sorted(wins) == list(range(1, last_seq + 1))
    assert all(len(w) == 1 for w in wins.values()), {s: w for s, w in wins.items() if len(w) > 1}
    events = await FsStore(root).events.read_range(run, 0)
    assert [e.seq for e in events] == list(range(1, last_seq + 1))
    assert all(e.event.payload == {"by": wins[e.seq][0]} for e in events)  # type: ignore[union-attr]
    # whoever lost a seq saw a concurrency error because another process holds it
    assert all(wins[seq] != [loser] for seq, loser in losses)
