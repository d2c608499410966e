"""Test helpers: the common fixtures of CONFORMANCE.md, usable by any test or benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine._kinds import ArtifactKind
from engine.config import Duration, EventProfile, Fixed, IoMode, RetryPolicy, RunConfig, RunManifest
from engine.engine import Stores
from engine.hashing import canonical_json_bytes
from engine.ids import ArtifactId, OpId, StateId
from engine.plan import DependencyEdge, ExecutionPlan, StateGraph, StateNode
from engine.state import State

__all__ = ["base_config", "make_manifest", "make_plan", "replay_config", "sid", "store_manifest"]


def base_config(**changes: Any) -> RunConfig:
    """Live; max_attempts 3, Fixed 0 ms; Minimal; Sequential; no skip tags."""
    cfg = RunConfig(
        io_mode=IoMode.LIVE,
        retry_policy=RetryPolicy(max_attempts=3, backoff=Fixed(delay=Duration.from_millis(0))),
        event_profile=EventProfile.MINIMAL,
    )
    return cfg.model_copy(update=changes) if changes else cfg


def replay_config(**changes: Any) -> RunConfig:
    return base_config(io_mode=IoMode.REPLAY, **changes)


def make_manifest(cfg: RunConfig, *, op_id: str = "op", input_params: Any = None) -> RunManifest:
    return RunManifest(
        op_id=OpId(op_id), op_version="0", input_params={} if input_params is None else input_params, run_config=cfg
    )


async def store_manifest(stores: Stores, manifest: RunManifest) -> ArtifactId:
    """Store the manifest's canonical bytes as a ``Manifest`` artifact; return its id."""
    return await stores.artifacts.put(ArtifactKind.MANIFEST, canonical_json_bytes(manifest.model_dump(mode="json")))


def sid(local: str) -> StateId:
    """``machine.main.<local>``."""
    return StateId(f"machine.main.{local}")


def make_plan(
    states: Sequence[tuple[str, State]], edges: Sequence[tuple[str, str]] = (), *, op_id: str = "op"
) -> ExecutionPlan:
    """A plan from ``(local_name, state)`` pairs and ``(from_local, to_local)`` edges."""
    return ExecutionPlan(
        op_id=OpId(op_id),
        graph=StateGraph(
            states=tuple(StateNode(id=sid(name), state=st) for name, st in states),
            edges=tuple(DependencyEdge.of(sid(a), sid(b)) for a, b in edges),
        ),
    )
