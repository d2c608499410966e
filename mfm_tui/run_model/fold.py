"""The :class:`RunModel` fold: a run's envelopes (plus manifest, plan shape, lease, cancel) into a view model.

Part of :mod:`mfm_tui.run_model` (its face re-exports every public name); pure, no Textual, no IO.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from engine.config import RunManifest
from engine.events import (
    DOMAIN_EVENT_CHILD_RUN_COMPLETED,
    DOMAIN_EVENT_CHILD_RUN_SPAWNED,
    DOMAIN_EVENT_FACT_RECORDED,
    DOMAIN_EVENT_RECOVERED_FROM,
    DOMAIN_EVENT_RETRY_SCHEDULED,
    DomainEvent,
    EventEnvelope,
    RetryScheduled,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.events import RunStatus as EngineRunStatus
from engine.ids import ArtifactId, OpId, RunId, StateId
from engine.run_summary import AttemptSummary, RunSummary
from engine.workers import (
    DEFAULT_MAX_ORPHAN_RECOVERIES,
    DOMAIN_EVENT_CRASH_LOOP_RESET,
    OrphanStreak,
    OrphanStreakCounter,
)
from mfm_tui.run_model.enums import (
    CODE_RUN_CANCELLED,
    FINAL_STATUS,
    URGENCY,
    LeaseStatus,
    RunDisplayStatus,
    StateStatus,
)
from mfm_tui.run_model.views import AttemptView, ChildRef, FactRef, PlanShape, RetryTarget, StateView

__all__ = ["RunModel"]


class RunModel:
    """One run's events folded into a view model (see the module docstring)."""

    __slots__ = (  # a runs list holds 10,000 of them: ~0.8 KB each less than with a __dict__
        "_cancel_requested",
        "_crash_loop_limit",
        "_lazy",
        "_lease",
        "_op",
        "_orphans",
        "_placed",
        "_skip",
        "_status",
        "_sv",
        "_urgency",
        "anomalies",
        "checkpoint_id",
        "children",
        "ended_millis",
        "engine_status",
        "event_count",
        "final_snapshot_id",
        "indexing",
        "initial_snapshot_id",
        "last_event_millis",
        "last_seq",
        "load_error",
        "manifest",
        "manifest_id",
        "op_id",
        "parent_run_id",
        "plan",
        "recovered_by",
        "recovered_from",
        "replay_of",
        "requested_millis",
        "run_id",
        "start_requested",
        "started_millis",
        "summarized",
        "unattributed_facts",
    )

    def __init__(
        self,
        run_id: RunId,
        *,
        manifest: RunManifest | None = None,
        plan: PlanShape | None = None,
        lease: LeaseStatus = LeaseStatus.UNKNOWN,
        cancel_requested: bool = False,
        crash_loop_limit: int = DEFAULT_MAX_ORPHAN_RECOVERIES,
    ) -> None:
        self._lazy: RunSummary | None = None
        """A summary whose states are not made into views yet (``seed``): made when first needed (``_fill``)."""
        self.run_id = run_id
        self.op_id: OpId | None = None
        self.manifest_id: ArtifactId | None = None
        self.initial_snapshot_id: ArtifactId | None = None
        self.checkpoint_id: ArtifactId | None = None
        self.final_snapshot_id: ArtifactId | None = None
        self.engine_status: EngineRunStatus | None = None
        self.started_millis: int | None = None
        self.ended_millis: int | None = None
        self.last_event_millis: int | None = None
        self.last_seq = 0
        self.event_count = 0
        self._sv: dict[StateId, StateView] = {}
        """The states with attempts (and, once :attr:`states` is read, every planned state, in plan order); read
        through ``_states``."""
        self._placed = True
        """Whether the plan's states without attempts are in ``_states`` (see :attr:`states`)."""
        self.anomalies: list[str] = []
        self.manifest: RunManifest | None = None
        self.plan: PlanShape | None = None
        self._status: RunDisplayStatus | None = None
        self._urgency = 0
        self._lease = lease
        self._cancel_requested = cancel_requested
        self._orphans = OrphanStreakCounter()
        self._crash_loop_limit = max(1, crash_loop_limit)
        self.requested_millis: int | None = None
        """When a run with no events yet was asked to start (its start record, or queue row)."""
        self.start_requested = False
        """The run was asked to start (a start record or queue row exists): with no events and no live worker, it
        is "not started: worker lost" rather than merely unknown."""
        self.load_error: tuple[str, str] | None = None
        """``(code, message)`` when the run could not be read (set by the watcher)."""
        self.indexing = False
        """Seeded from a provisional summary (``seed``): the whole log is still being folded ("indexing…")."""
        self.summarized = False
        """Seeded from a summary (``seed``): what a runs list needs, not every attempt and fact (the run screen
        folds the run itself)."""
        self._op: list[StateId] = []
        """States with an attempt in flight; read through ``_open``."""
        self._skip: frozenset[str] = frozenset()
        self.unattributed_facts: list[FactRef] = []
        self.recovered_from: RunId | None = None
        """This run is the recovery run of that failed run (its ``recovered_from`` event)."""
        self.recovered_by: RunId | None = None
        """This failed run was recovered as that run (set by whoever sees both, e.g. the store watcher)."""
        self.children: dict[RunId, ChildRef] = {}
        """Child runs this run spawned (its ``child_run_spawned`` events, §16), in spawn order."""
        self.parent_run_id: RunId | None = None
        """This run is a child of that run (set by whoever sees both: a child's stream does not name its parent)."""
        self.replay_of: RunId | None = None
        """This run replays that run (its seeded facts carry ``meta.replayed_from``)."""
        """Facts recorded while several attempts were open (fan-out): the stream names no state."""
        if plan is not None:
            self.set_plan(plan)
        if manifest is not None:
            self.set_manifest(manifest)

    # ------------------------------------------------------------------ inputs

    @property
    def _states(self) -> dict[StateId, StateView]:
        if self._lazy is not None:
            self._fill(self._lazy)
        return self._sv

    @_states.setter
    def _states(self, value: dict[StateId, StateView]) -> None:
        self._sv = value

    @property
    def _open(self) -> list[StateId]:
        if self._lazy is not None:
            self._fill(self._lazy)
        return self._op

    @_open.setter
    def _open(self, value: list[StateId]) -> None:
        self._op = value

    @property
    def states(self) -> dict[StateId, StateView]:
        """Every state: the plan's in plan order (pending ones included), then those seen only in events.

        The plan's states that have no attempt yet are made on first read: a runs list of 10,000 runs of a 20-state
        plan never reads this (it counts with :attr:`done` and :attr:`total`), which kept 200,000 pending views
        (~40 MB) and 1 s of CPU off its first load (bench/tui.py, issue 15)."""
        if not self._placed:
            self._place()
        return self._states

    def _place(self) -> None:
        self._placed = True
        if self.plan is None:
            return
        known = self._states
        states: dict[StateId, StateView] = {}
        for sid in self.plan.state_ids:
            sv = known.pop(sid, None)
            if sv is None:
                sv = StateView(sid)  # no attempt: pending
                self._configure(sv)
            states[sid] = sv
        states.update(known)  # states seen in events but absent from the plan stay visible
        self._states = states

    def _ordered(self) -> Iterable[StateView]:
        """The states with attempts, in :attr:`states` order (without making the pending ones)."""
        if self._placed or self.plan is None or len(self._states) < 2:
            return self._states.values()
        index = _plan_index(self.plan)
        rest = len(index)
        return sorted(self._states.values(), key=lambda sv: index.get(sv.state_id, rest))  # stable: extras keep order

    def set_manifest(self, manifest: RunManifest) -> None:
        self._status = None
        self.manifest = manifest
        self._skip = frozenset(manifest.run_config.skip_tags)
        if self.op_id is None:
            self.op_id = manifest.op_id
        for sv in self._sv.values():  # (states not made yet are configured when made)
            self._configure(sv)
            self._refresh(sv)

    def set_plan(self, plan: PlanShape) -> None:
        self._status = None
        self.plan = plan
        self._placed = False  # the pending states are made when ``states`` is read
        for sv in self._sv.values():  # (states not made yet are configured when made)
            self._configure(sv)
            self._refresh(sv)

    def set_lease(self, lease: LeaseStatus) -> bool:
        changed = lease is not self._lease
        self.lease = lease
        return changed

    def set_start_requested(self, requested_millis: int | None) -> None:
        """The run has a start record (or queue row) from ``requested_millis`` (``engine.workers.pending_runs``)."""
        self.start_requested = True
        self.requested_millis = requested_millis
        self._status = None

    def set_crash_loop_limit(self, limit: int) -> bool:
        """K: consecutive orphan recoveries of one state that make an unattended run crash-looping."""
        limit = max(1, limit)
        changed = limit != self._crash_loop_limit
        self._crash_loop_limit = limit
        self._status = None
        return changed

    def set_cancel_requested(self, requested: bool) -> bool:
        changed = requested != self._cancel_requested
        self.cancel_requested = requested
        return changed

    def seed(self, summary: RunSummary) -> bool:
        """Replace what the events said with the store's summary of them (``engine.run_summary``): the runs list
        never reads a whole run. Each state keeps its last attempt (and its last failed one, for the error); facts
        and per-attempt domain events are not summarized; child runs are. ``apply`` may continue from
        ``summary.head``. Returns whether anything changed."""
        if summary.head == self.last_seq and summary.complete and not self.indexing:
            return False
        if self.manifest is None or summary.op_id is not None:
            self.op_id = summary.op_id
        self.manifest_id = summary.manifest_id
        self.initial_snapshot_id = summary.initial_snapshot_id
        self.checkpoint_id = summary.checkpoint_id
        self.final_snapshot_id = summary.final_snapshot_id
        self.engine_status = summary.status
        self.started_millis = summary.started_millis
        self.ended_millis = summary.ended_millis
        self.last_event_millis = summary.last_event_millis
        self.last_seq = self.event_count = summary.head
        self.recovered_from = summary.recovered_from
        self.indexing = not summary.complete
        self.summarized = True
        self._sv = {}
        self._op = []
        self._placed = self.plan is None
        self.children = {
            c.run_id: ChildRef(run_id=c.run_id, state_id=c.state_id, spawned_seq=c.spawned_seq, status=c.status)
            for c in summary.children.values()
        }
        self._orphans = OrphanStreakCounter.restore(summary.orphan_streaks, finished=summary.finished)
        self._lazy = summary  # its states become views when first read (most rows of a big list never need them)
        self._status = None
        return True

    def _fill(self, summary: RunSummary) -> None:
        """The seeded summary's states as views (with the manifest and plan known now)."""
        self._lazy = None
        for st in summary.states.values():
            sv = self._state(st.state_id)
            earlier = () if st.last_failed is None or st.last_failed == st.last else (st.last_failed,)
            sv.attempts = [_attempt(a) for a in (*earlier, st.last) if a is not None]
            sv.not_before_millis = st.not_before_millis
            sv.scheduled_next_attempt = st.scheduled_next_attempt
        self._op = [s for s in summary.open_states if s in self._sv]
        for sv in self._sv.values():
            self._refresh(sv)

    # ------------------------------------------------------------------ fold

    def apply(self, envelopes: Iterable[EventEnvelope]) -> bool:
        """Fold envelopes past ``last_seq``; return whether anything changed."""
        changed = False
        for env in envelopes:
            if env.run_id != self.run_id:
                self._anomaly(f"seq {env.seq}: envelope of run {env.run_id} in stream of {self.run_id}")
                continue
            if env.seq <= self.last_seq:
                continue
            if env.seq != self.last_seq + 1:
                self._anomaly(f"seq gap: {self.last_seq} then {env.seq}")
            self.last_seq = env.seq
            self.event_count += 1
            self._orphans.feed(env)
            if env.ts_millis is not None:
                self.last_event_millis = env.ts_millis
            self._fold(env)
            changed = True
        if changed:
            self._status = None
        return changed

    def _fold(self, env: EventEnvelope) -> None:
        ev = env.event
        ts = env.ts_millis
        if isinstance(ev, DomainEvent):
            self._fold_domain(env.seq, ev)
        elif isinstance(ev, StateEntered):
            sv = self._state(ev.state_id)
            last = sv.last
            if last is not None and last.is_open:
                self._anomaly(f"seq {env.seq}: {ev.state_id} entered while attempt {last.attempt} is open")
            sv.attempts.append(
                AttemptView(
                    attempt=ev.attempt, entered_seq=env.seq, entered_millis=ts, base_snapshot_id=ev.base_snapshot_id
                )
            )
            if ev.state_id in self._open:
                self._open.remove(ev.state_id)
            self._open.append(ev.state_id)
            sv.not_before_millis = None
            sv.scheduled_next_attempt = None
            self._refresh(sv)
        elif isinstance(ev, (StateCompleted, StateFailed)):
            sv = self._state(ev.state_id)
            att = sv.last
            if att is None or not att.is_open:
                self._anomaly(f"seq {env.seq}: {type(ev).tag()} for {ev.state_id} with no open attempt")
                n = att.attempt + 1 if att is not None else 0
                att = AttemptView(attempt=n, entered_seq=None, entered_millis=None, base_snapshot_id=None)
                sv.attempts.append(att)
            if ev.state_id in self._open:
                self._open.remove(ev.state_id)
            att.terminal_seq = env.seq
            att.terminal_millis = ts
            if isinstance(ev, StateCompleted):
                att.completed = True
                att.result_snapshot_id = ev.context_snapshot_id
            else:
                att.error_code = ev.error.code
                att.error_message = ev.error.message
                att.retryable = ev.error.retryable
            self._refresh(sv)
            if isinstance(ev, StateCompleted) and sv.status is StateStatus.COMPLETED:
                self.checkpoint_id = ev.context_snapshot_id
        elif isinstance(ev, RunStarted):
            if self.op_id is not None and self.manifest is None and self.op_id != ev.op_id:
                self._anomaly(f"seq {env.seq}: op changed from {self.op_id} to {ev.op_id}")
            self.op_id = ev.op_id
            self.manifest_id = ev.manifest_id
            self.initial_snapshot_id = ev.initial_snapshot_id
            if self.checkpoint_id is None:
                self.checkpoint_id = ev.initial_snapshot_id
            if self.started_millis is None:
                self.started_millis = ts
        elif isinstance(ev, RunCompleted):
            if self._open:
                self._anomaly(f"seq {env.seq}: RunCompleted while {', '.join(self._open)} open")
            self.engine_status = ev.status
            self.final_snapshot_id = ev.final_snapshot_id
            self.ended_millis = ts
            for sv in self._states.values():
                self._refresh(sv)

    def _fold_domain(self, seq: int, ev: DomainEvent) -> None:
        if ev.name == DOMAIN_EVENT_CRASH_LOOP_RESET:
            return  # an operator's resume marker (counted by the orphan streak), no attempt's event
        if ev.name == DOMAIN_EVENT_RECOVERED_FROM and isinstance(ev.payload, dict):
            try:
                self.recovered_from = RunId(ev.payload.get("source_run_id"))
            except ValueError:
                self._anomaly(f"seq {seq}: malformed recovered_from payload")
            return
        if ev.name == DOMAIN_EVENT_RETRY_SCHEDULED:
            try:
                rs = RetryScheduled.model_validate(ev.payload)
            except ValidationError:
                self._anomaly(f"seq {seq}: malformed retry_scheduled payload")
                return
            sv = self._state(rs.state_id)
            sv.not_before_millis = rs.not_before_millis
            sv.scheduled_next_attempt = rs.next_attempt
            self._refresh(sv)
            return
        if ev.name in (DOMAIN_EVENT_CHILD_RUN_SPAWNED, DOMAIN_EVENT_CHILD_RUN_COMPLETED):
            self._fold_child(seq, ev)
        if not self._open:
            if self.replay_of is None and ev.name == DOMAIN_EVENT_FACT_RECORDED and isinstance(ev.payload, dict):
                meta = ev.payload.get("meta")
                source = meta.get("replayed_from") if isinstance(meta, dict) else None
                if isinstance(source, str) and source:
                    with contextlib.suppress(ValueError):
                        self.replay_of = RunId(source)  # a replay's seeded facts name the run replayed
            return  # a domain event outside any attempt (op boundaries, child runs)
        fact: FactRef | None = None
        if ev.name == DOMAIN_EVENT_FACT_RECORDED:
            payload: Any = ev.payload
            key = payload.get("key") if isinstance(payload, dict) else None
            pid = payload.get("payload_id") if isinstance(payload, dict) else None
            try:
                payload_id = ArtifactId(pid) if pid is not None else ev.payload_ref
            except ValueError:
                payload_id = None
            fact = FactRef(seq=seq, key=str(key) if key is not None else "?", payload_id=payload_id)
        if len(self._open) > 1:
            # Several attempts are open (fan-out): the stream does not say whose event this is, so it is
            # shown at run level rather than guessed onto a state.
            if fact is not None:
                self.unattributed_facts.append(fact)
            return
        att = self._states[self._open[-1]].last
        if att is None:
            return
        att.domain_events += 1
        if fact is not None:
            att.facts.append(fact)

    def _fold_child(self, seq: int, ev: DomainEvent) -> None:
        payload: Any = ev.payload
        try:
            child = RunId(payload.get("child_run_id")) if isinstance(payload, dict) else None
        except ValueError:
            child = None
        if child is None:
            self._anomaly(f"seq {seq}: malformed {ev.name} payload")
            return
        if ev.name == DOMAIN_EVENT_CHILD_RUN_SPAWNED:
            if child not in self.children:
                state = self._open[-1] if len(self._open) == 1 else None
                self.children[child] = ChildRef(run_id=child, state_id=state, spawned_seq=seq)
            return
        ref = self.children.get(child)
        if ref is not None:
            ref.status = str(payload.get("status"))

    def children_of_state(self, state_id: StateId) -> list[ChildRef]:
        """The children one state spawned, in spawn order."""
        return [c for c in self.children.values() if c.state_id == state_id]

    def _state(self, state_id: StateId) -> StateView:
        sv = self._states.get(state_id)
        if sv is None:
            sv = StateView(state_id)
            self._states[state_id] = sv
            self._configure(sv)
        return sv

    def _configure(self, sv: StateView) -> None:
        if self.manifest is not None:
            sv.max_attempts = max(1, self.manifest.run_config.retry_policy.max_attempts)
        if self.plan is not None:
            sv.tags = tuple(self.plan.tags.get(sv.state_id, ()))

    def _refresh(self, sv: StateView) -> None:
        """Recompute one state's status from its attempts and the run-level inputs."""
        last = sv.last
        if last is None:
            sv.status = StateStatus.PENDING
            return
        if last.is_open:
            sv.status = StateStatus.RUNNING
            return
        if last.completed:
            sv.status = StateStatus.SKIPPED if self._is_skip(sv, last) else StateStatus.COMPLETED
            sv.not_before_millis = None
            return
        if last.error_code == CODE_RUN_CANCELLED:
            sv.status = StateStatus.CANCELLED
        elif self.engine_status is not None:
            # cancelled while waiting for its retry: the operator's cancel ended it, not the (retryable) failure
            backoff = self.engine_status is EngineRunStatus.CANCELLED and self._will_retry(sv, last)
            sv.status = StateStatus.CANCELLED if backoff else StateStatus.FAILED
        elif self._will_retry(sv, last):
            sv.status = StateStatus.RETRYING
        else:
            sv.status = StateStatus.FAILED
        if sv.status is StateStatus.RETRYING:
            if sv.scheduled_next_attempt is None and self.manifest is not None and last.terminal_millis is not None:
                delay = self.manifest.run_config.retry_policy.backoff_after(last.attempt).total_millis
                sv.not_before_millis = last.terminal_millis + delay
        else:
            sv.not_before_millis = None

    @staticmethod
    def _will_retry(sv: StateView, last: AttemptView) -> bool:
        if sv.scheduled_next_attempt is not None and sv.scheduled_next_attempt > last.attempt:
            return True  # the engine said so (retry_scheduled)
        return last.retryable and (sv.max_attempts is None or last.attempt + 1 < sv.max_attempts)

    def _is_skip(self, sv: StateView, att: AttemptView) -> bool:
        skip = self._skip
        if not skip:
            return False
        if self.plan is not None and sv.state_id in self.plan.tags:
            return bool(skip.intersection(sv.tags))
        # Without tags: a skipped state completes on its base snapshot with nothing in between (§7.2).
        return att.result_snapshot_id == att.base_snapshot_id and att.domain_events == 0

    def _anomaly(self, text: str) -> None:
        if len(self.anomalies) < 100:
            self.anomalies.append(text)

    # ------------------------------------------------------------------ views

    @property
    def status(self) -> RunDisplayStatus:
        """Cached until the next input changes the model (the runs list reads it many times)."""
        status = self._status
        if status is None:
            status = self._status = self._compute_status()
            self._urgency = URGENCY[status]
        return status

    @property
    def urgency(self) -> int:
        """``URGENCY[status]`` (0 = most urgent), cached with the status; a failed run that was recovered ranks
        with the finished ones (its recovery run carries on)."""
        if self._status is None:
            self.status  # noqa: B018 - computes and caches both
        if self.recovered_by is not None and self._status is RunDisplayStatus.FAILED:
            return URGENCY[RunDisplayStatus.CANCELLED]
        return self._urgency

    def _compute_status(self) -> RunDisplayStatus:
        if self.engine_status is not None:
            return FINAL_STATUS[self.engine_status]
        lease = self._lease
        if self.last_seq == 0:
            if lease is LeaseStatus.HELD:
                return RunDisplayStatus.STARTING
            if self.start_requested and lease in (LeaseStatus.STALE, LeaseStatus.NONE):
                return RunDisplayStatus.NOT_STARTED
            return RunDisplayStatus.PENDING
        if not lease.is_live and self.crash_loop is not None:
            return RunDisplayStatus.CRASH_LOOPING
        if lease is LeaseStatus.STALE:
            return RunDisplayStatus.WORKER_LOST
        if self._cancel_requested:
            return RunDisplayStatus.CANCELLING
        lazy = self._lazy
        if lazy is not None and lazy.last_error is None:
            return RunDisplayStatus.RUNNING  # no attempt ever failed: none retries (its states need not be made)
        if any(sv.status is StateStatus.RETRYING for sv in self._states.values()):
            return RunDisplayStatus.RETRYING
        return RunDisplayStatus.RUNNING

    @property
    def status_label(self) -> str:
        """The status in words, with where a crash loop is (``crash-looping at fetch``)."""
        status = self.status
        loop = self.crash_loop
        if status is RunDisplayStatus.CRASH_LOOPING and loop is not None:
            name = self._states[loop.state_id].short_name if loop.state_id in self._states else str(loop.state_id)
            return f"{status.label} at {name}"
        return status.label

    @property
    def crash_loop(self) -> OrphanStreak | None:
        """The state whose attempts ended in at least ``crash_loop_limit`` consecutive orphan recoveries (since the
        last explicit resume of a crash-looping run), if the run is unfinished; whether a worker holds the run now
        decides the status (``CRASH_LOOPING`` only without one)."""
        return self._orphans.crash_loop(self._crash_loop_limit)

    @property
    def orphan_streak(self) -> OrphanStreak | None:
        """The longest run of consecutive orphan recoveries of one state so far (whatever the limit)."""
        return self._orphans.longest

    @property
    def crash_loop_limit(self) -> int:
        return self._crash_loop_limit

    @property
    def lease(self) -> LeaseStatus:
        return self._lease

    @lease.setter
    def lease(self, value: LeaseStatus) -> None:
        self._lease = value
        self._status = None

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @cancel_requested.setter
    def cancel_requested(self, value: bool) -> None:
        self._cancel_requested = value
        self._status = None

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    @property
    def open_states(self) -> list[StateView]:
        """States with an attempt in flight (several under fan-out), in the order they were entered."""
        return [self._states[s] for s in self._open]

    @property
    def current_state(self) -> StateView | None:
        """The state the run is at: the failed one, else the latest open attempt, else a retrying one."""
        failed = self.failed_state
        if failed is not None:
            return failed
        if self._open:
            return self._states[self._open[-1]]
        retry = self.retry_target
        if retry is not None:
            return retry.state
        return None

    @property
    def failed_state(self) -> StateView | None:
        for sv in self._ordered():
            if sv.status is StateStatus.FAILED:
                return sv
        return None

    @property
    def cancelled_state(self) -> StateView | None:
        for sv in self._ordered():
            if sv.status is StateStatus.CANCELLED:
                return sv
        return None

    @property
    def error(self) -> tuple[str, str] | None:
        """``(code, message)`` of the failed state, if the run failed or is failing."""
        failed = self.failed_state
        return failed.error if failed is not None else None

    @property
    def retry_target(self) -> RetryTarget | None:
        """The earliest-due state waiting for a retry, if any."""
        best: StateView | None = None
        for sv in self._ordered():
            if sv.status is not StateStatus.RETRYING:
                continue
            if best is None or (sv.not_before_millis or 0) < (best.not_before_millis or 0):
                best = sv
        if best is None:
            return None
        return RetryTarget(best, best.attempt_number, best.max_attempts, best.not_before_millis)

    @property
    def done(self) -> int:
        return sum(1 for sv in self._states.values() if sv.status.is_done)  # a pending state is not done

    @property
    def total(self) -> int:
        if self._placed or self.plan is None:
            return len(self._states)
        index = _plan_index(self.plan)
        return len(index) + sum(1 for sid in self._states if sid not in index)

    @property
    def damaged(self) -> bool:
        """Its run log is damaged (``run_log_corrupt``): what this model holds is the readable prefix only."""
        return self.load_error is not None and self.load_error[0] == "run_log_corrupt"

    def state_status_text(self, sv: StateView) -> str:
        """A state's status as the CLI prints it: in a damaged run log, a state not finished in the readable prefix
        is ``unknown`` (what happened after the damage cannot be read), not ``running`` or ``pending``."""
        if self.damaged and sv.status not in _FINAL_STATE_STATUSES:
            return "unknown"
        return sv.status.value

    def duration_millis(self, now_millis: int) -> int | None:
        if self.started_millis is None or self.damaged:  # a damaged log: when (or whether) it ended is unknown
            return None
        if self.ended_millis is not None:
            end = self.ended_millis
        elif self.status in (RunDisplayStatus.WORKER_LOST, RunDisplayStatus.CRASH_LOOPING):
            end = self.last_event_millis or now_millis
        else:
            end = now_millis
        return max(0, end - self.started_millis)


def _attempt(a: AttemptSummary) -> AttemptView:
    return AttemptView(
        attempt=a.attempt,
        entered_seq=a.entered_seq,
        entered_millis=a.entered_millis,
        base_snapshot_id=a.base_snapshot_id,
        terminal_seq=a.terminal_seq,
        terminal_millis=a.terminal_millis,
        completed=a.completed,
        result_snapshot_id=a.result_snapshot_id,
        error_code=a.error_code,
        error_message=a.error_message,
        retryable=a.retryable,
    )


_PLAN_INDEX: dict[int, tuple[PlanShape, dict[StateId, int]]] = {}
"""Each plan shape's ``state id -> position`` (shared by every run of that plan; keyed by identity, plan kept)."""


def _plan_index(plan: PlanShape) -> dict[StateId, int]:
    hit = _PLAN_INDEX.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    if len(_PLAN_INDEX) >= 256:
        _PLAN_INDEX.clear()
    index = {sid: i for i, sid in enumerate(plan.state_ids)}
    _PLAN_INDEX[id(plan)] = (plan, index)
    return index


_FINAL_STATE_STATUSES = frozenset(
    {StateStatus.COMPLETED, StateStatus.FAILED, StateStatus.SKIPPED, StateStatus.CANCELLED}
)
