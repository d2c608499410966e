"""``PostgresPoolStore``: the PostgreSQL store plus its run queue and its launcher (see :mod:`engine.pool`)."""

from __future__ import annotations

from collections.abc import Callable

from engine.pool.launcher import QueueLauncher
from engine.pool.queue import RunQueue
from engine.stores.postgres import NotifyMode, PostgresStore
from engine.workers.launcher import Launcher

__all__ = ["PostgresPoolStore"]


class PostgresPoolStore(PostgresStore):
    """The PostgreSQL store plus its run queue (``.queue``) and the launcher that queues runs there
    (``.launcher``, ``engine.workers.Launcher``): what ``open_store("postgresql://…")`` returns."""

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
        self.launcher: Launcher = QueueLauncher(self)

    def __repr__(self) -> str:
        return f"PostgresPoolStore({self.dsn!r}, schema={self.schema!r})"

    async def close(self) -> None:
        await self.queue.close()
        await super().close()
