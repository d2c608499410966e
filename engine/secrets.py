"""The secrets guard (ENGINE-SPEC §12), public: the detector the store uses, and the same detector applied to text
logs line by line (a worker's ``worker.log``, and any message built from one).

The detector (:func:`contains_secrets`) says whether a string looks like it carries a secret: one of
:data:`SECRET_SUBSTRINGS` in its ASCII-lower-cased form, or a mnemonic-like phrase (12 to 24 words of lowercase
letters). It finds the *sign* of a secret (``password``), not the secret itself (``hunter2``), so a log line that
looks secret is **withheld whole**: :data:`WITHHELD` takes its place. A log line mixes text, so a mnemonic is also
found *inside* one: a run of 12 or more consecutive words of lowercase letters (``seed: legal winner …``). Lines are
judged one at a time, plus two rules for a secret spread over two lines: a line that follows a withheld line ending
with the sign and a separator (``password:`` then the value), and a line that together with the line before holds
such a run, are withheld too. A "line" longer than :data:`MAX_LINE` bytes is judged in pieces of that size, each
with the end of the one before (so a sign cut in two is still seen).

:class:`LineRedactor` does this on a byte stream (what the worker's output guard, ``engine.workers.log_guard``,
runs between a worker and its ``worker.log``); :func:`redact_text` on a whole text (what reads an existing log).
"""

from __future__ import annotations

import re
from typing import Final

from engine._secrets import SECRET_SUBSTRINGS, contains_secrets, json_contains_secrets

__all__ = [
    "MAX_LINE",
    "SECRET_SUBSTRINGS",
    "WITHHELD",
    "LineRedactor",
    "contains_secrets",
    "json_contains_secrets",
    "redact_text",
]

WITHHELD: Final = "[mfm: line withheld: it looks like it carries a secret (ENGINE-SPEC §12)]"
MAX_LINE: Final = 64 * 1024
_OVERLAP: Final = 64
"""Characters of a cut piece re-read with the next one (longer than every sign)."""
_SEPARATORS: Final = " \t:=\"'"
_SIGNS: Final = tuple(s.strip() for s in SECRET_SUBSTRINGS)
_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_WORD = re.compile(r"[a-z]+")
_MNEMONIC_WORDS: Final = 12


def _has_word_run(text: str) -> bool:
    """Whether ``text`` holds 12 or more consecutive words of ASCII lowercase letters (a mnemonic inside a line)."""
    run = 0
    for word in text.split():
        run = run + 1 if _WORD.fullmatch(word) else 0
        if run >= _MNEMONIC_WORDS:
            return True
    return False


def _looks_secret(text: str) -> bool:
    return contains_secrets(text) or _has_word_run(text)


def _dangling(text: str) -> bool:
    """Whether ``text`` ends with a sign and a separator: its secret is probably on the next line."""
    tail = text.rstrip()
    stripped = tail.rstrip(_SEPARATORS)
    return stripped != tail and stripped.translate(_UPPER).endswith(_SIGNS)


class LineRedactor:
    """Withholds the lines of a byte stream that look secret (see the module docstring).

    :meth:`feed` takes any chunk and returns the bytes that may be written now (complete lines, judged);
    :meth:`finish` returns the judged rest at the end of the stream. Only what was returned may reach disk."""

    def __init__(self) -> None:
        self._pending = b""
        self._previous = ""
        self._previous_withheld = False
        self._carry = ""
        self.withheld = 0
        """How many lines (or pieces) were withheld so far."""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        out: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            out.append(self._judge(data[start : end + 1], cut=False))
            start = end + 1
        rest = data[start:]
        while len(rest) > MAX_LINE:
            out.append(self._judge(rest[:MAX_LINE], cut=True))
            rest = rest[MAX_LINE:]
        self._pending = rest
        return b"".join(out)

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._judge(rest, cut=False) if rest else b""

    def _judge(self, raw: bytes, *, cut: bool) -> bytes:
        text = raw.decode("utf-8", "replace")
        body = text.rstrip("\r\n")
        seen = self._carry + body
        secret = (
            _looks_secret(seen)
            or (self._previous_withheld and _dangling(self._previous))
            or (not self._previous_withheld and _has_word_run(f"{self._previous}\n{body}"))
        )
        self._carry = seen[-_OVERLAP:] if cut else ""
        if not cut:
            self._previous, self._previous_withheld = seen, secret
        if not secret:
            return raw
        self.withheld += 1
        return (WITHHELD + ("\n" if text.endswith("\n") or cut else "")).encode()


def redact_text(text: str) -> str:
    """``text`` (a log, or a line of one) with every line that looks secret withheld."""
    redactor = LineRedactor()
    data = text.encode("utf-8", "surrogateescape")
    return (redactor.feed(data) + redactor.finish()).decode("utf-8", "replace")
