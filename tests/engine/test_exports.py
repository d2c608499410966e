"""``engine``'s public surface: every name of the seed's public API is importable from ``engine``.

``SEED_NAMES`` is the seed's (``mfm_machine``'s ``lib.rs``) public items: every ``pub struct``, ``pub enum``,
``pub trait``, ``pub type`` and ``pub const`` and the free function ``default_nix_flake_allowlist``
(methods such as ``new`` or ``as_str`` are not items of their own). The standard tags (``CONFIG`` …) live in
``standard_tags``, as in the seed. When the seed file is beside the project (``../shared/seed``), the list is
also checked against it, so a name added to the contract cannot be missed here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from pydantic import BaseModel

import engine

SEED_NAMES = frozenset(
    [
        "ArtifactId",
        "ArtifactKind",
        "ArtifactStore",
        "ArtifactWritten",
        "BackoffPolicy",
        "BuildProvenance",
        "CanonicalJsonPolicy",
        "ChildRunCompleted",
        "ChildRunSpawned",
        "ContextCheckpointing",
        "ContextError",
        "ContextKey",
        "DOMAIN_EVENT_ARTIFACT_WRITTEN",
        "DOMAIN_EVENT_CHILD_RUN_COMPLETED",
        "DOMAIN_EVENT_CHILD_RUN_SPAWNED",
        "DOMAIN_EVENT_FACT_RECORDED",
        "DOMAIN_EVENT_OP_BOUNDARY",
        "DependencyEdge",
        "DependencyStrategy",
        "DomainEvent",
        "DynContext",
        "DynState",
        "ErrorCategory",
        "ErrorCode",
        "ErrorInfo",
        "Event",
        "EventEnvelope",
        "EventProfile",
        "EventRecorder",
        "EventStore",
        "ExecutionEngine",
        "ExecutionMode",
        "ExecutionPlan",
        "FactKey",
        "FactRecorded",
        "IdValidationError",
        "Idempotency",
        "IoCall",
        "IoError",
        "IoMode",
        "IoProvider",
        "IoResult",
        "KernelEvent",
        "OpBoundary",
        "OpId",
        "OpPath",
        "PlanValidationError",
        "PlanValidator",
        "RetryPolicy",
        "RunConfig",
        "RunError",
        "RunId",
        "RunManifest",
        "RunPhase",
        "RunResult",
        "RunStatus",
        "SideEffectKind",
        "SnapshotPolicy",
        "StartRun",
        "State",
        "StateError",
        "StateGraph",
        "StateId",
        "StateMeta",
        "StateNode",
        "StateOutcome",
        "StorageError",
        "Stores",
        "Tag",
        "TypedContextExt",
        "default_nix_flake_allowlist",
        "standard_tags",
    ]
)
STANDARD_TAGS = ("CONFIG", "FETCH_DATA", "COMPUTE", "EXECUTE", "REPORT", "APPLY_SIDE_EFFECT", "IMPURE")
SEED_MODULES = [
    "ids",
    "canonical",
    "config",
    "meta",
    "errors",
    "context",
    "events",
    "io",
    "recorder",
    "state",
    "plan",
    "stores",
    "engine",
    "hashing",
    "runtime",
    "live_io",
    "exec_transport",
    "process_exec",
    "live_io_router",
    "live_io_registry",
    "replay_io",
]

_SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "000_2835d50285782689.txt"
_ITEM = re.compile(
    r"^\d+\s*pub (?:struct|enum|trait|type|const|mod) (\w+)|^\d+\s*pub fn (default_nix_flake_allowlist)\b", re.M
)


def test_every_seed_name_is_exported_from_engine() -> None:
    missing = sorted(n for n in SEED_NAMES if n not in engine.__all__ or not hasattr(engine, n))
    assert missing == []


def test_all_is_unique_and_resolvable() -> None:
    # Its order is ruff's RUF022 ("isort-style": CONSTANTS, Classes, functions), checked by `make lint`.
    assert len(engine.__all__) == len(set(engine.__all__))
    assert [n for n in engine.__all__ if not hasattr(engine, n)] == []
    assert [n for n in engine.__all__ if n.startswith("_") and n != "__version__"] == []


def test_standard_tags_match_the_seed() -> None:
    assert {t: getattr(engine.standard_tags, t) for t in STANDARD_TAGS} == {t: t.lower() for t in STANDARD_TAGS}


def test_every_seed_module_is_an_engine_module() -> None:
    assert [m for m in SEED_MODULES if importlib.util.find_spec(f"engine.{m}") is None] == []


def test_seed_name_list_matches_the_seed_file_when_present() -> None:
    if not _SEED.is_file():  # CI and the dev checkout have ../shared; an sdist does not
        return
    items = {a or b for a, b in _ITEM.findall(_SEED.read_text(encoding="utf-8"))}
    items -= set(STANDARD_TAGS) | set(SEED_MODULES)  # the nested module's consts; the modules themselves
    assert items == SEED_NAMES


def test_typed_context_ext_validates_on_read_and_serialises_on_write() -> None:
    class Point(BaseModel):
        x: int
        y: int

    ctx = engine.JsonContext()
    assert isinstance(ctx, engine.TypedContextExt)
    ctx.write_typed("p", Point(x=1, y=2))
    assert ctx.dump() == {"p": {"x": 1, "y": 2}}
    assert ctx.read_typed("p", Point) == Point(x=1, y=2)
    assert ctx.read_typed("absent", Point) is None
    ctx.write("p", {"x": "not a number"})
    try:
        ctx.read_typed("p", Point)
    except engine.ContextError as exc:
        assert exc.info.code == "context_deserialize_failed"
    else:
        raise AssertionError("a value that does not validate must raise context_deserialize_failed")
