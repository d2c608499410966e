"""The migration crash loop of ``bench/crashloop.py --format 1 --migrate-kills N``: kill ``mfm doctor --migrate``
(``migrate_store`` in a forked child) at chosen points of its own disk-changing system calls, each time on a fresh
copy of a version-1 store, and check that every killed copy opens as version 1 or 2, reads every run's events as
before, and finishes when migrated again.

Used by ``bench/crashloop.py`` (run that script; this module has no command line of its own) and by
``tests/reliability/test_crashloop.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MUTATING_CALLS",
    "MigrationCrashes",
    "kill_points",
    "migrate_store_whole",
    "migration_crashes",
    "read_all_events",
    "store_runs",
]

MUTATING_CALLS = ("open", "write", "fsync", "fdatasync", "rename", "replace", "unlink", "fchmod", "ftruncate", "mkdir")
"""The ``os`` functions through which the migration changes the disk (``open`` because it can create): the files
only change at these calls, so killing the process just before each of them, and in the middle of each ``write``,
reaches every state a SIGKILL at any instant can leave (a kill loses nothing from the page cache; only a power
loss would, which is not what a kill tests)."""


def migrate_store_whole(root: Path) -> Any:
    from engine.doctor import migrate_store

    return migrate_store(root)


def _arm(kill_at: int | None, tear: float, trace: list[str] | None) -> dict[str, Any]:
    """In a forked migration child: wrap the ``os`` functions of :data:`MUTATING_CALLS` (the store's code calls
    them as ``os.<name>``), count the calls, and SIGKILL the process just before call number ``kill_at`` (from 0)
    runs, or, if it is a ``write`` and ``tear`` > 0, right after writing that share of its bytes (a torn write).
    ``trace`` collects the names of the calls made. Returns the real functions (to unwrap)."""
    count = [0]
    reals: dict[str, Any] = {}
    for name in MUTATING_CALLS:
        real = getattr(os, name, None)
        if real is None:
            continue
        reals[name] = real

        def wrapped(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            n = count[0]
            count[0] += 1
            if trace is not None:
                trace.append(_name)
            if n == kill_at:
                if _name == "write" and tear > 0:
                    data = memoryview(args[1]).cast("B")
                    cut = max(1, min(len(data) - 1, int(len(data) * tear)))
                    _real(args[0], data[:cut])
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)

        setattr(os, name, wrapped)
    return reals


def _migrate_in_child(store: Path, kill_at: int | None, tear: float, trace_file: Path | None = None) -> bool:
    """Run the migration in a forked child armed by :func:`_arm`; True when it was killed, False when it ended."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            trace: list[str] = []
            reals = _arm(kill_at, tear, trace if trace_file is not None else None)
            migrate_store_whole(store)
            for name, real in reals.items():  # the trace's own write is not the migration's
                setattr(os, name, real)
            if trace_file is not None:
                trace_file.write_text(json.dumps(trace))
        except BaseException:  # reported through the exit status
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return False
    raise RuntimeError(f"the migration child failed: status {status}")


def store_runs(store: Path) -> list[str]:
    from engine.stores.fs import FsStore

    async def go() -> list[str]:
        with FsStore(store, create=False) as s:
            return sorted(str(r) for r in await s.events.list_runs())

    return asyncio.run(go())


def read_all_events(
    store: Path,
    runs: list[str],
    versions: Counter[int] | None = None,
    known: tuple[Path, dict[str, list[Any]]] | None = None,
) -> dict[str, list[Any]] | str:
    """Every run's events, read through one store handle; or why the store does not open or a run does not read
    in full (an unknown version, damage). Counts the version the store opened as in ``versions``. ``known``: a
    store and its runs' events; a run whose log here is byte-identical to its log there reads the same (the reader
    is deterministic), so it is not decoded again (the migration leaves most logs of a killed copy untouched)."""
    from engine.ids import RunId
    from engine.stores.fs import FsStore, framing

    def unchanged(run: str) -> bool:
        if known is None or run not in known[1]:
            return False
        try:
            here = (store / framing.events_file(RunId(run))).read_bytes()
            return here == (known[0] / framing.events_file(RunId(run))).read_bytes()
        except OSError:
            return False

    async def go() -> dict[str, list[Any]] | str:
        try:
            s = FsStore(store, create=False)
        except Exception as exc:  # reported
            return f"store does not open: {exc!r}"
        try:
            if s.version not in (1, 2):
                return f"store opens as version {s.version}"
            if versions is not None:
                versions[s.version] += 1
            out: dict[str, list[Any]] = {}
            for run in runs:
                if unchanged(run):
                    assert known is not None
                    out[run] = known[1][run]
                    continue
                out[run] = await s.events.read_range(RunId(run), 1)
                damage = s.events.damage(RunId(run))
                if damage is not None:
                    return f"run {run} reads as damaged: {damage}"
            return out
        except Exception as exc:  # reported
            return f"reading failed: {exc!r}"
        finally:
            s.close()

    return asyncio.run(go())


@dataclass
class MigrationCrashes:
    kills: int = 0
    finished: int = 0
    """Kill points past the migration's last call: it ended before its kill."""
    bad: int = 0
    """Kills after which the store did not open as version 1 or 2, or a run read differently (also after the
    migration was run again)."""
    calls: int = 0
    """Calls of :data:`MUTATING_CALLS` an uncrashed migration of the store makes."""
    writes: int = 0
    """Of which ``write`` calls: the kill points are one before each call, one inside each write and one after the
    last call, ``calls + writes + 1`` in all, before any repeat."""
    distinct: int = 0
    """Distinct kill points: (call offset, where in a write)."""
    torn: int = 0
    resumed: int = 0
    """Killed stores on which the migration, run again, finished: version 2, every run reading as before."""
    opened_as: Counter[int] = field(default_factory=Counter)
    """How many killed copies opened as version 1, and as version 2."""
    seconds: float = 0.0
    where: str = ""
    problems: list[str] = field(default_factory=list)


def kill_points(trace: list[str], kills: int, rng: random.Random) -> list[tuple[int, float]]:
    """``kills`` kill points ``(call offset, tear)``: before every call and in the middle of every write first
    (spread evenly when there are more of them than kills), then writes torn at further random byte offsets."""
    base: list[tuple[int, float]] = [(i, 0.0) for i in range(len(trace))]
    base += [(i, 0.5) for i, name in enumerate(trace) if name == "write"]
    base.append((len(trace), 0.0))  # after the last call: the migration ends first
    if kills <= len(base):
        step = len(base) / kills
        points = [base[int(k * step)] for k in range(kills)]
    else:
        writes = [i for i, name in enumerate(trace) if name == "write"] or [len(trace)]
        points = base + [(rng.choice(writes), rng.uniform(0.01, 0.99)) for _ in range(kills - len(base))]
    rng.shuffle(points)
    return points


def migration_crashes(
    store: Path, runs: list[str], kills: int, rng: random.Random, where: Path | None = None
) -> MigrationCrashes:
    """Kill the migration of a copy of the version-1 ``store`` at ``kills`` points (:func:`kill_points`), each on
    a fresh copy in ``where`` (default: /dev/shm when there is one, else beside the store): after each kill the
    copy must open as version 1 or 2 with every run reading exactly as before, and the migration run again must
    finish (version 2, the same events)."""
    import shutil

    out = MigrationCrashes()
    t0 = time.monotonic()
    shm = Path("/dev/shm")
    base = where or (shm if shm.is_dir() and os.access(shm, os.W_OK) else store.parent)
    work = Path(tempfile.mkdtemp(prefix="mfm-migrate-crash-", dir=base))
    out.where = str(base)
    try:
        template = work / "v1"
        shutil.copytree(store, template, symlinks=True)
        expected = read_all_events(template, runs)
        if isinstance(expected, str):
            out.problems.append(f"the version-1 store itself: {expected}")
            out.bad += 1
            return out
        probe = work / "probe"
        shutil.copytree(template, probe, symlinks=True)
        trace_file = work / "trace.json"
        _migrate_in_child(probe, None, 0.0, trace_file)
        trace: list[str] = json.loads(trace_file.read_text())
        out.calls = len(trace)
        out.writes = trace.count("write")
        points = kill_points(trace, kills, rng)
        out.distinct = len(set(points))
        target = work / "store"
        for offset, tear in points:
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(template, target, symlinks=True)
            killed = _migrate_in_child(target, offset, tear)
            out.kills += 1
            out.finished += not killed
            out.torn += killed and tear > 0 and offset < len(trace) and trace[offset] == "write"
            after = read_all_events(target, runs, out.opened_as, (template, expected))
            if after != expected:
                out.bad += 1
                why = after if isinstance(after, str) else "events differ"
                out.problems.append(f"killed before call {offset} ({tear=:.2f}): {why}"[:300])
                continue
            report = migrate_store_whole(target)
            again = read_all_events(target, runs, known=(template, expected))
            if report.version_after != 2 or report.blocked or again != expected:
                out.bad += 1
                out.problems.append(f"killed before call {offset}: the migration run again left {report.to_json()}")
                continue
            out.resumed += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        out.seconds = time.monotonic() - t0
    return out
