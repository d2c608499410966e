"""``mfm`` / ``mfm tui`` build the app through ``mfm_tui.app.make_app`` (run patched out: no terminal here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mfm_tui import cli as cli_module


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import mfm_tui.app as app_module

    apps: list[Any] = []
    monkeypatch.setattr(app_module.MfmApp, "run", lambda self, *a, **k: apps.append(self))
    return apps


def _main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        cli_module.main(args)
    code = done.value.code
    assert isinstance(code, int)
    return code


def test_bare_mfm_opens_the_tui(launched: list[Any], tmp_path: Path) -> None:
    assert _main(["--store", str(tmp_path / "s"), "--ops", "engine.demo_ops"]) == 0
    assert len(launched) == 1
    assert (tmp_path / "s" / "store.json").exists()  # the store is created on first use


def test_tui_theme_option(launched: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["--store", str(tmp_path / "s"), "tui", "--theme", "mfm-ascii", "--read-only"]) == 0
    assert len(launched) == 1
    assert _main(["--store", str(tmp_path / "s"), "tui", "--theme", "no-such-theme"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error[usage]: ") and "no-such-theme" in err[0]
