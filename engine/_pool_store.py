"""``PostgresPoolStore`` (the PostgreSQL store plus its run queue) and :func:`lease_info`, the database
implementation behind ``engine.workers.lease_state`` (see :mod:`engine.pool`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engine._pool_queue import RunQueue
from engine.ids import RunId
from engine.stores.postgres import NotifyMode, PostgresStore

if TYPE_CHECKING:
    from engine.workers import LeaseInfo

__all__ = ["PostgresPoolStore", "lease_info"]


class PostgresPoolStore(PostgresStore):
    """The PostgreSQL store plus its run queue (``.queue``): what ``open_store("postgresql://…")`` returns."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        max_connections: int = 4,
        clock: Callable[[], int] | None = None,
        notify: NotifyMode = "after",
    ) -> None:
        super().__init__(dsn, schema=schema, max_connections=max_connections, clock=clock, notify=notify)
        self.queue = RunQueue(self, dsn)

    def __repr__(self) -> str:
        return f"PostgresPoolStore({self.dsn!r}, schema={self.schema!r})"

    async def close(self) -> None:
        await self.queue.close()
        await super().close()


# ---------------------------------------------------------------------------------------------
# Lease probe (the database implementation behind engine.workers.lease_state)
# ---------------------------------------------------------------------------------------------


def lease_info(store: PostgresPoolStore, run_id: RunId) -> LeaseInfo:
    """The run's lease as ``engine.workers.LeaseInfo``, read from its queue row (never waits on a lock)."""
    from engine.workers import LeaseInfo, LeaseState

    row = store.queue.row_sync(run_id)
    if row is None:
        return LeaseInfo(LeaseState.NONE)
    if row.done:
        return LeaseInfo(LeaseState.NONE, row.pid, row.host, row.claimed_at_millis, row.action)
    if not row.owned:
        return LeaseInfo(LeaseState.HELD, None, None, None, "queued")
    state = LeaseState.HELD if row.lease_live else LeaseState.STALE
    return LeaseInfo(state, row.pid, row.host, row.claimed_at_millis, row.action)
