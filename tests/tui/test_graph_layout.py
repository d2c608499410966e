"""Unit tests of the pure graph layout used by the run screen's state graph."""

from __future__ import annotations

import itertools

import pytest

from mfm_tui.graph_layout import MORE_PREFIX, Direction, layout_graph, neighbour, render_graph

FANOUT_NODES = ["fetch", "item_0", "item_1", "item_2", "item_3", "join", "report"]
FANOUT_EDGES = [
    *(("fetch", f"item_{i}") for i in range(4)),
    *((f"item_{i}", "join") for i in range(4)),
    ("join", "report"),
]


def _text(nodes: list[str], edges: list[tuple[str, str]], *, ascii_only: bool = False, **kw: object) -> list[str]:
    lay = layout_graph(nodes, edges, **kw)  # type: ignore[arg-type]
    pic = render_graph(lay, {n: f"o {n}" for n in nodes}, ascii_only=ascii_only)
    return ["".join(s.text for s in row).rstrip() for row in pic.rows]


def test_layers_follow_longest_path_depth() -> None:
    lay = layout_graph(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")])
    assert [lay.layer_of[n] for n in "abcd"] == [0, 1, 2, 3]
    assert lay.real_nodes() == ["a", "b", "c", "d"]


def test_fanout_renders_like_the_sketch() -> None:
    assert _text(FANOUT_NODES, FANOUT_EDGES) == [
        "o fetch ─┬─ o item_0 ─┐",
        "         ├─ o item_1 ─┤",
        "         ├─ o item_2 ─┼─ o join ─── o report",
        "         └─ o item_3 ─┘",
    ]


def test_ascii_theme_uses_only_dash_bar_plus() -> None:
    rows = _text(FANOUT_NODES, FANOUT_EDGES, ascii_only=True)
    assert rows[0] == "o fetch -+- o item_0 -+"
    assert rows[2] == "         +- o item_2 -+- o join --- o report"
    assert all(ord(ch) < 128 for row in rows for ch in row)


def test_long_edge_goes_through_a_dummy_line() -> None:
    rows = _text(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")])
    assert rows == [
        "o a ─┬─ o b ─┬─ o c",
        "     └───────┘",
    ]


def test_wide_layer_collapses_to_more_node_and_expands_on_demand() -> None:
    nodes = ["s", *(f"i{i}" for i in range(30)), "j"]
    edges = [*(("s", f"i{i}") for i in range(30)), *((f"i{i}", "j") for i in range(30))]
    lay = layout_graph(nodes, edges, max_rows=5)
    assert lay.layers[1][-1] == f"{MORE_PREFIX}1"
    assert lay.hidden == {1: 26}
    rows = _text(nodes, edges, max_rows=5)
    assert rows[4] == "     └─ … 26 more ─┘"
    assert layout_graph(nodes, edges, max_rows=5, expanded=[1]).height == 30


def test_thousand_state_chain_lays_out_in_one_row() -> None:
    nodes = [f"s{i}" for i in range(1000)]
    edges = list(itertools.pairwise(nodes))
    lay = layout_graph(nodes, edges)
    pic = render_graph(lay, {n: n for n in nodes})
    assert lay.height == 1
    assert len(lay.layers) == 1000
    assert pic.boxes["s999"][0] == 0
    assert pic.width > 1000 * 4


def test_boxes_locate_labels() -> None:
    lay = layout_graph(FANOUT_NODES, FANOUT_EDGES)
    pic = render_graph(lay, {n: f"o {n}" for n in FANOUT_NODES})
    assert pic.boxes["fetch"] == (0, 0, 7)
    row, x0, x1 = pic.boxes["join"]
    text = "".join(s.text for s in pic.rows[row])
    assert text[x0:x1] == "o join"


def test_arrow_navigation_follows_edges_and_layers() -> None:
    lay = layout_graph(FANOUT_NODES, FANOUT_EDGES)
    assert neighbour(lay, "fetch", Direction.RIGHT) == "item_0"
    assert neighbour(lay, "item_0", Direction.DOWN) == "item_1"
    assert neighbour(lay, "item_0", Direction.UP) is None
    assert neighbour(lay, "item_2", Direction.RIGHT) == "join"
    assert neighbour(lay, "join", Direction.LEFT) == "item_2"
    assert neighbour(lay, "report", Direction.RIGHT) is None
    assert neighbour(lay, "fetch", Direction.LEFT) is None
    assert neighbour(lay, "missing", Direction.LEFT) is None


def test_navigation_skips_dummy_nodes() -> None:
    lay = layout_graph(["a", "b", "c"], [("a", "c"), ("b", "c")])
    # a and b are both roots; c is depth 1: no dummies. With a chain a→b→c plus a→c, a's successors are b and c.
    assert neighbour(lay, "a", Direction.RIGHT) == "c"
    lay2 = layout_graph(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")])
    assert lay2.successors("a") == ["b", "c"]
    assert lay2.predecessors("c") == ["a", "b"]


def test_cycles_and_unknown_edges_do_not_crash() -> None:
    lay = layout_graph(["a", "b"], [("a", "b"), ("b", "a"), ("a", "zzz")])
    assert sorted(lay.real_nodes()) == ["a", "b"]


def test_max_rows_must_leave_room_for_the_more_node() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        layout_graph(["a"], [], max_rows=1)
