"""Stream analysis for resume (ENGINE-SPEC §4.3, §13 step 4), per state for fan-out (§0.5).

Walks a run's envelopes once and collects what resume needs: the first ``RunStarted``, the
completed states (with their snapshots), the last checkpoint, the last attempt per state, the last
recorded failure per state, every orphan attempt (one per state at most) and the ``RunCompleted``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from engine.errors import RunError
from engine.events import (
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.ids import ArtifactId, RunId, StateId

__all__ = ["EnvelopeViolation", "FailureRecord", "History", "Orphan", "ViolationKind", "analyze"]


class ViolationKind(StrEnum):
    RUN_ID_MISMATCH = "RunIdMismatch"
    NON_MONOTONIC_SEQ = "NonMonotonicSeq"
    NESTED_ATTEMPT = "NestedAttempt"
    TERMINAL_WITHOUT_ENTERED = "TerminalWithoutEntered"
    TERMINAL_STATE_MISMATCH = "TerminalStateMismatch"
    RUN_EVENT_INSIDE_ATTEMPT = "RunEventInsideAttempt"


class EnvelopeViolation(Exception):
    """A stream that breaks the attempt-envelope rule (§4.3).

    Its ``RunError`` code (§13 step 4): ``run_id_mismatch`` for a foreign run id,
    ``terminal_without_entered`` only for a ``StateFailed`` with no open attempt, else
    ``invalid_attempt_envelopes`` (a ``StateCompleted`` with no open attempt included).
    """

    def __init__(self, kind: ViolationKind, seq: int, message: str, *, failed_without_entered: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.seq = seq
        self.failed_without_entered = failed_without_entered

    @property
    def code(self) -> str:
        if self.kind is ViolationKind.RUN_ID_MISMATCH:
            return "run_id_mismatch"
        if self.failed_without_entered:
            return "terminal_without_entered"
        return "invalid_attempt_envelopes"

    def to_run_error(self) -> RunError:
        return RunError.invalid_plan(self.code, str(self), {"seq": self.seq, "violation": str(self.kind)})


@dataclass(frozen=True, slots=True)
class Orphan:
    state_id: StateId
    attempt: int
    base_snapshot_id: ArtifactId
    entered_seq: int
    run_id: RunId


@dataclass(frozen=True, slots=True)
class FailureRecord:
    attempt: int
    base_snapshot_id: ArtifactId
    retryable: bool
    code: str


@dataclass
class History:
    run_started: RunStarted | None = None
    completed: dict[StateId, ArtifactId] = field(default_factory=dict)
    completed_order: list[StateId] = field(default_factory=list)
    last_checkpoint: ArtifactId | None = None
    last_attempt: dict[StateId, int] = field(default_factory=dict)
    failures: dict[StateId, FailureRecord] = field(default_factory=dict)
    orphans: list[Orphan] = field(default_factory=list)
    run_completed: RunCompleted | None = None
    mentioned: set[StateId] = field(default_factory=set)
    last_seq: int = 0


def analyze(envelopes: Sequence[EventEnvelope], run_id: RunId | None = None) -> History:
    """Analyse a stream; raise :class:`EnvelopeViolation` on an attempt-envelope violation."""
    h = History()
    open_: dict[StateId, StateEntered] = {}
    open_seq: dict[StateId, int] = {}
    expected_run = run_id
    prev_seq = 0
    for env in envelopes:
        if expected_run is None:
            expected_run = env.run_id
        elif env.run_id != expected_run:
            raise EnvelopeViolation(
                ViolationKind.RUN_ID_MISMATCH, env.seq, f"envelope seq {env.seq} belongs to run {env.run_id}"
            )
        if env.seq <= prev_seq:
            raise EnvelopeViolation(
                ViolationKind.NON_MONOTONIC_SEQ, env.seq, f"seq {env.seq} does not follow seq {prev_seq}"
            )
        prev_seq = env.seq
        ev = env.event
        t = type(ev)
        if t is DomainEvent or (t is not StateEntered and t is not StateCompleted and isinstance(ev, DomainEvent)):
            continue  # (exact types first: pydantic models' isinstance goes through ABCMeta)
        if isinstance(ev, StateEntered):
            if ev.state_id in open_:
                raise EnvelopeViolation(
                    ViolationKind.NESTED_ATTEMPT,
                    env.seq,
                    f"StateEntered for {ev.state_id} at seq {env.seq} while its attempt is still open",
                )
            open_[ev.state_id] = ev
            open_seq[ev.state_id] = env.seq
            h.last_attempt[ev.state_id] = ev.attempt
            h.mentioned.add(ev.state_id)
        elif isinstance(ev, StateCompleted | StateFailed):
            entered = open_.pop(ev.state_id, None)
            if entered is None:
                if not open_:
                    raise EnvelopeViolation(
                        ViolationKind.TERMINAL_WITHOUT_ENTERED,
                        env.seq,
                        f"{type(ev).tag()} for {ev.state_id} at seq {env.seq} without an open attempt",
                        failed_without_entered=isinstance(ev, StateFailed),
                    )
                raise EnvelopeViolation(
                    ViolationKind.TERMINAL_STATE_MISMATCH,
                    env.seq,
                    f"terminal event for {ev.state_id} at seq {env.seq} while another state's attempt is open",
                )
            open_seq.pop(ev.state_id, None)
            h.mentioned.add(ev.state_id)
            if isinstance(ev, StateCompleted):
                h.completed[ev.state_id] = ev.context_snapshot_id
                if ev.state_id not in h.completed_order:
                    h.completed_order.append(ev.state_id)
                h.last_checkpoint = ev.context_snapshot_id
            else:
                h.failures[ev.state_id] = FailureRecord(
                    entered.attempt, entered.base_snapshot_id, ev.error.retryable, ev.error.code
                )
        elif isinstance(ev, RunStarted | RunCompleted):
            if open_:
                raise EnvelopeViolation(
                    ViolationKind.RUN_EVENT_INSIDE_ATTEMPT,
                    env.seq,
                    f"{type(ev).tag()} at seq {env.seq} while an attempt is open",
                )
            if isinstance(ev, RunStarted):
                if h.run_started is None:
                    h.run_started = ev
                    if h.last_checkpoint is None:
                        h.last_checkpoint = ev.initial_snapshot_id
            elif h.run_completed is None:
                h.run_completed = ev
    h.last_seq = prev_seq
    assert expected_run is not None or not envelopes
    h.orphans = [
        Orphan(sid, e.attempt, e.base_snapshot_id, open_seq[sid], expected_run)  # type: ignore[arg-type]
        for sid, e in open_.items()
    ]
    return h
