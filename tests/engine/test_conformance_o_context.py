"""CONFORMANCE.md section O: context (O95, SDK namespacing, ENGINE-SPEC §10.4).

O94 (snapshot must be an object, through the engine) belongs to the runtime tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engine.context import DynContext, JsonContext
from engine.errors import ContextError, ContextErrorKind
from engine.hashing import canonical_json_bytes
from engine.ids import ContextKey
from engine.namespacing import NamespacedContext, export_key, import_map

Step = Callable[[DynContext], None]


def _step1(ctx: DynContext) -> None:
    ctx.write("x", "v1")


def _step2(ctx: DynContext) -> None:
    ctx.write("y", ctx.read("x"))


def _step3(ctx: DynContext) -> None:
    ctx.write("x", "v2")


def _run_pipeline(*, legacy: bool) -> dict[str, Any]:
    """Pipeline ``m``: step1 exports x; step2 imports x and writes y; step3 writes x (no exports).

    All three steps run over ONE engine context, each through its own namespaced view, the way
    the SDK wraps every planned state.
    """
    engine_ctx = JsonContext()
    steps: list[tuple[str, Step, set[str], dict[str, ContextKey]]] = [
        ("m.step1", _step1, {"x"}, {}),
        ("m.step2", _step2, set(), import_map({"x": ("m.step1", "x")}, legacy=legacy)),
        ("m.step3", _step3, set(), {}),
    ]
    for op_path, handler, exports, imports in steps:
        view = NamespacedContext(engine_ctx, op_path, exports, imports, legacy=legacy)
        assert isinstance(view, DynContext)
        handler(view)
    return engine_ctx.dump()


def test_o95_namespacing_pipeline_newest_sdk_slots() -> None:
    """O95 [derived]: newest SDK → m.step1.out.x, m.step2.work.y, m.step3.work.x."""
    final = _run_pipeline(legacy=False)
    assert final == {"m.step1.out.x": "v1", "m.step2.work.y": "v1", "m.step3.work.x": "v2"}
    # The engine persists the full, un-namespaced dump; it canonicalises like any snapshot.
    assert canonical_json_bytes(final) == (b'{"m.step1.out.x":"v1","m.step2.work.y":"v1","m.step3.work.x":"v2"}')


def test_o95_namespacing_pipeline_older_sdk() -> None:
    """O95: older SDK (no slots) → m.step1.x, m.step2.y, m.step3.x."""
    assert _run_pipeline(legacy=True) == {"m.step1.x": "v1", "m.step2.y": "v1", "m.step3.x": "v2"}


def test_o95_explicit_slots() -> None:
    inner = JsonContext({"m.a.out.x": "from_a"})
    view = NamespacedContext(inner, "m.b", exports={"r"}, imports={"x": "m.a.out.x"})
    assert view.read("in.x") == "from_a"  # resolved through the import map
    assert view.read("in.missing") is None
    view.write("in.z", 1)  # explicit-slot writes stay under P
    view.write("out.r", 2)
    view.write("work.tmp", 3)
    assert view.read("in.z") == 1
    assert view.read("out.r") == 2 and view.read("r") == 2  # export port: bare and slot agree
    assert view.read("work.tmp") == 3 and view.read("tmp") == 3
    assert inner.dump() == {"m.a.out.x": "from_a", "m.b.in.z": 1, "m.b.out.r": 2, "m.b.work.tmp": 3}
    view.delete("work.tmp")
    view.delete("r")
    assert inner.dump() == {"m.a.out.x": "from_a", "m.b.in.z": 1}


def test_o95_writing_an_imported_bare_key_goes_to_work_not_the_exporter() -> None:
    inner = JsonContext({"m.a.out.x": "from_a"})
    view = NamespacedContext(inner, "m.b", imports={"x": "m.a.out.x"})
    assert view.read("x") == "from_a"
    view.write("x", "mine")
    # Reads keep resolving through the import; the exporter's value is untouched.
    assert view.read("x") == "from_a"
    assert inner.dump() == {"m.a.out.x": "from_a", "m.b.work.x": "mine"}
    view.delete("x")
    assert inner.read("m.a.out.x") == "from_a"


def test_o95_export_wins_over_import_for_bare_keys() -> None:
    inner = JsonContext({"m.a.out.x": "from_a", "m.b.out.x": "own"})
    view = NamespacedContext(inner, "m.b", exports={"x"}, imports={"x": "m.a.out.x"})
    assert view.read("x") == "own"
    assert view.read("in.x") == "from_a"


def test_o95_dump_is_scoped_and_stripped() -> None:
    inner = JsonContext({"m.step1.out.x": 1, "m.step10.work.y": 2, "m.step1x": 3, "other": 4, "m.step1.work.z": 5})
    view = NamespacedContext(inner, "m.step1")
    assert view.dump() == {"out.x": 1, "work.z": 5}
    assert all(type(k) is str for k in view.dump())


def test_o95_child_op_paths_are_accepted() -> None:
    inner = JsonContext()
    view = NamespacedContext(inner, "portfolio_snapshot.fetch_balances.reporting", exports={"total"})
    view.write("total", 7)
    assert inner.dump() == {"portfolio_snapshot.fetch_balances.reporting.out.total": 7}
    assert view.write_key("total") == "portfolio_snapshot.fetch_balances.reporting.out.total"


def test_o95_key_resolution_helpers() -> None:
    view = NamespacedContext(JsonContext(), "m.s", exports={"e"}, imports={"i": "m.src.out.i"})
    assert view.read_key("e") == "m.s.out.e"
    assert view.read_key("i") == "m.src.out.i"
    assert view.read_key("in.i") == "m.src.out.i"
    assert view.read_key("in.j") == "m.s.in.j"
    assert view.read_key("k") == "m.s.work.k"
    assert view.write_key("i") == "m.s.work.i"
    assert view.write_key("in.") == "m.s.work.in."  # "in." has no slot name: a bare key
    assert view.op_path == "m.s" and view.exports == frozenset({"e"}) and not view.legacy
    assert export_key("m.s", "e") == "m.s.out.e"
    assert export_key("m.s", "e", legacy=True) == "m.s.e"


def test_o95_values_are_isolated_copies() -> None:
    inner = JsonContext()
    view = NamespacedContext(inner, "m.s")
    value = {"list": [1]}
    view.write("v", value)
    value["list"].append(2)
    got = view.read("v")
    assert got == {"list": [1]}
    got["list"].append(3)
    assert view.read("v") == {"list": [1]}


@pytest.mark.parametrize("op_path", ["m", "M.step", "m.ste-p", "", "m..s"])
def test_o95_invalid_op_path_is_a_context_error(op_path: str) -> None:
    with pytest.raises(ContextError) as info:
        NamespacedContext(JsonContext(), op_path)
    assert info.value.kind is ContextErrorKind.OTHER
    assert info.value.code == "namespace_invalid_op_path"
    with pytest.raises(ContextError):
        export_key(op_path, "x")


@pytest.mark.parametrize(("exports", "imports"), [({""}, {}), (set(), {"": "m.a.out.x"}), (set(), {"x": ""})])
def test_o95_invalid_ports_are_context_errors(exports: set[str], imports: dict[str, str]) -> None:
    with pytest.raises(ContextError) as info:
        NamespacedContext(JsonContext(), "m.s", exports, imports)
    assert info.value.code == "namespace_invalid_port"


def test_o95_inner_errors_propagate() -> None:
    class Broken(JsonContext):
        def write(self, key: str, value: Any) -> None:
            raise ContextError.other("context_broken", f"cannot write {key}")

    view = NamespacedContext(Broken(), "m.s")
    with pytest.raises(ContextError) as info:
        view.write("x", 1)
    assert info.value.code == "context_broken"
    assert "m.s.work.x" in info.value.message
