"""Child runs in the TUI: time from a child's ``RunCompleted`` to its parent's badge updating (issue 16).

A filesystem store holds a parent run whose ``run_children`` state spawned N children (each unfinished, its own
stream). The app watches the store (``watch=True``, as ``mfm tui`` does) with the parent's run screen open. Each
child in turn gets its ``RunCompleted`` appended through the store API; the figure is the time until the parent's
graph is redrawn with the badge counting one more finished child. The floor, measured in the same run: the time
until the parent's own appended event is on its screen (the same watcher, the run's own stream). Prints figures,
asserts nothing.

    .venv/bin/python bench/child_badge.py [--children 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine._kinds import ArtifactKind
from engine.child_runs import child_run_id
from engine.config import RunManifest
from engine.events import (
    DOMAIN_EVENT_CHILD_RUN_SPAWNED,
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateEntered,
)
from engine.hashing import canonical_json_bytes
from engine.ids import OpId, RunId, StateId
from engine.testing import base_config

PARENT = RunId("0b7f3c1e-9a2d-4e5f-8a6b-1c2d3e4f5a6b")
T0 = 1_767_225_600_000


async def _until(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.002)


async def _write_tree(store: Any, n: int) -> list[RunId]:
    async def start(run: RunId, op: str, state: str) -> list[EventEnvelope]:
        manifest = RunManifest(op_id=OpId(op), op_version="1", input_params={}, run_config=base_config())
        mid = await store.artifacts.put(ArtifactKind.MANIFEST, canonical_json_bytes(manifest.model_dump(mode="json")))
        snap = await store.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_json_bytes({}))
        return [
            EventEnvelope(
                run_id=run, seq=1, ts_millis=T0, event=RunStarted(op_id=op, manifest_id=mid, initial_snapshot_id=snap)
            ),
            EventEnvelope(
                run_id=run,
                seq=2,
                ts_millis=T0,
                event=StateEntered(state_id=StateId(f"demo.main.{state}"), attempt=0, base_snapshot_id=snap),
            ),
        ]

    kids = [child_run_id(PARENT, f"demo_children:spawn|i:{i}") for i in range(n)]
    envs = await start(PARENT, "demo_children", "run_children")
    for i, kid in enumerate(kids):
        payload = {"parent_run_id": str(PARENT), "child_run_id": str(kid), "child_manifest_id": "ab" * 32}
        envs.append(
            EventEnvelope(
                run_id=PARENT,
                seq=3 + i,
                ts_millis=T0,
                event=DomainEvent(name=DOMAIN_EVENT_CHILD_RUN_SPAWNED, payload=payload),
            )
        )
    await store.events.append(PARENT, 0, envs)
    for kid in kids:
        await store.events.append(kid, 0, await start(kid, "demo_child", "work"))
    return kids


async def measure(n: int) -> dict[str, Any]:
    from engine.stores.fs import FsStore
    from mfm_tui.app import make_app
    from mfm_tui.screens.run import RunScreen
    from mfm_tui.widgets.plan_graph import PlanGraph

    badges: list[tuple[float, str]] = []
    original = PlanGraph.set_graph

    def spy(self: PlanGraph, *args: Any, **kw: Any) -> None:
        original(self, *args, **kw)
        given = args[4] if len(args) > 4 else kw.get("badges")
        if given:
            badges.append((time.perf_counter(), " ".join(given.values())))

    PlanGraph.set_graph = spy  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        store = FsStore(Path(tmp) / "store")
        kids = await _write_tree(store, n)
        app = make_app(store, watch=True)
        badge_ms: list[float] = []
        own_ms: list[float] = []
        async with app.run_test(size=(120, 40)) as pilot:
            await _until(lambda: app.loaded, timeout=60)
            screen = RunScreen(run_id=PARENT)
            await app.push_screen(screen)
            await _until(lambda: screen._model_ready)
            await pilot.pause()
            for done, kid in enumerate(kids, start=1):
                want = f"{n} children: {done} ✓" + (f" {n - done} ⟳" if n - done else "")
                t0 = time.perf_counter()
                env = EventEnvelope(
                    run_id=kid,
                    seq=3,
                    ts_millis=T0,
                    event=RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=None),
                )
                await store.events.append(kid, 2, [env])
                await _until(lambda want=want: any(w == want for _, w in badges[-3:]))
                seen = next(t for t, w in reversed(badges) if w == want)
                badge_ms.append((seen - t0) * 1000)
                await asyncio.sleep(0.05 + (done % 5) * 0.017)  # at irregular moments of the poll cycle
                # The floor: an event of the parent's own stream, until the parent's screen has folded it.
                head = await store.events.head_seq(PARENT)
                tick = DomainEvent(name="tick", payload={"i": done})
                t1 = time.perf_counter()
                await store.events.append(
                    PARENT, head, [EventEnvelope(run_id=PARENT, seq=head + 1, ts_millis=T0, event=tick)]
                )
                await _until(lambda head=head: screen.model.last_seq > head)
                own_ms.append((time.perf_counter() - t1) * 1000)
                await asyncio.sleep(0.05 + (done % 3) * 0.021)
        store.close()
    badge_p50, own_p50 = statistics.median(badge_ms), statistics.median(own_ms)
    return {
        "children": n,
        "badge_p50_ms": round(badge_p50, 1),
        "badge_max_ms": round(max(badge_ms), 1),
        "own_stream_p50_ms (floor)": round(own_p50, 1),
        "ratio_badge_to_floor": round(badge_p50 / own_p50, 2) if own_p50 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=8)
    args = parser.parse_args()
    print("child RunCompleted -> parent badge updated:", asyncio.run(measure(args.children)))


if __name__ == "__main__":
    main()
