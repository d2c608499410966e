"""A coroutine stepped inside a context of its own, in the awaiting task: what a task per state gave a sequential
run's handlers (their ``ContextVar.set`` stays theirs), without the task.

A sequential run awaits each state in the scheduler's own task (issue 12). Without more, every handler would share
that task's context: a ``ContextVar`` a handler sets would be seen by the next state's handler, and by the caller of
``Engine.start`` once the run returns. :func:`in_own_context` drives the state's coroutine the way ``asyncio.Task``
drives its coroutine, each step inside ``Context.run`` of a copy of the current context made when the state starts,
and hands whatever the coroutine yields (the future it waits on) up to the real task unchanged. So suspension,
wake-up, cancellation (``Task.cancel`` throws into the inner coroutine here, as ``await`` delegation would) and
``asyncio.current_task()`` behave exactly as with a plain ``await``; only the context differs.

Cost (memory store, no-op state that never suspends): one ``copy_context`` and one ``Context.run`` per state
(bench/runtime_per_state.py; figures in the issue-12 notes).
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["in_own_context"]

_T = TypeVar("_T")


@types.coroutine
def in_own_context(coro: Coroutine[Any, Any, _T]) -> Generator[Any, Any, _T]:
    """``await in_own_context(coro)`` is ``await coro`` with every step of ``coro`` run in a fresh copy of the
    current context (PEP 380 delegation: values and exceptions go down, what ``coro`` yields goes up)."""
    run = contextvars.copy_context().run
    send, throw = coro.send, coro.throw
    try:
        yielded = run(send, None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the common case: a state that never suspends
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            run(coro.close)
            raise
        except BaseException as exc:  # the task's throw (a cancel, a failed future): into the coroutine
            try:
                yielded = run(throw, exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = run(send, value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
