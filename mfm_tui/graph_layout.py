"""Pure layout of a plan's DAG for the run screen's state graph (no Textual, no Rich).

The graph is laid out in layers by topological depth (longest path from a root), left to right. Edges that skip
layers go through invisible *dummy* nodes so every edge joins two adjacent layers. Within a layer, nodes are ordered
by the mean row of their predecessors (barycenter), and each node's row is pulled towards that mean, so a fan-out and
its join read like the sketch in SCREENS.md::

    ✓ fetch ─┬─ ✓ item_0 ─┐
             ├─ ● item_1 ─┤
             ├─ ↻ item_2 ─┼─ ○ join ── ○ report
             └─ ○ item_3 ─┘

Between two layers, the edges fall into connected groups; each group gets a vertical *lane* and every cell that an
edge passes records which sides it connects (up/down/left/right), so junctions come out as the right box character
(or ``+`` in ASCII). A layer wider than ``max_rows`` keeps its first ``max_rows - 1`` nodes and a "… N more" node that
stands for (and takes the edges of) the rest, unless the layer is in ``expanded``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "MORE_PREFIX",
    "Direction",
    "GraphLayout",
    "GraphPicture",
    "Span",
    "layout_graph",
    "neighbour",
    "render_graph",
]

MORE_PREFIX = "\x00more:"
"""Id prefix of a layer's "… N more" placeholder node: ``MORE_PREFIX + str(layer)``."""
_DUMMY_PREFIX = "\x00dummy:"

_U, _D, _L, _R = 1, 2, 4, 8
_BOX = {
    _L | _R: "─",
    _L: "─",
    _R: "─",
    _U | _D: "│",
    _U: "│",
    _D: "│",
    _R | _D: "┌",
    _L | _D: "┐",
    _R | _U: "└",
    _L | _U: "┘",
    _L | _R | _D: "┬",
    _L | _R | _U: "┴",
    _U | _D | _R: "├",
    _U | _D | _L: "┤",
    _U | _D | _L | _R: "┼",
}
GAP = 5
"""Columns between two layers: ``─`` lane ``─`` plus a space on each side; more when lanes are needed."""


class Direction(Enum):
    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Span:
    """A run of characters on one row: ``kind`` is ``edge``, ``node``, ``more`` or ``blank``."""

    text: str
    kind: str
    node: str | None = None


@dataclass(slots=True)
class GraphLayout:
    """Where every visible node sits: ``layers[i]`` top to bottom, ``row[node]`` its row."""

    layers: list[list[str]]
    row: dict[str, int]
    layer_of: dict[str, int]
    edges: list[tuple[str, str]]
    hidden: dict[int, int] = field(default_factory=dict)
    """Per collapsed layer, how many nodes the "… N more" node stands for."""
    height: int = 0

    def is_real(self, node: str) -> bool:
        return not node.startswith(("\x00",))

    def real_nodes(self) -> list[str]:
        return [n for layer in self.layers for n in layer if self.is_real(n)]

    def successors(self, node: str) -> list[str]:
        return self._follow(node, forward=True)

    def predecessors(self, node: str) -> list[str]:
        return self._follow(node, forward=False)

    def _follow(self, node: str, *, forward: bool) -> list[str]:
        out: list[str] = []
        todo = [node]
        seen: set[str] = set()
        while todo:
            cur = todo.pop()
            for a, b in self.edges:
                src, dst = (a, b) if forward else (b, a)
                if src == cur and dst not in seen:
                    seen.add(dst)
                    if dst.startswith(_DUMMY_PREFIX):
                        todo.append(dst)
                    else:
                        out.append(dst)
        return sorted(out, key=lambda n: (self.row[n], n))


@dataclass(slots=True)
class GraphPicture:
    """Rendered rows of spans plus each node's box ``(row, x0, x1)`` and the total width."""

    rows: list[list[Span]]
    boxes: dict[str, tuple[int, int, int]]
    width: int


def _depths(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Longest-path depth from a root, by Kahn's order (nodes in a cycle get depth 0 and are laid out anyway)."""
    indeg = dict.fromkeys(nodes, 0)
    out: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        out[a].append(b)
        indeg[b] += 1
    depth = dict.fromkeys(nodes, 0)
    queue = [n for n in nodes if indeg[n] == 0]
    i = 0
    while i < len(queue):
        n = queue[i]
        i += 1
        for m in out[n]:
            depth[m] = max(depth[m], depth[n] + 1)
            indeg[m] -= 1
            if indeg[m] == 0:
                queue.append(m)
    return depth


def layout_graph(
    nodes: Sequence[str],
    edges: Iterable[tuple[str, str]],
    *,
    max_rows: int = 12,
    expanded: Iterable[int] = (),
) -> GraphLayout:
    """Lay out ``nodes`` (declaration order breaks ties) joined by ``edges`` (``from`` before ``to``)."""
    if max_rows < 2:
        raise ValueError("max_rows must be at least 2")
    known = set(nodes)
    edge_list = [(a, b) for a, b in dict.fromkeys(edges) if a in known and b in known and a != b]
    depth = _depths(nodes, edge_list)
    n_layers = max(depth.values(), default=-1) + 1
    layers: list[list[str]] = [[] for _ in range(n_layers)]
    for n in nodes:
        layers[depth[n]].append(n)

    # Collapse wide layers: the hidden nodes' edges move to the layer's "more" node.
    keep_open = set(expanded)
    alias: dict[str, str] = {}
    hidden: dict[int, int] = {}
    for i, layer in enumerate(layers):
        if len(layer) > max_rows and i not in keep_open:
            more = f"{MORE_PREFIX}{i}"
            for n in layer[max_rows - 1 :]:
                alias[n] = more
            hidden[i] = len(layer) - (max_rows - 1)
            layers[i] = [*layer[: max_rows - 1], more]
    layer_of = {n: i for i, layer in enumerate(layers) for n in layer}
    vis_edges = list(dict.fromkeys((alias.get(a, a), alias.get(b, b)) for a, b in edge_list))
    vis_edges = [(a, b) for a, b in vis_edges if a != b]

    # Long edges go through dummy nodes, one per skipped layer.
    short: list[tuple[str, str]] = []
    for a, b in vis_edges:
        la, lb = layer_of[a], layer_of[b]
        prev = a
        for k in range(la + 1, lb):
            dummy = f"{_DUMMY_PREFIX}{a}>{b}@{k}"
            layers[k].append(dummy)
            layer_of[dummy] = k
            short.append((prev, dummy))
            prev = dummy
        short.append((prev, b))

    # Rows: barycenter order, rows pulled towards the predecessors' mean row without overlapping.
    preds: dict[str, list[str]] = defaultdict(list)
    for a, b in short:
        preds[b].append(a)
    row: dict[str, int] = {}
    for i, layer in enumerate(layers):
        if i == 0:
            for r, n in enumerate(layer):
                row[n] = r
            continue
        position = {n: k for k, n in enumerate(layer)}
        wanted: dict[str, float] = {}
        for n in layer:
            ps = preds.get(n)
            wanted[n] = sum(row[p] for p in ps) / len(ps) if ps else float(position[n])
        ordered = sorted(layer, key=lambda n: (wanted[n], position[n]))
        layers[i] = ordered
        nxt = 0
        for n in ordered:
            r = max(nxt, round(wanted[n]))
            row[n] = r
            nxt = r + 1
    height = max((r + 1 for r in row.values()), default=0)
    return GraphLayout(layers=layers, row=row, layer_of=layer_of, edges=short, hidden=hidden, height=height)


def _components(edges: list[tuple[str, str]], row: dict[str, int]) -> dict[str, tuple[set[int], set[int]]]:
    """Connected groups of one gap's edges (union-find): root → (source rows, target rows)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    comp: dict[str, tuple[set[int], set[int]]] = {}
    for a, b in edges:
        srcs, dsts = comp.setdefault(find(a), (set(), set()))
        srcs.add(row[a])
        dsts.add(row[b])
    return comp


def _row_spans(
    mrow: Mapping[int, int], starts: Mapping[int, str], text: Mapping[str, str], width: int, ascii_only: bool
) -> list[Span]:
    """One rendered row: node labels where they start, edge characters from the direction masks elsewhere."""
    spans: list[Span] = []
    buf: list[str] = []
    buf_kind = "blank"
    c = 0
    while c < width:
        if c in starts:
            if buf:
                spans.append(Span("".join(buf), buf_kind))
                buf = []
            n = starts[c]
            spans.append(Span(text[n], "more" if n.startswith(MORE_PREFIX) else "node", n))
            c += max(len(text[n]), 1)
            continue
        m = mrow.get(c, 0)
        kind = "edge" if m else "blank"
        if kind != buf_kind and buf:
            spans.append(Span("".join(buf), buf_kind))
            buf = []
        buf_kind = kind
        buf.append((_ascii(m) if ascii_only else _BOX[m]) if m else " ")
        c += 1
    if buf:
        spans.append(Span("".join(buf), buf_kind))
    return spans


def _lanes(groups: list[tuple[int, int]]) -> list[int]:
    """Greedy interval colouring: a lane per group so that overlapping row ranges never share one."""
    lane_ends: list[int] = []
    out: list[int] = []
    for lo, hi in groups:
        for k, end in enumerate(lane_ends):
            if end < lo:
                lane_ends[k] = hi
                out.append(k)
                break
        else:
            lane_ends.append(hi)
            out.append(len(lane_ends) - 1)
    return out


def _ascii(mask: int) -> str:
    horizontal, vertical = bool(mask & (_L | _R)), bool(mask & (_U | _D))
    if horizontal and vertical:
        return "+"
    return "-" if horizontal else "|"


def render_graph(layout: GraphLayout, labels: Mapping[str, str], *, ascii_only: bool = False) -> GraphPicture:
    """Draw ``layout`` with each real node's ``labels[node]``; placeholders get "… N more"."""
    text: dict[str, str] = {}
    for i, layer in enumerate(layout.layers):
        for n in layer:
            if n.startswith(MORE_PREFIX):
                text[n] = f"{'...' if ascii_only else '…'} {layout.hidden.get(i, 0)} more"
            elif n.startswith(_DUMMY_PREFIX):
                text[n] = ""
            else:
                text[n] = labels.get(n, n)
    widths = [max((len(text[n]) for n in layer), default=1) or 1 for layer in layout.layers]

    # Per gap: connected edge groups → lanes → gap width.
    by_gap: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for a, b in layout.edges:
        by_gap[layout.layer_of[a]].append((a, b))
    gap_groups: dict[int, list[tuple[set[int], set[int], int]]] = {}
    gap_width: list[int] = []
    for g in range(len(layout.layers)):
        comp = _components(by_gap.get(g, []), layout.row)
        items = sorted(comp.values(), key=lambda sd: min(sd[0] | sd[1]))
        spans = [(min(s | d), max(s | d)) for s, d in items]
        lanes = _lanes(spans)
        gap_groups[g] = [(s, d, lane) for (s, d), lane in zip(items, lanes, strict=True)]
        n_lanes = max(lanes, default=-1) + 1
        gap_width.append(GAP + 2 * max(n_lanes - 1, 0))

    xs: list[int] = []
    x = 0
    for i, w in enumerate(widths):
        xs.append(x)
        x += w + (gap_width[i] if i < len(widths) - 1 else 0)
    total_width = x
    height = layout.height

    masks: list[dict[int, int]] = [defaultdict(int) for _ in range(height)]
    boxes: dict[str, tuple[int, int, int]] = {}
    for i, layer in enumerate(layout.layers):
        for n in layer:
            r = layout.row[n]
            if n.startswith(_DUMMY_PREFIX):
                for c in range(max(xs[i] - 1, 0), xs[i] + widths[i] + 1):
                    masks[r][c] |= _L | _R
            else:
                boxes[n] = (r, xs[i], xs[i] + len(text[n]))
    # A label shorter than its column continues as an edge up to the gap when the node has successors.
    has_out = {a for a, _ in layout.edges}
    for n, (r, _x0, x1) in boxes.items():
        i = layout.layer_of[n]
        if n in has_out and x1 < xs[i] + widths[i]:
            for c in range(x1 + 1, xs[i] + widths[i] + 1):
                masks[r][c] |= _L | _R
    for g, groups in gap_groups.items():
        left = xs[g] + widths[g]
        right = xs[g + 1] if g + 1 < len(xs) else left
        for srcs, dsts, lane in groups:
            lane_x = left + 2 + 2 * lane
            lo, hi = min(srcs | dsts), max(srcs | dsts)
            for r in range(lo, hi + 1):
                if r > lo:
                    masks[r][lane_x] |= _U
                if r < hi:
                    masks[r][lane_x] |= _D
            for r in srcs:
                for c in range(left + 1, lane_x):
                    masks[r][c] |= _L | _R
                masks[r][lane_x] |= _L
            for r in dsts:
                masks[r][lane_x] |= _R
                for c in range(lane_x + 1, right - 1):
                    masks[r][c] |= _L | _R

    rows: list[list[Span]] = []
    node_at: list[dict[int, str]] = [{} for _ in range(height)]
    for n, (r, x0, _x1) in boxes.items():
        node_at[r][x0] = n
    for r in range(height):
        rows.append(_row_spans(masks[r], node_at[r], text, total_width, ascii_only))
    return GraphPicture(rows=rows, boxes=boxes, width=total_width)


def neighbour(layout: GraphLayout, node: str, direction: Direction) -> str | None:
    """The node the cursor moves to from ``node``: along edges (left/right) or within its layer (up/down)."""
    if node not in layout.layer_of:
        return None
    if direction in (Direction.UP, Direction.DOWN):
        layer = [n for n in layout.layers[layout.layer_of[node]] if not n.startswith(_DUMMY_PREFIX)]
        k = layer.index(node) + (1 if direction is Direction.DOWN else -1)
        return layer[k] if 0 <= k < len(layer) else None
    cands = layout.successors(node) if direction is Direction.RIGHT else layout.predecessors(node)
    if not cands:
        # No edge that way: the nearest node of the adjacent layer, so the cursor still travels.
        li = layout.layer_of[node] + (1 if direction is Direction.RIGHT else -1)
        if not 0 <= li < len(layout.layers):
            return None
        cands = [n for n in layout.layers[li] if not n.startswith(_DUMMY_PREFIX)]
        if not cands:
            return None
    here = layout.row[node]
    return min(cands, key=lambda n: (abs(layout.row[n] - here), layout.row[n]))
