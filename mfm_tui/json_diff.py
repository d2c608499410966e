"""A JSON-aware diff: which paths were added, removed or changed between two JSON values. Pure; no Textual.

``diff_json(old, new)`` walks both values together. Objects are compared key by key, arrays index by index (an
array that only grew or shrank at its end shows the added or removed items; a changed item shows its own path), and
anything else (numbers, strings, booleans, null, or a change of type) is compared as a whole. Paths use dots for
keys and ``[i]`` for indexes (``$`` is the root; keys that are not plain identifiers are quoted:
``$["demo.main.out"].rows[2]``).

    >>> [c.line() for c in diff_json({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1], "c": True})]
    ['~ a  1 → 2', '- b[1]  2', '+ c  true']
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Change", "ChangeKind", "annotated_lines", "diff_json", "format_path", "preview", "summarize"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ChangeKind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"

    @property
    def sign(self) -> str:
        return {"added": "+", "removed": "-", "changed": "~"}[self.value]


PathPart = str | int


@dataclass(frozen=True, slots=True)
class Change:
    """One difference at ``path`` (a tuple of keys and indexes)."""

    kind: ChangeKind
    path: tuple[PathPart, ...]
    old: Any = None
    new: Any = None

    @property
    def path_text(self) -> str:
        return format_path(self.path)

    def line(self, *, width: int = 60, arrow: str = "→", ellipsis: str = "…") -> str:
        """``+ path  value``, ``- path  value`` or ``~ path  old → new`` (values shortened to ``width``)."""
        if self.kind is ChangeKind.ADDED:
            return f"+ {self.path_text}  {preview(self.new, width, ellipsis)}"
        if self.kind is ChangeKind.REMOVED:
            return f"- {self.path_text}  {preview(self.old, width, ellipsis)}"
        old, new = preview(self.old, width, ellipsis), preview(self.new, width, ellipsis)
        return f"~ {self.path_text}  {old} {arrow} {new}"


def format_path(path: tuple[PathPart, ...]) -> str:
    """``a.b[2]["x.y"]``; ``$`` for the root."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out or "$"


def preview(value: Any, width: int = 60, ellipsis: str = "…") -> str:
    """Compact JSON of ``value``, cut to ``width`` characters with ``ellipsis``."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=False, default=str)
    return text if len(text) <= width else text[: max(1, width - len(ellipsis))] + ellipsis


def _same(a: Any, b: Any) -> bool:
    # bool is an int in Python, but true != 1 in JSON
    return type(a) is type(b) and a == b


def _walk(old: Any, new: Any, path: tuple[PathPart, ...]) -> Iterator[Change]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                yield Change(ChangeKind.REMOVED, (*path, key), old=old[key])
        for key in new:
            if key not in old:
                yield Change(ChangeKind.ADDED, (*path, key), new=new[key])
            else:
                yield from _walk(old[key], new[key], (*path, key))
        return
    if isinstance(old, list) and isinstance(new, list):
        common = min(len(old), len(new))
        for i in range(common):
            yield from _walk(old[i], new[i], (*path, i))
        for i in range(common, len(old)):
            yield Change(ChangeKind.REMOVED, (*path, i), old=old[i])
        for i in range(common, len(new)):
            yield Change(ChangeKind.ADDED, (*path, i), new=new[i])
        return
    if not _same(old, new):
        yield Change(ChangeKind.CHANGED, path, old=old, new=new)


def diff_json(old: Any, new: Any) -> list[Change]:
    """Every difference from ``old`` to ``new``, sorted by path (removed before added at one path)."""
    order = {ChangeKind.REMOVED: 0, ChangeKind.CHANGED: 1, ChangeKind.ADDED: 2}
    changes = list(_walk(old, new, ()))
    changes.sort(key=lambda c: (_sort_key(c.path), order[c.kind]))
    return changes


def _sort_key(path: tuple[PathPart, ...]) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path)


def summarize(changes: list[Change]) -> str:
    """``2 added, 1 removed, 3 changed`` (or ``identical``)."""
    if not changes:
        return "identical"
    counts = {k: sum(1 for c in changes if c.kind is k) for k in ChangeKind}
    return ", ".join(f"{n} {k.value}" for k, n in counts.items() if n)


def annotated_lines(old: Any, new: Any, *, indent: int = 2, ellipsis: str = "…") -> list[tuple[str, str]]:
    """The whole merged document, pretty-printed, one ``(sign, text)`` per line: ``" "`` unchanged, ``"+"`` added,
    ``"-"`` removed (the old value, shown where it was), ``"~"`` changed (``new  (was old)``)."""
    out: list[tuple[str, str]] = []

    def emit(sign: str, depth: int, text: str) -> None:
        out.append((sign, " " * (indent * depth) + text))

    def dump(sign: str, depth: int, prefix: str, value: Any, comma: str) -> None:
        if isinstance(value, (dict, list)) and value:
            opener, closer = ("{", "}") if isinstance(value, dict) else ("[", "]")
            emit(sign, depth, prefix + opener)
            items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            for i, (k, v) in enumerate(items):
                key = f"{json.dumps(k, ensure_ascii=False)}: " if isinstance(value, dict) else ""
                dump(sign, depth + 1, key, v, "," if i < len(items) - 1 else "")
            emit(sign, depth, closer + comma)
        else:
            emit(sign, depth, prefix + json.dumps(value, ensure_ascii=False) + comma)

    def walk(a: Any, b: Any, depth: int, prefix: str, comma: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict) and (a or b):
            emit(" ", depth, prefix + "{")
            keys = list(a) + [k for k in b if k not in a]
            for i, k in enumerate(keys):
                sep = "," if i < len(keys) - 1 else ""
                key = f"{json.dumps(k, ensure_ascii=False)}: "
                if k not in b:
                    dump("-", depth + 1, key, a[k], sep)
                elif k not in a:
                    dump("+", depth + 1, key, b[k], sep)
                else:
                    walk(a[k], b[k], depth + 1, key, sep)
            emit(" ", depth, "}" + comma)
        elif isinstance(a, list) and isinstance(b, list) and (a or b):
            emit(" ", depth, prefix + "[")
            n = max(len(a), len(b))
            for i in range(n):
                sep = "," if i < n - 1 else ""
                if i >= len(b):
                    dump("-", depth + 1, "", a[i], sep)
                elif i >= len(a):
                    dump("+", depth + 1, "", b[i], sep)
                else:
                    walk(a[i], b[i], depth + 1, "", sep)
            emit(" ", depth, "]" + comma)
        elif _same(a, b):
            dump(" ", depth, prefix, b, comma)
        else:
            emit("~", depth, f"{prefix}{preview(b, 80, ellipsis)}{comma}  (was {preview(a, 60, ellipsis)})")

    walk(old, new, 0, "", "")
    return out
