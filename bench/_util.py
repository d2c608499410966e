"""Shared helpers for the benchmarks: timing statistics and the raw filesystem floors to compare against.

Benchmarks print figures; they never assert. Compare a subject with its floor *interleaved* (one call of each in
turn, :func:`interleaved`), so that both see the same disk, cache and CPU contention.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Stats",
    "append_fsync_floor",
    "atomic_write_floor",
    "bench_dir",
    "interleaved",
    "measure",
    "measure_async",
    "ratio_line",
]


@dataclass(frozen=True, slots=True)
class Stats:
    """Latencies in microseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> Stats:
        s = sorted(samples_ns)
        n = len(s)

        def pct(p: float) -> float:
            return s[min(n - 1, int(p * n))] / 1000

        return cls(n, pct(0.50), pct(0.90), pct(0.99), statistics.fmean(s) / 1000, s[0] / 1000)

    def __str__(self) -> str:
        return f"p50 {self.p50:9.1f} µs  p90 {self.p90:9.1f} µs  p99 {self.p99:9.1f} µs  (n={self.n})"


def measure(fn: Callable[[], object], n: int, *, warmup: int = 10) -> Stats:
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        fn()
        samples.append(clock() - t)
    return Stats.of(samples)


def measure_async(fn: Callable[[], Awaitable[object]], n: int, *, warmup: int = 10) -> Stats:
    async def run() -> Stats:
        for _ in range(warmup):
            await fn()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t = clock()
            await fn()
            samples.append(clock() - t)
        return Stats.of(samples)

    return asyncio.run(run())


def interleaved(
    subjects: dict[str, Callable[[], object]],
    n: int,
    *,
    warmup: int = 10,
    loop: asyncio.AbstractEventLoop | None = None,
) -> dict[str, Stats]:
    """Time every subject ``n`` times, one call of each per round in a shuffled order. A subject returning an
    awaitable is awaited inline, inside one running event loop (so no task or loop start-up is charged to it)."""
    samples: dict[str, list[int]] = {name: [] for name in subjects}
    clock = time.perf_counter_ns

    order = list(subjects.items())
    rng = random.Random(1234)

    async def run() -> None:
        for i in range(warmup + n):
            rng.shuffle(order)  # no subject always runs first (right after the others' fsyncs)
            for name, fn in order:
                t = clock()
                result = fn()
                if isinstance(result, Awaitable):
                    await result
                dt = clock() - t
                if i >= warmup:
                    samples[name].append(dt)

    (loop or asyncio.new_event_loop()).run_until_complete(run())
    return {name: Stats.of(s) for name, s in samples.items()}


def append_fsync_floor(directory: Path, size: int = 300) -> tuple[Callable[[], None], Callable[[], None]]:
    """The raw floor of a durable append: ``write`` of ``size`` bytes to an O_APPEND file, then ``fdatasync``.

    Returns ``(one_append, close)``.
    """
    fd = os.open(directory / "floor-append.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = b"x" * (size - 1) + b"\n"

    def once() -> None:
        os.write(fd, line)
        os.fdatasync(fd)

    return once, lambda: os.close(fd)


def atomic_write_floor(directory: Path, size: int) -> Callable[[], None]:
    """The raw floor of an atomic file write: temp file, write, fsync, rename into place, fsync the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    counter = iter(range(10**9))

    def once() -> None:
        i = next(counter)
        tmp = directory / f".tmp-{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, directory / f"blob-{i}")
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    return once


@contextmanager
def bench_dir(prefix: str, base: str | None = None) -> Iterator[Path]:
    """A scratch directory (``$MFM_BENCH_DIR`` or ``base`` or the system temp dir), removed afterwards."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base or os.environ.get("MFM_BENCH_DIR")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ratio_line(label: str, subject: Stats, floor: Stats, goal: float | None = None) -> str:
    r = subject.p50 / floor.p50 if floor.p50 else float("inf")
    goal_s = f"  (goal ≤ {goal:.2f}×: {'met' if r <= goal else 'NOT met'})" if goal is not None else ""
    return f"{label}: {r:.2f}× the floor at p50, {subject.p90 / floor.p90:.2f}× at p90{goal_s}"
