"""``engine`` never imports Textual, Rich or ``mfm_tui`` (ARCHITECTURE: the engine is UI-free).

Checked in a fresh interpreter, because this test process may already hold those modules.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("textual", "rich", "mfm_tui")
_UI_IMPORT = re.compile(r"^\s*(?:import|from)\s+(?:textual|rich|mfm_tui)(?:[.\s,]|$)")

_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    forbidden = {forbidden!r}
    import engine
    after_root = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
    names, failures = [], {{}}
    for info in pkgutil.walk_packages(engine.__path__, "engine."):
        names.append(info.name)
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # reported, not hidden
            failures[info.name] = f"{{type(exc).__name__}}: {{exc}}"
    after_all = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
    print(json.dumps({{"root": after_root, "all": after_all, "modules": names, "failures": failures}}))
    """
)


def _probe() -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(forbidden=FORBIDDEN)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_importing_engine_and_every_submodule_keeps_ui_out() -> None:
    result = _probe()
    assert result["root"] == [], "import engine pulled in UI modules"
    assert result["all"] == [], "an engine submodule pulled in UI modules"
    assert result["failures"] == {}, "every engine submodule must import cleanly"
    modules = result["modules"]
    assert isinstance(modules, list)
    # The walk really covered the package (guards against an empty walk passing vacuously).
    for expected in ("engine.ids", "engine.events", "engine.hashing", "engine.stores.memory", "engine.namespacing"):
        assert expected in modules


def test_engine_sources_do_not_mention_ui_imports() -> None:
    """A static backstop: no ``import textual``/``rich``/``mfm_tui`` line anywhere under engine/."""
    offenders = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _UI_IMPORT.match(line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert offenders == []
