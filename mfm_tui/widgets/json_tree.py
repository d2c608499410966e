"""A collapsible JSON document (Textual ``Tree``), keys in stored order; big containers load their children lazily."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

__all__ = ["JsonTree", "scalar_text"]

_LAZY_LIMIT = 200
"""Children added eagerly per container; the rest when the "… N more" leaf is selected."""


class _More:
    """Data of a "… N more" leaf: the items still to add."""

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items


def scalar_text(value: Any) -> Text:
    if isinstance(value, str):
        shown = value if len(value) <= 120 else value[:117] + "…"
        return Text(json.dumps(shown, ensure_ascii=False), style="green")
    if value is None:
        return Text("null", style="italic")
    if isinstance(value, bool):
        return Text("true" if value else "false", style="magenta")
    return Text(str(value), style="cyan")


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        return f"{{}} {len(value)} key{'s' if len(value) != 1 else ''}"
    return f"[] {len(value)} item{'s' if len(value) != 1 else ''}"


_ASCII_LINES: dict[str, tuple[str, str, str, str]] = {
    style: ("  ", "| ", "`-", "|-") for style in ("default", "bold", "double")
}


class JsonTree(Tree[Any]):
    """``JsonTree(value, label)``: objects and arrays are branches, scalars are leaves ``key: value``.

    Keys keep their stored order (canonical JSON: sorted). A container with more than 200 children shows the first
    200 and a "… N more" leaf that loads the rest when selected. ``ascii_only``: guides ``| `-`` and ``+``/``-``
    expanders instead of ``│ └─ ▶ ▼``.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | j / k | Next / previous node (as down / up). |
    """

    DEFAULT_CSS = """
    JsonTree {
        background: $surface;
    }
    """

    def __init__(
        self,
        value: Any,
        label: str = "$",
        *,
        ascii_only: bool = False,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(Text(label, style="bold"), data=value, id=id, classes=classes)
        if ascii_only:
            self.LINES = _ASCII_LINES
            self.ICON_NODE = "+ "
            self.ICON_NODE_EXPANDED = "- "
        self._more = "..." if ascii_only else "…"
        self.value = value
        self.show_root = True
        self.guide_depth = 2

    def on_mount(self) -> None:
        self._fill(self.root, self.value)
        self.root.expand()
        for child in self.root.children[:20]:
            if child.allow_expand and len(child.children) <= 20:
                child.expand()

    def _fill(self, node: TreeNode[Any], value: Any) -> None:
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        for key, child in items[:_LAZY_LIMIT]:
            self._add(node, key, child)
        if len(items) > _LAZY_LIMIT:
            rest = items[_LAZY_LIMIT:]
            node.add_leaf(Text(f"{self._more} {len(rest)} more (enter to load)", style="italic"), data=_More(rest))

    def on_tree_node_selected(self, event: Tree.NodeSelected[Any]) -> None:
        more = event.node.data
        if isinstance(more, _More) and event.node.parent is not None:
            parent = event.node.parent
            event.node.remove()
            for key, child in more.items:
                self._add(parent, key, child)

    def _add(self, node: TreeNode[Any], key: Any, value: Any) -> None:
        label = Text(f"{key}" if isinstance(key, str) else f"[{key}]", style="bold")
        if isinstance(value, (dict, list)) and value:
            label.append(f"  {_summary(value)}", style="dim")
            branch = node.add(label, data=value)
            self._fill(branch, value)
        else:
            label.append(": ")
            label.append_text(scalar_text(value) if not isinstance(value, (dict, list)) else Text(json.dumps(value)))
            node.add_leaf(label, data=value)
