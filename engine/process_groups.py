"""The process groups of an attempt's exec programs: reported while they run, and made sure gone before another
attempt of the same run starts (issue 13).

Each program that ``engine.process_exec.run_process`` starts leads its own session and process group (its pgid is
its pid). The runner tells the :class:`GroupReporter` of the current context (:func:`reporting_groups_to`) when a
group starts and when it ends, as an :class:`ExecGroup`: the pgid and the leader's start time (``/proc/<pid>/stat``
field 22, in clock ticks since boot). The worker records them in the run's lease (a filesystem store's
``runs/<id>/lease``, a database store's queue row) together with the :class:`Machine` it runs on.

Before a resume or a pool takeover starts a new attempt, :func:`ensure_gone` makes sure every recorded group is gone.
The group guard and the parent-death signal of ``engine.process_exec`` normally took them down with their worker;
this is the check for when they could not (the guard was killed too, the program's children do not get the
parent-death signal, a set-user-ID program clears it). For each group:

- recorded on another machine (host name, boot id or pid namespace differ): nothing can be checked from here;
  reported as ``elsewhere`` (after a reboot the group is gone anyway).
- the leader's pid exists (``/proc/<pgid>/stat``, a zombie included): if its start time matches the recorded one it
  is that group: SIGKILL the whole group. If it does not match, the pid was reused by a later process: **never
  killed** (``reused``).
- the leader is gone but processes of that group live on (a program's child outlives a leader that the parent-death
  signal took down): a pid still in use as a process group or session id is never handed to a new process, so
  they are that group's, unless the group had died completely and its id was reused by a later session leader
  that has exited since. They are killed only when each of them is in session ``pgid`` and started no earlier
  than the recorded leader; anything else is ``reused`` and never killed.
- no recorded start time or no ``/proc``: nothing can be proven: ``unknown``, not killed.

After a SIGKILL, :func:`ensure_gone` waits (bounded) until no live process of the group remains: ``killed``, or
``alive`` if some still do when the time is up (the caller then refuses to start another attempt).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "DEFAULT_KILL_TIMEOUT_S",
    "ExecGroup",
    "GroupCheck",
    "GroupReporter",
    "Machine",
    "current_reporter",
    "describe_all",
    "ensure_gone",
    "group_members",
    "process_start_ticks",
    "reporting_groups_to",
    "start_ticks_of_stat",
]

DEFAULT_KILL_TIMEOUT_S = 5.0


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3… of ``/proc/<pid>/stat`` (field 2, the command name, may hold spaces and parentheses), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22).

    ``None`` when the process is gone or there is no ``/proc``. A pid is reused only by a process
    started later, so (pid, start ticks) names one process for good.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return start_ticks_of_stat(f.read())
    except OSError:
        return None


def start_ticks_of_stat(stat: bytes) -> int | None:
    """Field 22 of the text of a ``/proc/<pid>/stat`` (None if it is not one)."""
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22; fields[0] is field 3
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ExecGroup:
    """One exec program's process group: its id (the leader's pid) and the leader's start ticks (None: unknown)."""

    pgid: int
    start_ticks: int | None

    def to_json(self) -> list[int | None]:
        return [self.pgid, self.start_ticks]

    @classmethod
    def from_json(cls, value: Any) -> ExecGroup | None:
        """``[pgid, ticks]`` as recorded; anything else → None (ignored)."""
        if not isinstance(value, list | tuple) or len(value) != 2:
            return None
        pgid, ticks = value
        if not _is_int(pgid) or pgid <= 1 or not (ticks is None or _is_int(ticks)):
            return None
        return cls(pgid, ticks)

    @staticmethod
    def list_from_json(value: Any) -> list[ExecGroup]:
        if not isinstance(value, list):
            return []
        return [g for g in (ExecGroup.from_json(v) for v in value) if g is not None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Machine:
    """Where a group's pids mean something: the host name, the boot (``/proc/sys/kernel/random/boot_id``) and the
    pid namespace. Pids recorded under another one name other processes (or none)."""

    host: str
    boot_id: str | None
    pid_ns: str | None

    @classmethod
    def here(cls) -> Machine:
        return cls(socket.gethostname(), _read_text("/proc/sys/kernel/random/boot_id"), _pid_namespace())

    def to_json(self) -> dict[str, str | None]:
        return {"host": self.host, "boot_id": self.boot_id, "pid_ns": self.pid_ns}

    @classmethod
    def from_json(cls, value: Any) -> Machine | None:
        if not isinstance(value, dict) or not isinstance(value.get("host"), str):
            return None

        def opt(key: str) -> str | None:
            v = value.get(key)
            return v if isinstance(v, str) else None

        return cls(value["host"], opt("boot_id"), opt("pid_ns"))


# ---------------------------------------------------------------------------------------------
# Reporting: the runner tells the current context's reporter
# ---------------------------------------------------------------------------------------------


class GroupReporter(Protocol):
    """Told by ``engine.process_exec.run_process`` when a program's group starts and when it has ended (reaped).

    Failures are logged by the runner, never raised into the exec call."""

    async def group_started(self, group: ExecGroup) -> None: ...

    async def group_ended(self, group: ExecGroup) -> None: ...


_REPORTER: ContextVar[GroupReporter | None] = ContextVar("mfm_exec_group_reporter", default=None)


@contextlib.contextmanager
def reporting_groups_to(reporter: GroupReporter | None) -> Iterator[None]:
    """Exec calls made in this context (and the tasks it creates from now on) report their groups to ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def current_reporter() -> GroupReporter | None:
    return _REPORTER.get()


# ---------------------------------------------------------------------------------------------
# Making sure recorded groups are gone
# ---------------------------------------------------------------------------------------------

Outcome = Literal["gone", "killed", "reused", "elsewhere", "unknown", "alive"]


@dataclass(frozen=True, slots=True)
class GroupCheck:
    """What :func:`ensure_gone` found and did for one recorded group; ``pids``: the processes it killed, or (for
    ``alive``) the ones still alive."""

    group: ExecGroup
    outcome: Outcome
    pids: tuple[int, ...] = ()
    where: str | None = None

    @property
    def safe(self) -> bool:
        """Whether another attempt may start as far as this group is concerned (``alive`` is the only no)."""
        return self.outcome != "alive"

    def describe(self) -> str:
        g = self.group
        pids = ", ".join(str(p) for p in self.pids)
        if self.outcome == "gone":
            return f"process group {g.pgid} of the previous attempt is gone"
        if self.outcome == "killed":
            return f"killed process group {g.pgid} left by the previous attempt (pids {pids})"
        if self.outcome == "reused":
            return f"process group {g.pgid} of the previous attempt is gone (its id now names another process)"
        if self.outcome == "elsewhere":
            return (
                f"process group {g.pgid} of the previous attempt ran on {self.where or 'another machine'}: "
                "it cannot be checked or killed from here"
            )
        if self.outcome == "unknown":
            return f"process group {g.pgid} of the previous attempt cannot be checked (no start time or no /proc)"
        return f"process group {g.pgid} of the previous attempt is still alive after SIGKILL (pids {pids})"


def group_members(pgid: int) -> list[tuple[int, int, int]]:
    """Live (not zombie) processes of process group ``pgid``: ``(pid, session id, start ticks)`` each."""
    found: list[tuple[int, int, int]] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        try:
            if fields is None or int(fields[2]) != pgid or fields[0] in (b"Z", b"X"):
                continue
            found.append((int(name), int(fields[3]), int(fields[19])))
        except (IndexError, ValueError):
            continue
    return found


def _decide(group: ExecGroup) -> tuple[Outcome | None, list[int]]:
    """``(None, members)``: the group is the recorded one and these processes live; else a final outcome."""
    members = group_members(group.pgid)
    leader = _stat_fields(group.pgid)
    if leader is not None:
        ticks = process_start_ticks(group.pgid)
        if ticks != group.start_ticks:
            return "reused", []
        return (None, [m[0] for m in members]) if members else ("gone", [])
    if not members:
        return "gone", []
    assert group.start_ticks is not None
    if all(sid == group.pgid and start >= group.start_ticks for _, sid, start in members):
        return None, [m[0] for m in members]
    return "reused", []


def ensure_gone(
    groups: Iterable[ExecGroup],
    recorded_on: Machine | None,
    *,
    timeout_s: float = DEFAULT_KILL_TIMEOUT_S,
    here: Machine | None = None,
) -> list[GroupCheck]:
    """Make sure each recorded group is gone (see the module docstring); one :class:`GroupCheck` per group."""
    here = Machine.here() if here is None else here
    checks: list[GroupCheck] = []
    for group in groups:
        if recorded_on is None or recorded_on != here:
            where = "an unknown machine" if recorded_on is None else f"host {recorded_on.host!r}"
            if recorded_on is not None and recorded_on.host == here.host:
                where += " before a reboot or in another pid namespace"
            checks.append(GroupCheck(group, "elsewhere", where=where))
            continue
        if group.start_ticks is None or not os.path.isdir("/proc/self"):
            checks.append(GroupCheck(group, "unknown"))
            continue
        checks.append(_kill_and_wait(group, timeout_s))
    return checks


def _kill_and_wait(group: ExecGroup, timeout_s: float) -> GroupCheck:
    outcome, members = _decide(group)
    if outcome is not None:
        return GroupCheck(group, outcome)
    killed = tuple(sorted(members))
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group.pgid, signal.SIGKILL)
        time.sleep(0.01)
        outcome, members = _decide(group)
        if outcome is not None:
            # gone now (or its id already names something else: ours are gone either way)
            return GroupCheck(group, "killed", killed)
        if time.monotonic() >= deadline:
            return GroupCheck(group, "alive", tuple(sorted(members)))


def describe_all(checks: Sequence[GroupCheck]) -> list[str]:
    """One line per check worth telling (a group already gone says nothing)."""
    return [c.describe() for c in checks if c.outcome not in ("gone", "reused")]
