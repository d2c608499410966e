"""``mfm`` / ``mfm tui`` build the app through ``mfm_tui.app.make_app`` (run patched out: no terminal here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import as_nobody, make_read_only

from engine.stores.fs import FsStore
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
    FsStore(tmp_path / "s").close()
    assert _main(["--store", str(tmp_path / "s"), "tui", "--theme", "mfm-ascii", "--read-only"]) == 0
    assert len(launched) == 1
    assert _main(["--store", str(tmp_path / "s"), "tui", "--theme", "no-such-theme"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error[usage]: ") and "no-such-theme" in err[0]


def test_tui_read_only_on_a_missing_store_creates_nothing(
    launched: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(["--store", str(tmp_path / "s"), "tui", "--read-only"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error[store_not_found]: ") and str(tmp_path / "s") in err[0]
    assert not launched and not (tmp_path / "s").exists()


def test_tui_on_a_read_only_store_opens_read_only(launched: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """README: read-only mode is automatic when the store is not writable (here: a store of nobody's own, made
    read-only, opened by nobody)."""
    base = Path(tempfile.mkdtemp(prefix="mfm-ro-tui-", dir="/tmp"))
    try:
        base.chmod(0o755)
        store = base / "store"
        FsStore(store).close()
        if os.geteuid() == 0:  # make it nobody's, read-only, and look at it as nobody
            make_read_only(store, owner=65534)
            import mfm_tui.app as app_module

            monkeypatch.setattr(app_module.MfmApp, "run", lambda self, *a, **k: print("read_only", self.read_only))
            res = as_nobody(["--store", str(store), "--ops", "engine.demo_ops", "tui"])
            assert res.code == 0 and "read_only True" in res.out, res.out
            res = as_nobody(["--store", str(store), "tui", "--read-only"])
            assert res.code == 0 and "read_only True" in res.out, res.out
        else:
            make_read_only(store)
            assert _main(["--store", str(store), "tui"]) == 0
            assert launched[-1].read_only
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(base)


def test_the_tuis_lease_probe_finds_the_stores_launcher_once(
    launched: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TUI probes worker liveness of every unfinished run, ~28 a second on a 10,000-run store while it idles: the
    store's launcher is looked up once, not per probe (issue 15), and the answers are ``lease_state``'s."""
    import engine.workers as workers
    import engine.workers.actions as actions
    from engine.ids import RunId
    from mfm_tui.run_model import lease_status_of

    FsStore(tmp_path / "s").close()
    assert _main(["--store", str(tmp_path / "s"), "tui"]) == 0
    (app,) = launched
    looked_up: list[Any] = []
    launcher_for = workers.launcher_for

    def counting(store: Any) -> Any:
        looked_up.append(store)
        return launcher_for(store)

    monkeypatch.setattr(workers, "launcher_for", counting)
    monkeypatch.setattr(actions, "launcher_for", counting)  # what workers.lease_state looks up
    runs = [RunId.new_v4() for _ in range(5)]
    got = [app.lease_probe(r) for r in runs]
    assert len(looked_up) == 1
    assert got == [lease_status_of(launcher_for(app.store).lease_state(r)) for r in runs]
