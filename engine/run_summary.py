"""A run's summary: what a runs list needs to draw one row, folded incrementally from the run's envelopes.

``apply(summary, envelopes) -> summary`` folds only the envelopes past ``summary.head`` (in seq order), so a store
can keep a summary next to each run log and bring it up to date from its head after every append; ``RunSummary``
round-trips through ``to_wire`` / ``from_wire`` (plain JSON values) so the cache can be written anywhere. It is
store-agnostic and pure (no IO): a store that keeps no summaries computes one from its events
(:func:`summarize`).

What it holds: the run's op and ids, how it ended (``status``), when it started, ended and last wrote, its head, the
attempts of each state (the last one, and the last failed one for its error), the states in flight, the per-state
streaks of orphan recoveries (a crash loop), the run it recovers, the last error, the child runs it spawned
(ENGINE-SPEC §16). The monitor's status (running, retrying, worker lost…) is derived from these plus its own inputs
(lease, manifest, cancel), not stored here.

``complete=False`` marks a *provisional* summary: built from the run's first envelope and its tail only, while the
whole log is being folded (the list shows such a row as "indexing…").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine.events import (
    DOMAIN_EVENT_CHILD_RUN_COMPLETED,
    DOMAIN_EVENT_CHILD_RUN_SPAWNED,
    DOMAIN_EVENT_RECOVERED_FROM,
    DOMAIN_EVENT_RETRY_SCHEDULED,
    DomainEvent,
    EventEnvelope,
    RetryScheduled,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.ids import ArtifactId, OpId, RunId, StateId

__all__ = [
    "SUMMARY_DOMAIN_EVENTS",
    "SUMMARY_VERSION",
    "AttemptSummary",
    "ChildRunSummary",
    "LazyStates",
    "RunSummary",
    "StateSummary",
    "apply",
    "from_index_form",
    "index_form",
    "summarize",
]

SUMMARY_VERSION = 2
"""Bumped when the fold or the wire form changes: a cached summary of another version is rebuilt."""

_CODE_ORPHAN_RECOVERED = "orphan_attempt_recovered"
"""``engine.workers.CODE_ORPHAN_RECOVERED`` (the stores, which import this module, may not import the workers)."""
_CRASH_LOOP_RESET = "crash_loop_reset"
"""``engine.workers.DOMAIN_EVENT_CRASH_LOOP_RESET`` (same reason)."""

SUMMARY_DOMAIN_EVENTS: frozenset[str] = frozenset(
    {
        DOMAIN_EVENT_RECOVERED_FROM,
        DOMAIN_EVENT_RETRY_SCHEDULED,
        _CRASH_LOOP_RESET,
        DOMAIN_EVENT_CHILD_RUN_SPAWNED,
        DOMAIN_EVENT_CHILD_RUN_COMPLETED,
    }
)
"""The only domain events the fold looks at: a store may skip decoding any other domain event (the last envelope
excepted: its timestamp is the run's last activity)."""


@dataclass(frozen=True, slots=True)
class AttemptSummary:
    """One attempt of a state (the fields of the monitor's attempt view, minus facts)."""

    attempt: int
    entered_seq: int | None
    entered_millis: int | None
    base_snapshot_id: ArtifactId | None
    terminal_seq: int | None = None
    terminal_millis: int | None = None
    completed: bool = False
    result_snapshot_id: ArtifactId | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool = False

    @property
    def is_open(self) -> bool:
        return self.terminal_seq is None


@dataclass(frozen=True, slots=True)
class StateSummary:
    state_id: StateId
    attempts: int = 0
    """How many attempts were entered (or ended without being entered: an anomaly)."""
    last: AttemptSummary | None = None
    last_failed: AttemptSummary | None = None
    """The latest failed attempt (its error is the state's error), possibly ``last`` itself."""
    not_before_millis: int | None = None
    scheduled_next_attempt: int | None = None


@dataclass(frozen=True, slots=True)
class ChildRunSummary:
    """A child run as the parent's stream announces it (``child_run_spawned`` / ``child_run_completed``)."""

    run_id: RunId
    state_id: StateId | None
    """The state whose attempt spawned it: the only attempt open then (``None`` when several or none were)."""
    spawned_seq: int
    status: str | None = None
    """The status ``child_run_completed`` recorded once the parent joined it (``None`` before)."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: RunId
    head: int = 0
    """Seq of the last envelope folded (envelopes are contiguous: also the event count)."""
    op_id: OpId | None = None
    manifest_id: ArtifactId | None = None
    initial_snapshot_id: ArtifactId | None = None
    checkpoint_id: ArtifactId | None = None
    final_snapshot_id: ArtifactId | None = None
    status: RunStatus | None = None
    """How the run ended (``RunCompleted``), ``None`` while it has not."""
    started_millis: int | None = None
    ended_millis: int | None = None
    last_event_millis: int | None = None
    recovered_from: RunId | None = None
    open_states: tuple[StateId, ...] = ()
    """States with an attempt in flight, in the order they were entered."""
    states: Mapping[StateId, StateSummary] = field(default_factory=dict)
    """Every state seen, in the order first seen."""
    orphan_streaks: Mapping[StateId, tuple[int, int]] = field(default_factory=dict)
    """State → (consecutive orphan recoveries, seq of the latest): see ``engine.workers.OrphanStreakCounter``."""
    last_error: tuple[StateId, str, str] | None = None
    """``(state_id, code, message)`` of the latest ``StateFailed``."""
    children: Mapping[RunId, ChildRunSummary] = field(default_factory=dict)
    """The child runs spawned, in spawn order."""
    anomalies: int = 0
    complete: bool = True
    """``False``: provisional (first envelope and tail only) while the whole log is folded."""

    @property
    def finished(self) -> bool:
        return self.status is not None

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": SUMMARY_VERSION,
            "run_id": str(self.run_id),
            "head": self.head,
            "op_id": self.op_id,
            "manifest_id": self.manifest_id,
            "initial_snapshot_id": self.initial_snapshot_id,
            "checkpoint_id": self.checkpoint_id,
            "final_snapshot_id": self.final_snapshot_id,
            "status": None if self.status is None else self.status.value,
            "started_millis": self.started_millis,
            "ended_millis": self.ended_millis,
            "last_event_millis": self.last_event_millis,
            "recovered_from": self.recovered_from,
            "open_states": list(self.open_states),
            "states": [_state_wire(s) for s in self.states.values()],
            "orphan_streaks": [[s, n, seq] for s, (n, seq) in self.orphan_streaks.items()],
            "last_error": None if self.last_error is None else list(self.last_error),
            "children": [[c.run_id, c.state_id, c.spawned_seq, c.status] for c in self.children.values()],
            "anomalies": self.anomalies,
            "complete": self.complete,
        }

    @classmethod
    def from_wire(cls, value: Any, *, states: Mapping[StateId, StateSummary] | None = None) -> RunSummary:
        """Inverse of :meth:`to_wire`; ``ValueError`` for anything malformed or of another version. ``states``:
        given by the caller (:func:`from_index_form`), ``value["states"]`` is not read."""
        try:
            if value["version"] != SUMMARY_VERSION:
                raise ValueError(f"summary version {value['version']!r}, expected {SUMMARY_VERSION}")
            if states is None:
                states = {s.state_id: s for s in (_state_from_wire(w) for w in value["states"])}
            children = [_child_from_wire(c) for c in value["children"]]
            err = value["last_error"]
            status = value["status"]
            return cls(
                run_id=RunId(value["run_id"]),
                head=_int(value["head"]),
                op_id=_opt(OpId, value["op_id"]),
                manifest_id=_opt(ArtifactId, value["manifest_id"]),
                initial_snapshot_id=_opt(ArtifactId, value["initial_snapshot_id"]),
                checkpoint_id=_opt(ArtifactId, value["checkpoint_id"]),
                final_snapshot_id=_opt(ArtifactId, value["final_snapshot_id"]),
                status=None if status is None else RunStatus(status),
                started_millis=_opt_int(value["started_millis"]),
                ended_millis=_opt_int(value["ended_millis"]),
                last_event_millis=_opt_int(value["last_event_millis"]),
                recovered_from=_opt(RunId, value["recovered_from"]),
                open_states=tuple(_opt(StateId, s) for s in value["open_states"]),
                states=states,
                orphan_streaks={_opt(StateId, s): (_int(n), _int(q)) for s, n, q in value["orphan_streaks"]},
                last_error=None if err is None else (_opt(StateId, err[0]), str(err[1]), str(err[2])),
                children={c.run_id: c for c in children},
                anomalies=_int(value["anomalies"]),
                complete=bool(value["complete"]),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"malformed run summary: {exc!r}") from None


class LazyStates(Mapping[StateId, StateSummary]):
    """A summary's ``states`` kept as the JSON text of their wire form, decoded on first use (a store-wide index
    holds thousands of summaries; a runs list decodes the states of the few runs it looks into)."""

    __slots__ = ("_decoded", "_text")

    def __init__(self, text: bytes) -> None:
        self._text = text
        self._decoded: dict[StateId, StateSummary] | None = None

    @property
    def text(self) -> bytes:
        """The wire form's JSON text (written back to an index without decoding it)."""
        return self._text

    def _states(self) -> dict[StateId, StateSummary]:
        decoded = self._decoded
        if decoded is None:
            try:
                states = [_state_from_wire(s) for s in json.loads(self._text)]
            except (ValueError, TypeError, KeyError, IndexError):  # the index was checked: not expected
                states = []
            decoded = self._decoded = {s.state_id: s for s in states}
        return decoded

    def __getitem__(self, key: StateId) -> StateSummary:
        return self._states()[key]

    def __iter__(self) -> Iterator[StateId]:
        return iter(self._states())

    def __len__(self) -> int:
        return len(self._states())

    def __repr__(self) -> str:
        return f"LazyStates({self._states()!r})"


def index_form(summary: RunSummary) -> tuple[list[Any], bytes]:
    """A complete ``summary`` for a store-wide index: its fields but ``states`` as a JSON list (positional, in
    :func:`from_index_form`'s order), and the states' wire form as JSON bytes (undecoded states are passed through
    as they were read)."""
    s = summary
    head = [
        s.head,
        s.op_id,
        s.manifest_id,
        s.initial_snapshot_id,
        s.checkpoint_id,
        s.final_snapshot_id,
        None if s.status is None else s.status.value,
        s.started_millis,
        s.ended_millis,
        s.last_event_millis,
        s.recovered_from,
        list(s.open_states),
        [[k, n, seq] for k, (n, seq) in s.orphan_streaks.items()],
        None if s.last_error is None else list(s.last_error),
        [[c.run_id, c.state_id, c.spawned_seq, c.status] for c in s.children.values()],
        s.anomalies,
    ]
    states = s.states
    if isinstance(states, LazyStates):
        return head, states.text
    return head, json.dumps([_state_wire(v) for v in states.values()], separators=(",", ":")).encode()


def from_index_form(run_id: RunId, head: Any, states: bytes) -> RunSummary:
    """Inverse of :func:`index_form` for the run ``run_id`` (the states stay undecoded until read); ``ValueError``
    when malformed."""
    try:
        (
            seq,
            op_id,
            manifest_id,
            initial_id,
            checkpoint_id,
            final_id,
            status,
            started,
            ended,
            last_event,
            recovered_from,
            open_states,
            streaks,
            err,
            children,
            anomalies,
        ) = head
        return RunSummary(
            run_id,
            _int(seq),
            _opt(OpId, op_id),
            _opt(ArtifactId, manifest_id),
            _opt(ArtifactId, initial_id),
            _opt(ArtifactId, checkpoint_id),
            _opt(ArtifactId, final_id),
            None if status is None else _STATUSES[status],
            _opt_int(started),
            _opt_int(ended),
            _opt_int(last_event),
            _opt(RunId, recovered_from),
            tuple(_opt(StateId, x) for x in open_states) if open_states else (),
            LazyStates(states),
            {_opt(StateId, k): (_int(n), _int(q)) for k, n, q in streaks} if streaks else {},
            None if err is None else (_opt(StateId, err[0]), str(err[1]), str(err[2])),
            {c.run_id: c for c in map(_child_from_wire, children)} if children else {},
            _int(anomalies),
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"malformed run summary in the index: {exc!r}") from None


def apply(summary: RunSummary, envelopes: Iterable[EventEnvelope]) -> RunSummary:
    """``summary`` with ``envelopes`` folded in (those at or below its head are ignored; a seq gap is allowed: a
    store may skip the domain events the fold ignores, see :data:`SUMMARY_DOMAIN_EVENTS`)."""
    fold = _Fold(summary)
    for env in envelopes:
        if env.seq <= fold.head:
            continue
        if env.run_id != summary.run_id:
            fold.anomalies += 1
            continue
        fold.feed(env)
    return fold.result() if fold.changed else summary


def summarize(run_id: RunId, envelopes: Iterable[EventEnvelope]) -> RunSummary:
    """The summary of a whole stream (a store without a summary cache)."""
    return apply(RunSummary(run_id), envelopes)


# -- the fold ------------------------------------------------------------------------------------------------------


class _Fold:
    """Mutable working copy of a summary (one ``apply``)."""

    def __init__(self, s: RunSummary) -> None:
        self.s = s
        self.head = s.head
        self.fields: dict[str, Any] = {}
        self.states = dict(s.states)
        self.open = list(s.open_states)
        self.streaks = dict(s.orphan_streaks)
        self.children = dict(s.children)
        self.anomalies = s.anomalies
        self.changed = False

    def result(self) -> RunSummary:
        return replace(
            self.s,
            head=self.head,
            states=self.states,
            open_states=tuple(self.open),
            orphan_streaks=self.streaks,
            children=self.children,
            anomalies=self.anomalies,
            **self.fields,
        )

    def get(self, name: str) -> Any:
        return self.fields[name] if name in self.fields else getattr(self.s, name)

    def feed(self, env: EventEnvelope) -> None:
        self.changed = True
        self.head = env.seq
        ts = env.ts_millis
        if ts is not None:
            self.fields["last_event_millis"] = ts
        ev = env.event
        if isinstance(ev, DomainEvent):
            self._domain(env.seq, ev)
        elif isinstance(ev, StateEntered):
            sv = self._state(ev.state_id)
            last = sv.last
            if last is not None and last.is_open:
                self.anomalies += 1
            att = AttemptSummary(ev.attempt, env.seq, ts, ev.base_snapshot_id)
            if ev.state_id in self.open:
                self.open.remove(ev.state_id)
            self.open.append(ev.state_id)
            # the constructor, not dataclasses.replace (a fold runs once per appended envelope): every field given
            self.states[ev.state_id] = StateSummary(sv.state_id, sv.attempts + 1, att, sv.last_failed, None, None)
        elif isinstance(ev, StateCompleted | StateFailed):
            self._ended(env.seq, ts, ev)
        elif isinstance(ev, RunStarted):
            if self.get("op_id") is not None and self.get("op_id") != ev.op_id:
                self.anomalies += 1
            self.fields.update(op_id=ev.op_id, manifest_id=ev.manifest_id, initial_snapshot_id=ev.initial_snapshot_id)
            if self.get("checkpoint_id") is None:
                self.fields["checkpoint_id"] = ev.initial_snapshot_id
            if self.get("started_millis") is None:
                self.fields["started_millis"] = ts
        elif isinstance(ev, RunCompleted):
            if self.open:
                self.anomalies += 1
            self.fields.update(status=ev.status, final_snapshot_id=ev.final_snapshot_id, ended_millis=ts)

    def _state(self, state_id: StateId) -> StateSummary:
        sv = self.states.get(state_id)
        if sv is None:
            sv = self.states[state_id] = StateSummary(state_id)
        return sv

    def _ended(self, seq: int, ts: int | None, ev: StateCompleted | StateFailed) -> None:
        sv = self._state(ev.state_id)
        att = sv.last
        attempts = sv.attempts
        if att is None or not att.is_open:
            self.anomalies += 1
            att = AttemptSummary(att.attempt + 1 if att is not None else 0, None, None, None)
            attempts += 1
        if ev.state_id in self.open:
            self.open.remove(ev.state_id)
        if isinstance(ev, StateCompleted):
            att = AttemptSummary(
                att.attempt,
                att.entered_seq,
                att.entered_millis,
                att.base_snapshot_id,
                seq,
                ts,
                True,
                ev.context_snapshot_id,
                att.error_code,
                att.error_message,
                att.retryable,
            )
            self.states[ev.state_id] = StateSummary(
                sv.state_id, attempts, att, sv.last_failed, None, sv.scheduled_next_attempt
            )
            self.fields["checkpoint_id"] = ev.context_snapshot_id
            self.streaks.pop(ev.state_id, None)
            return
        err = ev.error
        att = replace(
            att,
            terminal_seq=seq,
            terminal_millis=ts,
            error_code=err.code,
            error_message=err.message,
            retryable=err.retryable,
        )
        self.states[ev.state_id] = replace(sv, attempts=attempts, last=att, last_failed=att)
        self.fields["last_error"] = (ev.state_id, err.code, err.message)
        if err.code == _CODE_ORPHAN_RECOVERED:
            n = self.streaks.get(ev.state_id, (0, 0))[0]
            self.streaks[ev.state_id] = (n + 1, seq)
        else:
            self.streaks.pop(ev.state_id, None)

    def _domain(self, seq: int, ev: DomainEvent) -> None:
        if ev.name == _CRASH_LOOP_RESET:
            self.streaks.clear()
        elif ev.name == DOMAIN_EVENT_RECOVERED_FROM and isinstance(ev.payload, dict):
            try:
                self.fields["recovered_from"] = RunId(ev.payload.get("source_run_id"))
            except ValueError:
                self.anomalies += 1
        elif ev.name == DOMAIN_EVENT_RETRY_SCHEDULED:
            try:
                rs = RetryScheduled.model_validate(ev.payload)
            except ValueError:  # pydantic's ValidationError is a ValueError
                self.anomalies += 1
                return
            sv = self._state(rs.state_id)
            self.states[rs.state_id] = replace(
                sv, not_before_millis=rs.not_before_millis, scheduled_next_attempt=rs.next_attempt
            )
        elif ev.name in (DOMAIN_EVENT_CHILD_RUN_SPAWNED, DOMAIN_EVENT_CHILD_RUN_COMPLETED):
            self._child(seq, ev)

    def _child(self, seq: int, ev: DomainEvent) -> None:
        """The TUI's ``RunModel._fold_child`` rule: the spawning state is the only attempt open, if exactly one is;
        a ``child_run_completed`` of a child never announced is ignored."""
        payload: Any = ev.payload
        try:
            child = RunId(payload.get("child_run_id")) if isinstance(payload, dict) else None
        except ValueError:
            child = None
        if child is None:
            self.anomalies += 1
            return
        if ev.name == DOMAIN_EVENT_CHILD_RUN_SPAWNED:
            if child not in self.children:
                state = self.open[-1] if len(self.open) == 1 else None
                self.children[child] = ChildRunSummary(child, state, seq)
            return
        ref = self.children.get(child)
        if ref is not None:
            self.children[child] = replace(ref, status=str(payload.get("status")))


# -- wire helpers --------------------------------------------------------------------------------------------------


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


_IDS: dict[tuple[Any, Any], Any] = {}
"""Validated ids by (type, text): the same states and snapshots recur across a store's summaries, and validating
an id (a regex per segment) is most of the cost of reading a summary."""


def _opt(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    key = (kind, value)
    got = _IDS.get(key)
    if got is None:
        if len(_IDS) > 200_000:
            _IDS.clear()
        got = _IDS[key] = kind(value)
    return got


_ATTEMPT_FIELDS = tuple(AttemptSummary.__dataclass_fields__)
_STATUSES = {s.value: s for s in RunStatus}


def _attempt_wire(a: AttemptSummary | None) -> list[Any] | None:
    return None if a is None else [getattr(a, f) for f in _ATTEMPT_FIELDS]


def _attempt_from_wire(value: Any) -> AttemptSummary | None:
    if value is None:
        return None
    (attempt, entered_seq, entered_ms, base, terminal_seq, terminal_ms, completed, result, code, message, retry) = value
    return AttemptSummary(
        attempt=_int(attempt),
        entered_seq=_opt_int(entered_seq),
        entered_millis=_opt_int(entered_ms),
        base_snapshot_id=_opt(ArtifactId, base),
        terminal_seq=_opt_int(terminal_seq),
        terminal_millis=_opt_int(terminal_ms),
        completed=bool(completed),
        result_snapshot_id=_opt(ArtifactId, result),
        error_code=None if code is None else str(code),
        error_message=None if message is None else str(message),
        retryable=bool(retry),
    )


def _child_from_wire(value: Any) -> ChildRunSummary:
    run_id, state_id, spawned_seq, status = value
    return ChildRunSummary(
        run_id=_opt(RunId, run_id),
        state_id=_opt(StateId, state_id),
        spawned_seq=_int(spawned_seq),
        status=None if status is None else str(status),
    )


def _state_wire(s: StateSummary) -> list[Any]:
    last_failed = None if s.last_failed is None or s.last_failed == s.last else _attempt_wire(s.last_failed)
    same = s.last_failed is not None and s.last_failed == s.last
    return [
        s.state_id,
        s.attempts,
        _attempt_wire(s.last),
        "last" if same else last_failed,
        s.not_before_millis,
        s.scheduled_next_attempt,
    ]


def _state_from_wire(value: Any) -> StateSummary:
    state_id, attempts, last, last_failed, not_before, next_attempt = value
    last_att = _attempt_from_wire(last)
    return StateSummary(
        state_id=_opt(StateId, state_id),
        attempts=_int(attempts),
        last=last_att,
        last_failed=last_att if last_failed == "last" else _attempt_from_wire(last_failed),
        not_before_millis=_opt_int(not_before),
        scheduled_next_attempt=_opt_int(next_attempt),
    )
