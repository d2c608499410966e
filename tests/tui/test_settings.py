"""The settings file (issue 14 item 9) and the look the terminal asks for (item 8): pure parts and the app."""

from __future__ import annotations

from pathlib import Path

from mfm_tui.screens.dialogs import ErrorDialog
from mfm_tui.screens.runs import RunsScreen
from mfm_tui.settings import Settings, auto_theme, choose_theme, load_settings, settings_path
from tests.tui.fixtures import afixture_app, settle


def _write(tmp_path: Path, text: str) -> dict[str, str]:
    folder = tmp_path / "cfg" / "mfm"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(text, encoding="utf-8")
    return {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path)}


def test_the_file_lives_in_the_xdg_config_dir(tmp_path: Path) -> None:
    assert settings_path({"XDG_CONFIG_HOME": "/etc/xdg-me", "HOME": "/h"}) == Path("/etc/xdg-me/mfm/config.toml")
    assert settings_path({"HOME": "/h"}) == Path("/h/.config/mfm/config.toml")
    assert settings_path({"XDG_CONFIG_HOME": "relative", "HOME": "/h"}) == Path("/h/.config/mfm/config.toml")


def test_a_missing_file_is_the_defaults(tmp_path: Path) -> None:
    settings, problem = load_settings({"HOME": str(tmp_path)})
    assert problem is None and settings == Settings()


def test_a_valid_file(tmp_path: Path) -> None:
    env = _write(
        tmp_path,
        'theme = "16"\nmouse = false\nstore = "~/runs"\n[keys]\n"runs.cancel" = "C"\n"app.quit" = "Q,ctrl+q"\n',
    )
    settings, problem = load_settings(env)
    assert problem is None
    assert settings.theme == "mfm-16" and settings.mouse is False and settings.store == "~/runs"
    assert dict(settings.keys) == {"runs.cancel": "C", "app.quit": "Q,ctrl+q"}
    assert settings.path == tmp_path / "cfg" / "mfm" / "config.toml"


def test_an_invalid_file_gives_the_defaults_and_a_clear_error(tmp_path: Path) -> None:
    cases = {
        "theme = \n": "not valid TOML",
        'theme = "neon"\n': "unknown theme 'neon'",
        'mouse = "no"\n': "mouse must be true or false",
        'colour = "red"\n': "unknown setting 'colour'",
        "[keys]\n'runs.cancel' = 3\n": "[keys] must map binding ids to key strings",
        'store = ""\n': "store must be a non-empty string",
    }
    for text, why in cases.items():
        settings, problem = load_settings(_write(tmp_path, text))
        assert settings == Settings(), text
        assert problem is not None and problem[0] == "settings_invalid", text
        assert why in problem[1] and "config.toml" in problem[1], (text, problem)


def test_the_terminal_picks_the_look() -> None:
    assert auto_theme({"NO_COLOR": "1", "TERM": "xterm-256color"}) == "mfm-ascii"
    assert auto_theme({"TERM": "linux"}) == "mfm-16"
    assert auto_theme({"TERM": "xterm-256color"}) is None
    assert auto_theme({"NO_COLOR": "", "TERM": "xterm"}) is None  # no-color.org: an empty value does not count
    linux = {"TERM": "linux"}
    assert choose_theme(None, Settings(), linux) == "mfm-16"
    assert choose_theme(None, Settings(theme="mfm-light"), linux) == "mfm-light"  # the file beats the guess
    assert choose_theme("dark", Settings(theme="mfm-light"), linux) == "dark"  # --theme beats the file


async def test_a_settings_problem_shows_in_a_dialog_over_a_working_app() -> None:
    app = await afixture_app(notices=[("settings_invalid", "/x/config.toml: mouse must be true or false")])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, ErrorDialog)
        assert "mouse must be true or false" in app.screen.message
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


async def test_key_overrides_rebind_a_key() -> None:
    app = await afixture_app(keymap={"runs.sort": "O"})
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        home = app.screen
        assert isinstance(home, RunsScreen)
        await pilot.press("o")
        await pilot.pause()
        assert home.sort == "urgency"
        await pilot.press("O")
        await pilot.pause()
        assert home.sort == "newest"
