"""The state execution loop (ENGINE-SPEC §7) generalised to a ready-set scheduler (§0.5).

``Sequential`` is ``FanOutJoin{max_concurrency: 1}``. Ready states (all predecessors completed) are
launched in the deterministic topological order of §6.1, at most ``max_concurrency`` at a time. Each
launched state runs in its own task: attempts, retries and backoff sleeps (the slot is held during
the backoff, so never more than ``max_concurrency`` attempts are open).

Fan-out choices (documented, §0.5):
- a state's attempts all start from the same base (the checkpoint current when its first attempt
  was entered, §7 step 3); on success its delta (writes and deletes) is applied to the checkpoint
  current at completion, under a lock, and that result is the ``StateCompleted`` snapshot;
- with ``max_concurrency >= 2`` two states that may run concurrently (neither reaches the other)
  must not write or delete the same key: the second to complete fails non-retryably with
  ``fan_out_write_conflict``;
- a terminal failure stops scheduling new states and new retries; in-flight attempts are allowed to
  finish (their terminal events are written), then ``RunCompleted{Failed}``;
- a skipped (skip-tagged) state completes with the checkpoint current at completion, which is its
  base in sequential runs (§7.2) and keeps "every StateCompleted is the new checkpoint" true.

Appends (issue 12: the engine batches what the contract allows; order, seqs and payloads are those of
one append per event group). The batch is built at a *boundary* of the main loop, after the cancel
check and the scheduling decision: the ``StateEntered`` of every state launched there goes out in
one append, behind whatever was written logically since the last append (:meth:`EventWriter.defer`):
- ``StateCompleted(sₙ)`` is deferred (its snapshot is already durable), so it travels with
  ``StateEntered(sₙ₊₁)`` in a sequential run, and under fan-out with every state entered at that
  boundary; when nothing enters while other states run, it is flushed on its own at once;
- ``RunStarted`` (and the seed facts of a replay) and, on resume, the orphans' recovery
  ``StateFailed`` are deferred by the executor: they travel with the first ``StateEntered``;
- the run's last ``StateCompleted`` (or a terminal ``StateFailed``) shares its append with
  ``RunCompleted``; cancellation appends every deferred event, the ``run_cancelled`` failures and
  ``RunCompleted{Cancelled}`` together;
- a retry: ``StateFailed`` + ``retry_scheduled`` are appended before the backoff sleep (the monitor
  shows the countdown from them, and a crash during the sleep resumes at the next attempt without
  sleeping, §13 step 10); with a zero delay there is no sleep, so they are deferred and travel with
  the retry's ``StateEntered`` (after its cancel check).
A sequential run of N states therefore costs N+1 appends (it cost 2N+1): ``[RS, E₁]``,
``[C₁, E₂]`` … ``[Cₙ, RC]``. A crash can no longer fall between ``StateCompleted(sₙ)`` and
``StateEntered(sₙ₊₁)``; every crash point left is one the unbatched runtime had (§13).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable
from enum import Enum
from typing import Any

from engine._runtime.attempt import HandlerResult, run_handler, sanitize_error
from engine._runtime.invocation import Invocation, Override
from engine._runtime.isolation import in_own_context
from engine._wire import construct
from engine.config import EventProfile, FanOutJoin, RunConfig
from engine.engine import RunPhase, RunResult
from engine.errors import ErrorCategory, ErrorInfo, MfmError, RunError, StateError
from engine.events import (
    DOMAIN_EVENT_RETRY_SCHEDULED,
    DomainEvent,
    RunCompleted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from engine.ids import ArtifactId, StateId

__all__ = ["CODE_FAN_OUT_WRITE_CONFLICT", "CODE_RUN_CANCELLED", "Scheduler", "max_concurrency"]

CODE_RUN_CANCELLED = "run_cancelled"
CODE_FAN_OUT_WRITE_CONFLICT = "fan_out_write_conflict"
YIELD_EVERY = 32
"""A sequential run yields to the event loop after this many states (run in its own task, a state that never
suspends, as on the memory store, would otherwise keep the loop, and a cancel request polled from the control
store, for the whole run)."""


class _Outcome(Enum):
    COMPLETED = 1
    FAILED = 2
    STOPPED = 3
    NOT_STARTED = 4  # cancelled before its next attempt


def max_concurrency(config: RunConfig) -> int:
    mode = config.execution_mode
    return mode.max_concurrency if isinstance(mode, FanOutJoin) else 1


class Scheduler:
    def __init__(self, inv: Invocation, overrides: dict[StateId, Override] | None = None) -> None:
        self.inv = inv
        self.overrides = dict(overrides or {})
        self.mc = max_concurrency(inv.config)
        self.preds: dict[StateId, list[StateId]] = {s: [] for s in inv.order}
        for e in inv.plan.graph.edges:
            self.preds[e.to].append(e.from_)
        self.active = 0
        self.failed = False
        self.finished: RunStatus | None = None
        self._complete_lock = asyncio.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._written_by: dict[str, StateId] = {}
        self._ancestors: dict[StateId, frozenset[StateId]] | None = None
        self._inline: asyncio.Task[Any] | None = None  # this task while it runs a state itself (see _sequential)
        self._inline_cancelled = False  # _interrupt_inline cancelled it
        for sid in self.overrides:
            if sid not in self.preds:
                raise RunError.invalid_plan("start_state_not_in_plan", f"start state {sid} is not in the plan")
            if sid in inv.completed:
                raise RunError.invalid_plan("start_state_already_completed", f"start state {sid} has already completed")

    # ----------------------------------------------------------------------------------- main loop

    async def run(self) -> RunResult:
        inv = self.inv
        pos = {s: i for i, s in enumerate(inv.order)}
        succs: dict[StateId, list[StateId]] = {s: [] for s in inv.order}
        waiting: dict[StateId, int] = dict.fromkeys(inv.order, 0)
        for e in inv.plan.graph.edges:
            succs[e.from_].append(e.to)
            if e.from_ not in inv.completed:
                waiting[e.to] += 1
        ready = [pos[s] for s in inv.order if s not in inv.completed and waiting[s] == 0]
        heapq.heapify(ready)
        running: dict[asyncio.Future[Any], StateId] = {}
        cancel_wait: asyncio.Future[Any] = asyncio.ensure_future(inv.watcher.event.wait())
        cancel_wait.add_done_callback(self._wake)
        cancel_wait.add_done_callback(self._interrupt_inline)
        stopped = False
        try:
            if self.mc == 1:
                paused = await self._sequential(ready, succs, waiting, pos)
                if paused is not None:
                    return paused
            while self.mc > 1:  # fan-out
                # A boundary: the cancel check and the scheduling decision, then one batch.
                launch: list[tuple[StateId, int, ArtifactId]] = []
                while ready and len(running) + len(launch) < self.mc and not self.failed and not inv.watcher.cancelled:
                    launch.append(self._first_attempt(inv.order[heapq.heappop(ready)]))
                if launch:
                    self.active += len(launch)  # before the append: a state failing meanwhile must not end the run
                    await inv.writer.append(
                        [construct(StateEntered, state_id=s, attempt=a, base_snapshot_id=b) for s, a, b in launch]
                    )
                    if inv.watcher.cancelled:  # came while the batch was in the store: _finish closes them
                        self.active -= len(launch)
                        continue
                    for s, a, b in launch:
                        task = asyncio.ensure_future(self._run_state(s, a, b))
                        task.add_done_callback(self._wake)
                        running[task] = s
                elif running and inv.writer.pending:
                    await inv.writer.flush()  # completed here, nothing enters: durable now, not at a later boundary
                if not running:
                    break
                done = await self._wait_any(running, cancel_wait)
                if cancel_wait in done and self.finished is None:
                    await self._cancel_all(running)
                    running.clear()
                    break
                for t in done:
                    if t is cancel_wait:
                        continue
                    s = running.pop(t)
                    exc = t.exception()
                    if exc is not None:
                        await self._cancel_all(running)
                        if isinstance(exc, MfmError):
                            raise RunError.wrap(exc) from exc
                        raise exc
                    outcome = t.result()
                    if outcome is _Outcome.STOPPED:
                        stopped = True
                    elif outcome is _Outcome.COMPLETED:
                        self._release(s, succs, waiting, ready, pos)
                if stopped:
                    await self._cancel_all(running)
                    await inv.writer.flush()  # what other states wrote before the stop (not the stopped attempt)
                    return RunResult(run_id=inv.run_id, phase=RunPhase.RUNNING, final_snapshot_id=inv.checkpoint_id)
        except BaseException:
            await self._cancel_all(running)  # the caller cancelled us (or we failed): no task outlives the call
            with contextlib.suppress(Exception):
                await inv.writer.flush()  # best effort: events written logically before the failure stay written
            raise
        finally:
            cancel_wait.cancel()
        return await self._finish()

    async def _sequential(
        self,
        ready: list[int],
        succs: dict[StateId, list[StateId]],
        waiting: dict[StateId, int],
        pos: dict[StateId, int],
    ) -> RunResult | None:
        """The main loop of a sequential run (``max_concurrency == 1``). Returns a result only when a failpoint
        stopped the run; else ``_finish`` follows.

        Each state is awaited in this task instead of a task of its own (issue 12: a task, its done callback and the
        wake-up of the main loop cost more than a no-op state's own work), in a context of its own as a task would
        give it (:func:`in_own_context`: a handler's ``ContextVar.set`` stays its state's). The semantics of a state
        task are kept. The run's cancel interrupts the handler: :meth:`_interrupt_inline` cancels this task (through
        the writer, so never inside a store append) and the ``CancelledError`` is caught here, told apart from a
        cancellation of the caller by ``Task.uncancel``; the state's outcome is then ``None``, as whenever the cancel
        came while the state ran, whatever the handler did with it. Anything else the state raises leaves as it
        would have left its task's ``exception()``.
        """
        inv = self.inv
        order, watcher, writer = inv.order, inv.watcher, inv.writer
        task = asyncio.current_task()
        assert task is not None
        states = 0
        while ready and not self.failed and not watcher.cancelled:
            # A boundary: the cancel check and the scheduling decision (above), then one batch.
            s = order[heapq.heappop(ready)]
            s, a, b = self._first_attempt(s) if self.overrides else (s, 0, inv.checkpoint_id)
            self.active += 1  # before the append: a state failing meanwhile must not end the run
            await writer.append([construct(StateEntered, state_id=s, attempt=a, base_snapshot_id=b)])
            if watcher.cancelled:  # came while the batch was in the store: _finish closes it
                self.active -= 1
                break
            self._inline = task
            outcome: _Outcome | None
            try:
                outcome = await in_own_context(self._run_state(s, a, b))
            except asyncio.CancelledError:
                if not self._inline_cancelled:
                    raise  # not ours: the caller's
                outcome = None
            finally:
                self._inline = None
            if self._inline_cancelled:
                await self._interrupted(task)
                outcome = None
            states += 1
            if states % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # states that never suspend must not starve the loop
            if outcome is _Outcome.COMPLETED:
                self._release(s, succs, waiting, ready, pos)
            elif outcome is _Outcome.STOPPED:
                await writer.flush()
                return RunResult(run_id=inv.run_id, phase=RunPhase.RUNNING, final_snapshot_id=inv.checkpoint_id)
            elif outcome is None:  # the run's cancel interrupted it (or came as it ended)
                break
        return None

    def _release(
        self,
        sid: StateId,
        succs: dict[StateId, list[StateId]],
        waiting: dict[StateId, int],
        ready: list[int],
        pos: dict[StateId, int],
    ) -> None:
        """``sid`` completed: its successors whose predecessors are all done become ready."""
        completed = self.inv.completed
        for nxt in succs[sid]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0 and nxt not in completed:
                heapq.heappush(ready, pos[nxt])

    async def _interrupted(self, task: asyncio.Task[Any]) -> None:
        """After a state that :meth:`_interrupt_inline` cancelled: the cancel lands, and the caller's own cancel (told
        apart by ``Task.uncancel``) propagates."""
        self._inline_cancelled = False
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # a cancel held back by the writer (or not yet delivered) lands here
        if task.uncancel() > 0:
            raise asyncio.CancelledError  # the caller cancelled us as well

    def _interrupt_inline(self, _: asyncio.Future[Any]) -> None:
        """Done callback of the cancel wait: interrupt the state running in the scheduler's task, if any."""
        task = self._inline
        if task is not None and not self._inline_cancelled and self.finished is None:
            self._inline_cancelled = True
            self.inv.writer.cancel_task(task)

    def _wake(self, _: asyncio.Future[Any] | None) -> None:
        """Done callback of every state task and of the cancel wait: wakes :meth:`_wait_any`."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_any(
        self, running: dict[asyncio.Future[Any], StateId], cancel_wait: asyncio.Future[Any]
    ) -> list[asyncio.Future[Any]]:
        """``asyncio.wait(FIRST_COMPLETED)`` over the running states and the cancel wait, in the order ``asyncio.wait``
        would not guarantee either; without its per-call callback registration (the callbacks are registered once,
        when each task is made: one future per wait instead)."""
        while True:
            done = [t for t in running if t.done()]
            if cancel_wait.done():
                done.append(cancel_wait)
            if done:
                return done
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def _cancel_all(self, running: dict[asyncio.Future[Any], StateId]) -> None:
        for t in running:
            self.inv.writer.cancel_task(t)
        for t in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        running.clear()

    async def _finish(self) -> RunResult:
        inv = self.inv
        if self.finished is None:
            events: list[Any] = list(self._cancel_failures())  # open attempts exist only after a cancel
            if inv.watcher.cancelled and not self.failed and len(inv.completed) < len(inv.order):
                status = RunStatus.CANCELLED
            elif self.failed or len(inv.completed) < len(inv.order):
                status = RunStatus.FAILED
            else:
                status = RunStatus.COMPLETED
            events.append(construct(RunCompleted, status=status, final_snapshot_id=inv.checkpoint_id))
            await inv.writer.append(events)
            self.finished = status
        phase = {
            RunStatus.COMPLETED: RunPhase.COMPLETED,
            RunStatus.FAILED: RunPhase.FAILED,
            RunStatus.CANCELLED: RunPhase.CANCELLED,
        }[self.finished]
        return RunResult(run_id=inv.run_id, phase=phase, final_snapshot_id=inv.checkpoint_id)

    def _cancel_failures(self) -> list[StateFailed]:
        inv = self.inv
        reason = inv.watcher.reason or "cancelled"
        out = []
        for sid in inv.order:
            if sid in inv.writer.open:
                err = StateError(
                    ErrorInfo.new(
                        CODE_RUN_CANCELLED,
                        f"run cancelled: {reason}"[:300],
                        category=ErrorCategory.UNKNOWN,
                        retryable=False,
                    ),
                    sid,
                )
                out.append(
                    construct(StateFailed, state_id=sid, error=sanitize_error(err, sid), failure_snapshot_id=None)
                )
        return out

    # ----------------------------------------------------------------------------------- one state

    def _first_attempt(self, sid: StateId) -> tuple[StateId, int, ArtifactId]:
        """Where ``sid`` starts: its override (resume), else attempt 0 from the current checkpoint."""
        ov = self.overrides.pop(sid, None)
        if ov is not None:
            return sid, ov.attempt, ov.base_snapshot_id
        return sid, 0, self.inv.checkpoint_id

    async def _run_state(self, sid: StateId, attempt: int, base: ArtifactId) -> _Outcome:
        """The attempts of ``sid``; the first one's ``StateEntered`` was appended by the main loop."""
        inv = self.inv
        try:
            while True:
                res = await run_handler(inv, sid, attempt, base)
                if res.stopped:
                    return _Outcome.STOPPED
                if res.error is None:
                    # sequential: one state at a time, no other completion to exclude (no lock, no extra await)
                    conflict = await (self._complete_one(sid, res) if self.mc == 1 else self._complete(sid, res))
                    if conflict is None:
                        return _Outcome.COMPLETED
                    error = sanitize_error(conflict, sid)
                else:
                    error = res.error
                nxt = attempt + 1
                retry = error.retryable and nxt < inv.config.retry_policy.max_attempts and not self.failed
                if not retry:
                    self.failed = True
                    tail = self._tail(failed=True)
                    await inv.writer.append(
                        [construct(StateFailed, state_id=sid, error=error, failure_snapshot_id=None), *tail],
                        after=self._mark_finished(tail),
                    )
                    return _Outcome.FAILED
                delay = inv.config.retry_policy.backoff_after(attempt)
                now = inv.clock.now_millis()
                events: list[Any] = [construct(StateFailed, state_id=sid, error=error, failure_snapshot_id=None)]
                if inv.config.event_profile != EventProfile.MINIMAL:
                    events.append(
                        construct(
                            DomainEvent,
                            name=DOMAIN_EVENT_RETRY_SCHEDULED,
                            payload={
                                "state_id": str(sid),
                                "failed_attempt": attempt,
                                "next_attempt": nxt,
                                "delay_ms": delay.total_millis,
                                "not_before_millis": now + delay.total_millis,
                            },
                            payload_ref=None,
                        )
                    )
                if delay.total_nanos > 0:
                    await inv.writer.append(events, ts=now)
                    await self._backoff(sid, nxt, delay.total_nanos / 1e9)
                else:
                    inv.writer.defer(events, ts=now)  # no sleep between: they travel with the next StateEntered
                attempt = nxt
                if inv.watcher.cancelled:
                    return _Outcome.NOT_STARTED
                await inv.writer.append([construct(StateEntered, state_id=sid, attempt=attempt, base_snapshot_id=base)])
        finally:
            self.active -= 1
            if self._waiter is not None:  # the main loop resumes in the loop iteration that sees this task done
                self._wake(None)

    async def _backoff(self, sid: StateId, attempt: int, seconds: float) -> None:
        """The wait before ``attempt`` of ``sid``: the sleeper's, cut short by an operator's retry-now request."""
        sleep = asyncio.ensure_future(self.inv.sleeper.sleep(seconds))
        asked = asyncio.ensure_future(self.inv.watcher.retry_now(str(sid), attempt))
        try:
            await asyncio.wait({sleep, asked}, return_when=asyncio.FIRST_COMPLETED)
            if sleep.done():
                sleep.result()  # a sleeper's error is the run's
        finally:
            for task in (sleep, asked):
                task.cancel()
            await asyncio.gather(sleep, asked, return_exceptions=True)

    def _mark_finished(self, tail: list[Any]) -> Callable[[], None] | None:
        if not tail:
            return None
        status = tail[-1].status

        def after() -> None:
            self.finished = status

        return after

    def _tail(self, *, failed: bool, completing: StateId | None = None) -> list[Any]:
        """``RunCompleted`` to batch with a terminal event when this is the run's last event."""
        inv = self.inv
        if not failed and len(inv.completed) + (completing is not None and completing not in inv.completed) != len(
            inv.order
        ):
            return []  # states are left (checked first: the common case, no cancel poll)
        if self.active != 1 or inv.watcher.cancelled or self.finished is not None:
            return []
        if failed:
            return [construct(RunCompleted, status=RunStatus.FAILED, final_snapshot_id=inv.checkpoint_id)]
        return [construct(RunCompleted, status=RunStatus.COMPLETED, final_snapshot_id=None)]

    async def _complete(self, sid: StateId, res: HandlerResult) -> StateError | None:
        """Apply the attempt's delta to the current checkpoint and append ``StateCompleted`` (fan-out: under the
        completion lock; a sequential run calls :meth:`_complete_one` directly)."""
        async with self._complete_lock:
            return await self._complete_one(sid, res)

    async def _complete_one(self, sid: StateId, res: HandlerResult) -> StateError | None:
        inv = self.inv
        delta = res.context.delta if res.context is not None else {}
        if self.mc > 1 and delta:
            conflict = self._conflict(sid, delta)
            if conflict is not None:
                return conflict
        if inv.checkpoint_value is None:
            inv.checkpoint_value = await inv.snapshots.load(inv.checkpoint_id)
        if delta:
            written = inv.snapshots.write_delta_held(inv.checkpoint_id, inv.checkpoint_value, delta)
            if written is None:  # a store without the run's overlay: written now
                written = await inv.snapshots.write_delta(inv.checkpoint_id, inv.checkpoint_value, delta)
            new_id, new_value = written
        else:
            new_value, new_id = inv.checkpoint_value, inv.checkpoint_id
        done = construct(StateCompleted, state_id=sid, context_snapshot_id=new_id)
        if self._tail(failed=False, completing=sid):  # the run's last event: one batch with RunCompleted

            def last() -> None:
                self._completed(sid, new_id, new_value, delta)
                self.finished = RunStatus.COMPLETED

            rc = construct(RunCompleted, status=RunStatus.COMPLETED, final_snapshot_id=new_id)
            await inv.writer.append([done, rc], after=last)
        else:
            # The snapshot is held (write_delta_held) and becomes durable with StateCompleted in the next batch,
            # which the main loop builds at this boundary (with the next StateEntered, or alone).
            inv.writer.defer([done])
            self._completed(sid, new_id, new_value, delta)
        return None

    def _completed(self, sid: StateId, new_id: ArtifactId, new_value: dict[str, Any], delta: dict[str, Any]) -> None:
        """``sid``'s completion is written (logically at least): the new checkpoint."""
        inv = self.inv
        inv.checkpoint_id = new_id
        inv.checkpoint_value = new_value
        inv.completed[sid] = new_id
        if self.mc > 1:  # who wrote what matters to fan-out conflicts only
            for k in delta:
                self._written_by[k] = sid

    # ----------------------------------------------------------------------------------- fan-out conflicts

    def _conflict(self, sid: StateId, delta: dict[str, Any]) -> StateError | None:
        for key in delta:
            other = self._written_by.get(key)
            if other is None or other == sid or not self._concurrent(sid, other):
                continue
            return StateError.new(
                CODE_FAN_OUT_WRITE_CONFLICT,
                f"fan-out write conflict on context key {key!r}: written by {other} and by {sid}, "
                "which may run concurrently",
                retryable=False,
                details={"key": key, "states": [str(other), str(sid)]},
                state_id=sid,
            )
        return None

    def _concurrent(self, a: StateId, b: StateId) -> bool:
        if self._ancestors is None:
            anc: dict[StateId, frozenset[StateId]] = {}
            for s in self.inv.order:  # topological: predecessors are done first
                acc: set[StateId] = set()
                for p in self.preds[s]:
                    acc.add(p)
                    acc |= anc[p]
                anc[s] = frozenset(acc)
            self._ancestors = anc
        return a not in self._ancestors[b] and b not in self._ancestors[a]

    def seed_written_by(self, written: dict[str, StateId]) -> None:
        """Resume: keys written by already completed states (for conflict checks)."""
        self._written_by.update(written)
