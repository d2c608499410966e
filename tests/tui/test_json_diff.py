"""The JSON-aware diff: paths, kinds, ordering, previews (pure, no terminal)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mfm_tui.json_diff import Change, ChangeKind, diff_json, format_path, preview, summarize


def lines(old: Any, new: Any) -> list[str]:
    return [c.line() for c in diff_json(old, new)]


def test_identical_values_have_no_changes() -> None:
    doc = {"a": [1, {"b": None}], "c": "x"}
    assert diff_json(doc, doc) == []
    assert summarize([]) == "identical"


def test_added_removed_changed_keys_with_paths() -> None:
    assert lines({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1], "c": True}) == [
        "~ a  1 → 2",
        "- b[1]  2",
        "+ c  true",
    ]


def test_nested_objects_report_the_deepest_path() -> None:
    old = {"demo.main.out": {"rows": [1, 2, 3], "meta": {"n": 3}}}
    new = {"demo.main.out": {"rows": [1, 2, 4], "meta": {"n": 3, "m": "x"}}}
    assert lines(old, new) == ['+ ["demo.main.out"].meta.m  "x"', '~ ["demo.main.out"].rows[2]  3 → 4']


def test_type_change_is_one_change_at_that_path() -> None:
    changes = diff_json({"a": {"x": 1}}, {"a": [1]})
    assert changes == [Change(ChangeKind.CHANGED, ("a",), old={"x": 1}, new=[1])]


def test_true_and_one_differ() -> None:
    assert lines({"a": 1}, {"a": True}) == ["~ a  1 → true"]


def test_root_scalar_change_uses_dollar() -> None:
    assert lines(1, 2) == ["~ $  1 → 2"]
    assert format_path(()) == "$"
    assert format_path(("a", 0, "b c")) == 'a[0]["b c"]'


def test_preview_shortens_long_values() -> None:
    text = preview({"k": "x" * 100}, 20)
    assert len(text) == 20 and text.endswith("…")


def test_summary_counts_each_kind() -> None:
    changes = diff_json({"a": 1, "b": 2}, {"a": 3, "c": 4, "d": 5})
    assert summarize(changes) == "2 added, 1 removed, 1 changed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=2), children, max_size=3),
    max_leaves=12,
)


def _apply(doc: Any, changes: list[Change]) -> Any:
    """Rebuild ``new`` from ``old`` and the changes (checks the diff is complete and exact)."""
    import copy

    out = copy.deepcopy(doc)
    if any(c.path == () for c in changes):
        return next(c.new for c in changes if c.path == ())
    removals = [c for c in changes if c.kind is ChangeKind.REMOVED]
    for c in sorted(removals, key=lambda c: [str(p) for p in c.path], reverse=True):
        parent = out
        for p in c.path[:-1]:
            parent = parent[p]
        if isinstance(parent, list):
            parent.pop()  # removed list items are always a tail
        else:
            del parent[c.path[-1]]
    for c in changes:
        if c.kind is ChangeKind.REMOVED:
            continue
        parent = out
        for p in c.path[:-1]:
            parent = parent[p]
        key = c.path[-1]
        if isinstance(parent, list) and c.kind is ChangeKind.ADDED:
            parent.append(c.new)
        else:
            parent[key] = c.new
    return out


@given(json_values, json_values)
def test_changes_rebuild_the_new_value(old: Any, new: Any) -> None:
    changes = diff_json(old, new)
    assert _apply(old, changes) == new
    if not changes:
        assert old == new


def test_annotated_lines_mark_each_change_in_place() -> None:
    from mfm_tui.json_diff import annotated_lines

    got = annotated_lines({"a": 1, "b": [1, 2], "k": "same"}, {"a": 2, "b": [1], "k": "same", "c": {"x": True}})
    assert got == [
        (" ", "{"),
        ("~", '  "a": 2,  (was 1)'),
        (" ", '  "b": ['),
        (" ", "    1,"),
        ("-", "    2"),
        (" ", "  ],"),
        (" ", '  "k": "same",'),
        ("+", '  "c": {'),
        ("+", '    "x": true'),
        ("+", "  }"),
        (" ", "}"),
    ]
