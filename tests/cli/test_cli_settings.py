"""The settings file from the outside: its store is used, a wrong file is a one-line warning (issue 14 item 9)."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import Mfm


def test_the_settings_store_is_used_and_a_bad_file_only_warns(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "mfm").mkdir(parents=True)
    config = home / ".config" / "mfm" / "config.toml"
    store = tmp_path / "from-settings"
    config.write_text(f'store = "{store}"\n', encoding="utf-8")
    mfm = Mfm(tmp_path / "unused", home)
    mfm.env.pop("XDG_CONFIG_HOME", None)
    res = mfm("runs", store=False)
    assert res.code == 3 and f"no store at {store}" in res.err  # the settings' store, not the default one
    res = mfm("--store", str(tmp_path / "flag"), "runs", store=False)
    assert f"no store at {tmp_path / 'flag'}" in res.err  # --store beats the file
    config.write_text("mouse = maybe\n", encoding="utf-8")
    res = mfm("runs", store=False)
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("warning[settings_invalid]: ") and "config.toml" in lines[0]
    assert "Traceback" not in res.err


def test_bare_mfm_takes_theme_and_no_mouse(tmp_path: Path) -> None:
    mfm = Mfm(tmp_path / "store", tmp_path)
    res = mfm("--help")
    assert "--theme" in res.out and "--no-mouse" in res.out
    res = mfm("--theme", "neon")  # checked before the terminal is touched
    assert res.code == 2 and res.err.startswith("error[usage]: unknown theme 'neon'"), res.err
