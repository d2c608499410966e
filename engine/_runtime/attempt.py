"""One attempt of one state (ENGINE-SPEC §8), up to the handler's verdict.

``run_handler`` runs an attempt whose ``StateEntered`` the scheduler has appended (§8 step 1: the
scheduler batches it with whatever completed at the same boundary): it loads the base snapshot, builds
the IO provider and recorder, calls the handler and returns what happened. Writing the terminal event
is left to the scheduler too, which knows what it can share an append with (``retry_scheduled``, the
next ``StateEntered``, ``RunCompleted``). Engine-internal failures (snapshot load, storage) propagate
as ``MfmError`` and leave the attempt open.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine._runtime.context_runtime import StagedContext
from engine._runtime.invocation import Invocation
from engine._secrets import contains_secrets
from engine.config import IoMode
from engine.errors import ErrorInfo, MfmError, RunError, RunErrorKind, StateError
from engine.ids import ArtifactId, StateId
from engine.io import IoProvider
from engine.live_io import LiveIo
from engine.meta import SideEffectKind
from engine.replay_io import ReplayIo

__all__ = ["REDACTED", "HandlerResult", "run_handler", "sanitize_error"]

REDACTED = "error details redacted"


@dataclass(slots=True)
class HandlerResult:
    skipped: bool = False
    stopped: bool = False
    context: StagedContext | None = None
    error: StateError | None = None


def sanitize_error(err: StateError, state_id: StateId) -> StateError:
    """§8 step 8: fill ``state_id``, drop ``details``, redact a secret-looking message."""
    info = err.info
    message = REDACTED if contains_secrets(info.message) else info.message
    clean = ErrorInfo(code=info.code, category=info.category, retryable=info.retryable, message=message, details=None)
    return StateError(clean, err.state_id if err.state_id is not None else state_id)


def as_state_error(exc: Exception) -> StateError:
    """What a handler raised, as a ``StateError`` (contract errors keep code/category/retryable)."""
    if isinstance(exc, StateError):
        return exc
    if isinstance(exc, MfmError):
        return StateError(exc.info)
    return StateError.new("state_handler_exception", f"state handler raised {type(exc).__name__}")


async def run_handler(inv: Invocation, state_id: StateId, attempt: int, base: ArtifactId) -> HandlerResult:
    """Attempt ``attempt`` of ``state_id`` from ``base``, its ``StateEntered`` already written."""
    state = inv.states[state_id]
    meta = inv.metas[state_id]
    if inv.skip_tags and not inv.skip_tags.isdisjoint(meta.tags):
        return HandlerResult(skipped=True)
    base_value = inv.snapshots.cached(base)
    if base_value is None:
        base_value = await inv.snapshots.load(base)
    ctx = StagedContext(base_value)
    io: IoProvider
    # §0.10: an ApplySideEffect state's unkeyed calls get fact keys derived from its idempotency key
    se_key = meta.idempotency.key_value if meta.side_effects is SideEffectKind.APPLY_SIDE_EFFECT else None
    if inv.config.io_mode is IoMode.REPLAY:
        io = ReplayIo(
            run_id=inv.run_id,
            state_id=state_id,
            attempt=attempt,
            facts=inv.facts,
            stores=inv.stores,
            missing_fact_retryable=inv.config.replay_missing_fact_retryable,
            side_effect_key=se_key,
        )
    else:
        io = LiveIo(
            run_id=inv.run_id,
            state_id=state_id,
            attempt=attempt,
            facts=inv.facts,
            stores=inv.stores,
            run_config=inv.config,
            factory=inv.factory,
            writer=inv.writer,
            clock=inv.clock,
            sleeper=inv.sleeper,
            random_source=inv.random_source,
            side_effect_key=se_key,
        )
    error: StateError | None = None
    try:
        await state.handle(ctx, io, inv.recorder)
    except RunError as exc:
        if exc.kind is not RunErrorKind.OTHER:  # storage/context trouble inside the engine: abort
            raise
        error = as_state_error(exc)
    except Exception as exc:  # a handler's failure, whatever it raised (CancelledError passes)
        error = as_state_error(exc)
    if inv.failpoints is not None and inv.failpoints.take_stop_after_handler(state_id):
        return HandlerResult(stopped=True)
    if error is not None:
        return HandlerResult(error=sanitize_error(error, state_id))
    return HandlerResult(context=ctx)
